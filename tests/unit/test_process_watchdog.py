"""The trainer's watchdog (recipe/lte/process_watchdog.py): its config, the stall bound, vLLM's /health over real
HTTP, and the decisions on replicas and waits. The death of real Ray actors:
tests/integration/test_process_watchdog_ray.py; the whole path through verl's trainer and vLLM:
tests/e2e/test_run_failures.py."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from recipe.lte.process_watchdog import ProcessWatchdog, Replica, RunFailure, WatchdogConfig, http_health, stall_bound_s


def test_config_defaults_and_refusals():
    assert WatchdogConfig.from_dict(None) == WatchdogConfig()
    with pytest.raises(ValueError, match=r"watchdog: unknown keys \['stall_floor'\]"):
        WatchdogConfig.from_dict({"stall_floor": 5})
    with pytest.raises(ValueError, match=r"watchdog.check_interval_s=0: must be a positive"):
        WatchdogConfig.from_dict({"check_interval_s": 0})
    with pytest.raises(ValueError, match=r"watchdog.unreachable_after_s=5 is shorter than"):
        WatchdogConfig.from_dict({"unreachable_after_s": 5, "check_interval_s": 10})


def test_stall_bound_by_hand():
    cfg = WatchdogConfig(stall_floor_s=600, stall_s_per_token=0.1)
    assert stall_bound_s(cfg, 8192, "lte") == pytest.approx(2 * 8192 * 0.1)  # 1638.4 s: two generations
    assert stall_bound_s(cfg, 8192, "grpo") == pytest.approx(8192 * 0.1)  # 819.2 s: one
    assert stall_bound_s(cfg, 64, "lte") == 600  # the floor


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_health_over_real_http(health_server):
    address = f"127.0.0.1:{health_server.server_address[1]}"
    _Health.status = 200
    assert http_health(address, 5) == (200, "")
    _Health.status = 503  # what vLLM's /health answers once its engine is dead
    assert http_health(address, 5) == (503, "")
    status, error = http_health(f"127.0.0.1:{_closed_port()}", 5)
    assert status is None and "Connection refused" in error


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _watchdog(answers: dict[str, tuple], clock=None, **cfg) -> ProcessWatchdog:
    cfg = WatchdogConfig(**{"check_interval_s": 10, "unreachable_after_s": 30, **cfg})
    replicas = [Replica(0, "10.0.0.1:8000", [("vllm_server_0_0", None)]), Replica(1, "10.0.0.2:8000", [])]
    return ProcessWatchdog(cfg, replicas, clock=clock or _Clock(), health=lambda address, timeout: answers[address])


def test_a_dead_engine_ends_the_step_at_once_naming_the_replica():
    wd = _watchdog({"10.0.0.1:8000": (503, ""), "10.0.0.2:8000": (200, "")})
    with pytest.raises(RunFailure, match=r"vLLM engine of rollout replica 0 \(server actor vllm_server_0_0, 10.0.0.1"):
        wd.check()


def test_an_unreachable_replica_ends_the_step_after_the_bound_only():
    clock = _Clock()
    answers = {"10.0.0.1:8000": (200, ""), "10.0.0.2:8000": (None, "ConnectionRefusedError: refused")}
    wd = _watchdog(answers, clock)
    wd.check()
    clock.now = 29.0
    wd.check()  # failing for 29 s < 30 s
    answers["10.0.0.2:8000"] = (200, "")
    clock.now = 40.0
    wd.check()  # answered again: the count starts over
    answers["10.0.0.2:8000"] = (None, "TimeoutError: timed out")
    clock.now = 50.0
    wd.check()
    clock.now = 80.0
    with pytest.raises(RunFailure, match=r"rollout replica 1 .* has not answered /health for 30 s .*TimeoutError"):
        wd.check()


def _fast(answers=None, **cfg) -> ProcessWatchdog:
    healthy = answers or {"10.0.0.1:8000": (200, ""), "10.0.0.2:8000": (200, "")}
    return _watchdog(healthy, clock=time.monotonic, check_interval_s=0.05, unreachable_after_s=1, **cfg)


def test_wait_returns_the_value_or_raises_the_calls_own_error():
    wd = _fast()
    assert wd.wait(lambda: time.sleep(0.2) or 7, "a call", bound_s=5) == 7

    def boom():
        raise KeyError("its own error")

    with pytest.raises(KeyError, match="its own error"):
        wd.wait(boom, "a call", bound_s=5)


def test_wait_ends_a_call_without_progress_after_the_bound():
    wd, release = _fast(), threading.Event()
    start = time.monotonic()
    with pytest.raises(RunFailure, match=r"the rollout \(step 3\) made no progress for 0 s \(bound 0.3 s: x\)"):
        wd.wait(release.wait, "the rollout (step 3)", bound_s=0.3, progress=lambda: 0, bound_key="x")
    assert 0.3 <= time.monotonic() - start < 5
    release.set()


def test_wait_bounds_a_call_without_a_progress_measure_as_a_whole():
    wd, release = _fast(), threading.Event()
    with pytest.raises(RunFailure, match=r"the weight sync has not finished for 0 s \(bound 0.2 s"):
        wd.wait(release.wait, "the weight sync", bound_s=0.2)
    release.set()


def test_wait_lets_a_call_run_past_the_bound_while_it_progresses():
    wd, ticks = _fast(), iter(range(10**6))
    done_at = time.monotonic() + 0.8
    value = wd.wait(lambda: time.sleep(0.8) or "done", "the rollout", bound_s=0.2, progress=lambda: next(ticks))
    assert value == "done" and time.monotonic() >= done_at


def test_wait_ends_a_blocked_call_when_an_engine_dies():
    answers = {"10.0.0.1:8000": (200, ""), "10.0.0.2:8000": (200, "")}
    wd, release = _fast(answers), threading.Event()
    threading.Timer(0.2, lambda: answers.update({"10.0.0.2:8000": (503, "")})).start()
    with pytest.raises(RunFailure, match="vLLM engine of rollout replica 1"):
        wd.wait(release.wait, "the weight sync", bound_s=60)
    release.set()
