"""A discrete-event model of the rollout of RL training steps under continuous batching: GRPO vs LTE.

What it models (pure Python, no torch; ``docs/cost.md`` states the parameters and where they come from):

- ``Engine``: ``replicas`` vLLM-like inference servers. Each runs decode *iterations*: every running sequence
  gains one token per iteration, and an iteration takes
  ``t_iter_s + t_seq_s * running + t_ctx_s * context_tokens + t_prefill_token_s * prefill_tokens``
  (fixed cost: weights read once per iteration; per sequence: its share of the GEMMs and sampling; per context
  token held: the KV cache read by attention; prefill of newly admitted sequences). Admission is FCFS up to
  ``max_num_seqs`` sequences, ``kv_capacity_tokens`` tokens of KV cache and ``max_num_batched_tokens`` prefill
  tokens per iteration. When the KV cache cannot hold one more token for every running sequence, the most
  recently admitted one is preempted (vLLM V1's recompute preemption): it goes back to the front of the queue
  keeping its tokens, and pays their prefill again when readmitted.
- Routing: a new request goes to the server with the fewest requests in flight (verl's global load balancer).
- A response's reward is known ``Trainer.t_score_s`` after its last token.
- A group is the G responses of one prompt (``Group``). Under ``Policy.mode="lte"`` a none-pass group runs its
  extra phase (its pre-sampled ``extra`` responses; ``grpo_extra`` is the same timing with unhinted lengths):
  ``extra_start="group"`` starts it the moment its own G-th response is scored (what ``recipe/lte/agent_loop.py``
  does), ``"barrier"`` only after every first-phase response of the step is scored (a second generation round).
  ``extra_max_len`` caps the extra phase's response length (a longer response is cut there and fails).
- Trainer: ``"sync"`` (verl's ``PPOTrainerSync``): a step generates its B groups to the last token, then trains
  (``t_fixed_s + t_token_s * tokens``, no generation meanwhile). ``"async"`` (verl's ``colocate_async``: partial
  rollout): B * (1 + ``async_warmup``) groups are in flight; generation stops as soon as B groups are complete,
  unfinished requests are aborted and resumed after the update (their KV cache recomputed), and each step adds
  B new prompts.

All responses are pre-sampled (``Group``), so two policies run on the same workload see the same samples: their
ratio is paired. The event loop is exact for the model: ``tests/unit/test_rollout_sim.py`` checks it against hand
computations.
"""

from __future__ import annotations

import heapq
import itertools
import statistics
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# ---- inputs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    """The inference servers (see the module docstring). Times in seconds."""

    replicas: int = 1
    max_num_seqs: int = 256
    kv_capacity_tokens: int = 1 << 40
    max_num_batched_tokens: int = 1 << 40
    t_iter_s: float = 0.0
    t_seq_s: float = 0.0
    t_ctx_s: float = 0.0
    t_prefill_token_s: float = 0.0


@dataclass(frozen=True)
class Trainer:
    """What happens around generation. ``t_score_s``: reward latency after a response's last token."""

    kind: str = "sync"  # sync | async
    t_fixed_s: float = 0.0  # per step: weight sync, wake/sleep of the servers, ...
    t_token_s: float = 0.0  # per training token (prompt + response of every row): log-probs + update
    t_score_s: float = 0.0
    async_warmup: float = 1.0  # async: extra batches of prompts in flight (verl's colocate_async.num_warmup_batches)


@dataclass(frozen=True)
class Policy:
    """How a none-pass group's extra phase runs."""

    mode: str = "grpo"  # grpo | lte  (grpo_extra = lte with unhinted extra responses in the workload)
    extra_start: str = "group"  # group | barrier
    extra_max_len: int | None = None


@dataclass(frozen=True)
class Response:
    length: int  # response tokens
    passed: bool


@dataclass(frozen=True)
class Group:
    """One prompt's G first-phase responses and, pre-sampled, the responses its extra phase would produce."""

    prompt_len: int
    first: tuple[Response, ...]
    extra: tuple[Response, ...] = ()
    extra_prompt_len: int = 0  # the hinted prompt's length (0: same as prompt_len)

    @property
    def none_pass(self) -> bool:
        return not any(r.passed for r in self.first)


# ---- outputs -----------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    """One training step."""

    gen_s: float
    train_s: float
    first_tokens: int  # response tokens generated for first phases in this step
    extra_tokens: int  # response tokens generated in extra phases in this step
    train_tokens: int  # prompt + response tokens of the rows trained
    extra_phases: int
    recompute_tokens: int  # tokens prefilled again after a preemption or an abort
    staleness: float = 0.0  # async: mean over the step's groups of the updates made since their rollout began
    rescued: int = 0  # groups trained this step with at least one correct extra response
    extra_staleness: float | None = None  # async: mean staleness of the step's groups that ran an extra phase

    @property
    def step_s(self) -> float:
        return self.gen_s + self.train_s


def summarize(steps: Sequence[StepResult]) -> dict[str, float]:
    """Means over steps, and the extra-token share (extra / first-phase response tokens) over all of them."""
    first = sum(s.first_tokens for s in steps)
    return {
        "step_s": statistics.fmean(s.step_s for s in steps),
        "gen_s": statistics.fmean(s.gen_s for s in steps),
        "train_s": statistics.fmean(s.train_s for s in steps),
        "extra_share": sum(s.extra_tokens for s in steps) / first if first else 0.0,
        "extra_phases": statistics.fmean(s.extra_phases for s in steps),
        "recompute_tokens": statistics.fmean(s.recompute_tokens for s in steps),
        "staleness": statistics.fmean(s.staleness for s in steps),
        "rescued": statistics.fmean(s.rescued for s in steps),
        "extra_staleness": _mean_or_nan([s.extra_staleness for s in steps if s.extra_staleness is not None]),
    }


def _mean_or_nan(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


# ---- the engine --------------------------------------------------------------------------------------------


class _Request:
    __slots__ = ("rid", "group", "phase", "prompt", "length", "generated", "it0", "g0", "version", "replica")

    def __init__(self, rid: int, group: _GroupRun, phase: str, prompt: int, length: int):
        if length < 1:
            raise ValueError(f"a response has at least one token, got {length}")
        self.rid, self.group, self.phase, self.prompt, self.length = rid, group, phase, prompt, length
        self.generated = 0  # tokens generated before the current admission (updated on preemption/abort)
        self.it0 = self.g0 = 0
        self.version = 0  # bumped when the request leaves a server early: stale finish entries are skipped
        self.replica: _Replica | None = None


class _Replica:
    def __init__(self, index: int):
        self.index = index
        self.waiting: deque[_Request] = deque()
        self.running: OrderedDict[int, _Request] = OrderedDict()  # admission order: the last is preempted first
        self.kv_used = 0  # sum over running requests of prompt + generated tokens
        self.it = 0  # iterations completed
        self.finish: list[tuple[int, int, int, _Request]] = []  # (finish iteration, rid, version, request)
        self.busy = False  # an iteration is in flight
        self.kick_pending = False  # an iteration start is queued at the current time
        self.inflight = 0  # routed and not finished (the load balancer's count)

    def tokens_of(self, r: _Request) -> int:
        return r.g0 + (self.it - r.it0)


class _GroupRun:
    __slots__ = ("group", "version", "first_scored", "extra_scored", "extra", "state")

    def __init__(self, group: Group, version: int):
        self.group = group
        self.version = version  # training steps completed when its rollout began (the policy it started with)
        self.first_scored = self.extra_scored = 0
        self.extra: tuple[Response, ...] = ()
        self.state = "first"  # first | waiting_barrier | extra | done


def _rescued(groups: Sequence[_GroupRun]) -> int:
    return sum(any(r.passed for r in gr.extra) for gr in groups)


class Simulation:
    """The event loop: servers, routing, scoring, groups, steps. Use ``run_sync`` / ``run_async``."""

    def __init__(self, engine: Engine, trainer: Trainer, policy: Policy):
        if engine.replicas < 1 or engine.max_num_seqs < 1:
            raise ValueError("engine needs at least one replica and max_num_seqs >= 1")
        if policy.mode not in ("grpo", "lte") or policy.extra_start not in ("group", "barrier"):
            raise ValueError(f"unknown policy {policy}")
        if trainer.kind not in ("sync", "async"):
            raise ValueError(f"unknown trainer kind {trainer.kind!r}")
        self.engine, self.trainer, self.policy = engine, trainer, policy
        self.replicas = [_Replica(i) for i in range(engine.replicas)]
        self.now = 0.0
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._rid = itertools.count()
        self.paused = False  # async: generation stopped while the trainer updates
        self.parked: list[_Request] = []  # requests created or aborted while paused
        self.completed: deque[_GroupRun] = deque()
        self.barrier_pending: list[_GroupRun] = []
        self.first_open = 0  # groups of the current sync step whose first phase is not scored yet
        self.tokens = {"first": 0, "extra": 0, "recompute": 0}
        self.extra_phases = 0

    # -- event queue --
    def at(self, t: float, fn: Callable[[], None]) -> None:
        if t < self.now:
            raise RuntimeError(f"event at {t} scheduled in the past (now {self.now})")
        heapq.heappush(self.events, (t, next(self._seq), fn))

    def advance(self, to: float) -> None:
        """Let time pass to ``to``: run every event due by then (scoring, idle-server kicks)."""
        while self.events and self.events[0][0] <= to:
            t, _, fn = heapq.heappop(self.events)
            self.now = t
            fn()
        self.now = to

    def run_until(self, done: Callable[[], bool]) -> None:
        while not done():
            if not self.events:
                raise RuntimeError("simulation stalled: no events left and the step is not complete")
            t, _, fn = heapq.heappop(self.events)
            self.now = t
            fn()

    # -- routing and servers --
    def submit(self, r: _Request) -> None:
        if self.paused:
            self.parked.append(r)
            return
        rep = min(self.replicas, key=lambda x: (x.inflight, x.index))
        rep.inflight += 1
        r.replica = rep
        rep.waiting.append(r)
        self._kick(rep)

    def _kick(self, rep: _Replica) -> None:
        """Start ``rep``'s next iteration at the current time, after every other event of this instant: requests
        submitted at the same time (a group's G, the extras of a group scored as an iteration ends) start
        together, as they do in vLLM's engine loop."""
        if not rep.kick_pending and not rep.busy:
            rep.kick_pending = True
            self.at(self.now, lambda: self._kicked(rep))

    def _kicked(self, rep: _Replica) -> None:
        rep.kick_pending = False
        if not self.paused and not rep.busy:
            self._start_iteration(rep)

    def _start_iteration(self, rep: _Replica) -> None:
        e = self.engine
        # Room for one more token per running sequence, else preempt the latest admitted (recompute later).
        while rep.running and rep.kv_used + len(rep.running) > e.kv_capacity_tokens:
            _, r = rep.running.popitem()
            self._stop(rep, r)
            rep.kv_used -= r.prompt + r.generated
            rep.waiting.appendleft(r)
        budget = e.max_num_batched_tokens - len(rep.running)
        prefill = 0
        while rep.waiting and len(rep.running) < e.max_num_seqs:
            r = rep.waiting[0]
            need = r.prompt + r.generated
            if rep.kv_used + len(rep.running) + need + 1 > e.kv_capacity_tokens:
                break
            if need > budget and prefill > 0:  # one long prefill may take an iteration alone
                break
            rep.waiting.popleft()
            r.it0, r.g0 = rep.it, r.generated
            rep.kv_used += need
            rep.running[r.rid] = r
            heapq.heappush(rep.finish, (rep.it + r.length - r.generated, r.rid, r.version, r))
            prefill += need
            budget -= need
            if r.generated:
                self.tokens["recompute"] += need
        if not rep.running:
            if rep.waiting:
                r = rep.waiting[0]
                raise ValueError(
                    f"a request of {r.prompt}+{r.length} tokens does not fit kv_capacity_tokens={e.kv_capacity_tokens}"
                )
            rep.busy = False
            return
        rep.busy = True
        dt = e.t_iter_s + e.t_seq_s * len(rep.running) + e.t_ctx_s * rep.kv_used + e.t_prefill_token_s * prefill
        it = rep.it
        self.at(self.now + dt, lambda: self._end_iteration(rep, it))

    def _stop(self, rep: _Replica, r: _Request) -> None:
        """``r`` leaves ``rep`` before its last token (preempted or aborted): credit its tokens, keep them."""
        done = rep.tokens_of(r)
        self.tokens[r.phase] += done - r.generated
        r.generated = done
        r.version += 1

    def _end_iteration(self, rep: _Replica, it: int) -> None:
        if not rep.busy or it != rep.it:
            return  # the iteration was cancelled by an abort
        rep.it += 1
        rep.kv_used += len(rep.running)
        while rep.finish and rep.finish[0][0] <= rep.it:
            _, rid, ver, r = heapq.heappop(rep.finish)
            if ver != r.version or rid not in rep.running:
                continue
            del rep.running[rid]
            rep.kv_used -= r.prompt + r.length
            rep.inflight -= 1
            self.tokens[r.phase] += r.length - r.generated
            r.generated = r.length
            self.at(self.now + self.trainer.t_score_s, lambda r=r: self._scored(r))
        rep.busy = False
        self._kick(rep)

    def _abort_all(self) -> None:
        """colocate_async at the end of sampling: every unfinished request stops and keeps its tokens."""
        for rep in self.replicas:
            for r in list(rep.running.values()):
                self._stop(rep, r)
                self.parked.append(r)
            self.parked.extend(rep.waiting)
            rep.running.clear()
            rep.waiting.clear()
            rep.finish.clear()
            rep.kv_used = 0
            rep.inflight = 0
            rep.busy = False
            rep.it += 1  # invalidates the pending iteration end

    def _resume(self) -> None:
        self.paused = False
        parked, self.parked = self.parked, []
        for r in parked:
            self.submit(r)

    # -- groups --
    def _launch(self, gr: _GroupRun) -> None:
        g = gr.group
        for resp in g.first:
            self.submit(_Request(next(self._rid), gr, "first", g.prompt_len, resp.length))

    def _scored(self, r: _Request) -> None:
        gr = r.group
        if r.phase == "first":
            gr.first_scored += 1
            if gr.first_scored == len(gr.group.first):
                self._first_phase_done(gr)
        else:
            gr.extra_scored += 1
            if gr.extra_scored == len(gr.extra):
                self._complete(gr)

    def _first_phase_done(self, gr: _GroupRun) -> None:
        g = gr.group
        if self.trainer.kind == "sync":
            self.first_open -= 1
        if self.policy.mode == "lte" and g.none_pass and g.extra:
            if self.policy.extra_start == "barrier":
                gr.state = "waiting_barrier"
                self.barrier_pending.append(gr)
            else:
                self._start_extra(gr)
        else:
            self._complete(gr)
        if self.policy.extra_start == "barrier" and self.first_open == 0 and self.barrier_pending:
            pending, self.barrier_pending = self.barrier_pending, []
            for p in pending:
                self._start_extra(p)

    def _start_extra(self, gr: _GroupRun) -> None:
        cap = self.policy.extra_max_len
        gr.extra = tuple(Response(cap, False) if cap is not None and r.length >= cap else r for r in gr.group.extra)
        gr.state = "extra"
        self.extra_phases += 1
        prompt = gr.group.extra_prompt_len or gr.group.prompt_len
        for resp in gr.extra:
            self.submit(_Request(next(self._rid), gr, "extra", prompt, resp.length))

    def _complete(self, gr: _GroupRun) -> None:
        gr.state = "done"
        self.completed.append(gr)

    # -- steps --
    def _train_tokens(self, groups: Sequence[_GroupRun]) -> int:
        """Prompt + response tokens of the G final rows of each group (correct extras replace failures,
        at least one failure kept: ``lte.min_failures_kept=1``)."""
        total = 0
        for gr in groups:
            g = gr.group
            lengths = [r.length for r in g.first]
            correct = [r.length for r in gr.extra if r.passed]
            for i, length in enumerate(correct[: len(lengths) - 1]):
                lengths[i] = length
            total += g.prompt_len * len(lengths) + sum(lengths)
        return total

    def _train(self, groups: Sequence[_GroupRun]) -> tuple[float, int]:
        tokens = self._train_tokens(groups)
        return self.trainer.t_fixed_s + self.trainer.t_token_s * tokens, tokens

    def _take_counters(self) -> tuple[int, int, int, int]:
        t, n = self.tokens, self.extra_phases
        self.tokens, self.extra_phases = {"first": 0, "extra": 0, "recompute": 0}, 0
        return t["first"], t["extra"], t["recompute"], n

    def run_sync(self, steps: Sequence[Sequence[Group]]) -> list[StepResult]:
        """``PPOTrainerSync``: each step generates all its groups, then trains."""
        results = []
        for k, groups in enumerate(steps):
            start = self.now
            runs = [_GroupRun(g, k) for g in groups]
            self.completed.clear()
            self.first_open = len(runs)
            for gr in runs:
                self._launch(gr)
            self.run_until(lambda n=len(runs): len(self.completed) == n)
            gen = self.now - start
            train, tokens = self._train(runs)
            self.advance(self.now + train)
            first, extra, recompute, phases = self._take_counters()
            results.append(StepResult(gen, train, first, extra, tokens, phases, recompute, 0.0, _rescued(runs)))
        return results

    def run_async(self, steps: Sequence[Sequence[Group]], batch: int) -> list[StepResult]:
        """``colocate_async`` with partial rollout: ``steps`` are the batches of prompts added to generation
        (the first ``1 + async_warmup`` batches at once); each step trains the first ``batch`` groups that
        complete. Returns one result per training step that could be filled."""
        if self.policy.extra_start == "barrier":
            raise ValueError("the barrier extra phase is a sync-trainer variant")
        warm = 1 + int(round(self.trainer.async_warmup))
        feed = iter(steps)
        results = []
        step = 0  # training steps completed

        def add_batch() -> None:
            for g in next(feed, ()):
                self._launch(_GroupRun(g, step))

        for _ in range(warm):
            add_batch()
        while True:
            start = self.now
            self._resume()
            try:
                self.run_until(lambda: len(self.completed) >= batch)
            except RuntimeError:  # the feed ran dry: fewer than `batch` groups left in flight
                break
            gen = self.now - start
            taken = [self.completed.popleft() for _ in range(batch)]
            self.paused = True
            self._abort_all()
            train, tokens = self._train(taken)
            # Scoring goes on while the trainer updates (reward workers are separate processes).
            self.advance(self.now + train)
            first, extra, recompute, phases = self._take_counters()
            staleness = statistics.fmean(step - gr.version for gr in taken)
            with_extra = [step - gr.version for gr in taken if gr.extra]
            results.append(
                StepResult(
                    gen,
                    train,
                    first,
                    extra,
                    tokens,
                    phases,
                    recompute,
                    staleness,
                    _rescued(taken),
                    statistics.fmean(with_extra) if with_extra else None,
                )
            )
            step += 1
            add_batch()
        return results


def simulate(
    engine: Engine, trainer: Trainer, policy: Policy, steps: Sequence[Sequence[Group]], batch: int | None = None
) -> list[StepResult]:
    """Run ``steps`` (lists of groups) under one trainer and policy on a fresh simulation."""
    sim = Simulation(engine, trainer, policy)
    if trainer.kind == "sync":
        return sim.run_sync(steps)
    return sim.run_async(steps, batch if batch is not None else len(steps[0]))
