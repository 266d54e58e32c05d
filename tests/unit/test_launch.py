"""The launcher holds SIGHUP during the imports and gives it back to commands that do not reload."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from puppylogd import launch


@pytest.fixture(autouse=True)
def _restore_sighup() -> Iterator[None]:
    before = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, before)
    launch.take_early_reload()


def test_a_held_sighup_is_remembered_once() -> None:
    launch.hold_reloads()
    assert not launch.take_early_reload()
    os.kill(os.getpid(), signal.SIGHUP)
    assert launch.take_early_reload()
    assert not launch.take_early_reload()


def test_release_gives_back_the_default_action_only_when_held() -> None:
    launch.hold_reloads()
    launch.release_reloads()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL

    def mine(signum: int, frame: object) -> None:
        pass

    signal.signal(signal.SIGHUP, mine)
    launch.release_reloads()  # not its handler: left alone
    assert signal.getsignal(signal.SIGHUP) is mine


def test_commands_that_do_not_reload_release_sighup(monkeypatch: pytest.MonkeyPatch) -> None:
    from puppylogd.cli import main

    monkeypatch.setenv("PUPPYLOG_THRESHOLD", "lots")  # a bad setting: each returns before work
    launch.hold_reloads()
    assert main(["migrate"]) == 2
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    launch.hold_reloads()
    assert main(["run"]) == 2
    assert signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL  # run keeps it for the loop
