"""The trainer's watchdog (recipe/lte/process_watchdog.py) on real Ray actors: a dead actor is reported by name, a
busy one is not; actors are named as Ray knows them."""

from __future__ import annotations

import time

import pytest

from recipe.lte.process_watchdog import ProcessWatchdog, RunFailure, WatchdogConfig, actor_names


def test_the_death_of_a_real_ray_actor_is_reported_a_busy_one_is_not_and_actors_are_named():
    import ray

    @ray.remote
    class Busy:
        def work(self, seconds: float) -> None:
            time.sleep(seconds)

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)  # never a `ray start` one
    try:
        busy, doomed = Busy.remote(), Busy.options(name="doomed").remote()
        ray.get([busy.work.remote(0), doomed.work.remote(0)])
        # The names in the watchdog's messages: asked of each actor; the default for one without a name.
        assert actor_names([busy, doomed], default="server_{}") == ["server_0", "doomed"]
        busy.work.remote(30)  # a sync actor in a long call: its ping waits, and that is not a failure
        wd = ProcessWatchdog(WatchdogConfig(), [])
        wd.watch_actors("FSDP worker", [busy, doomed])
        wd.check(settle_s=1.0)
        ray.kill(doomed)
        with pytest.raises(RunFailure, match=r"^FSDP worker 1 died: .*(killed|ray\.kill)"):
            wd.check(settle_s=10.0)
    finally:
        ray.shutdown()
