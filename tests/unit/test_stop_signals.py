"""SIGTERM and SIGHUP stop a run as Ctrl-C does, in both processes that receive them: the demo launcher
(``recipe.lte.demo.run``) and the trainer (``recipe.lte.main_lte``). Real signals sent to this process; the runs
themselves (Ray, vLLM, what is left afterwards): tests/e2e/test_run_failures.py."""

from __future__ import annotations

import os
import signal

import pytest

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.fixture
def restore_handlers():
    saved = {sig: signal.getsignal(sig) for sig in SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_the_demo_launcher_stops_on_each_signal_and_then_ignores_the_next(sig, restore_handlers, capfd):
    from recipe.lte.demo import run

    for s in run.STOP_SIGNALS:
        signal.signal(s, run._on_stop_signal)
    with pytest.raises(run.Stopped) as stopped:
        os.kill(os.getpid(), sig)
    assert stopped.value.signum == sig
    # While it stops (the trainer's shutdown, the cleanup) a second signal must not interrupt it.
    os.kill(os.getpid(), signal.SIGTERM)
    assert "[demo] SIGTERM received: already stopping the run" in capfd.readouterr().out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: signal.Signals(s).name)
def test_the_trainer_turns_sigterm_and_sighup_into_ctrl_c(sig, restore_handlers, capfd):
    from recipe.lte.main_lte import install_stop_handlers

    install_stop_handlers()
    with pytest.raises(KeyboardInterrupt, match=f"{signal.Signals(sig).name} received"):
        os.kill(os.getpid(), sig)
    assert f"[LTE] {signal.Signals(sig).name} received: stopping the run as Ctrl-C does" in capfd.readouterr().err
