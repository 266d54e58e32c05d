"""Start puppylogd with SIGHUP held before the slow imports.

Importing the daemon takes most of a second. Until the event loop's handler is installed,
SIGHUP's default action would end the process, so a ``kill -HUP`` (a reload) right after a
start would kill it instead. This module imports nothing of the daemon before its handler
is in place; a reload asked for in that time is remembered and applied once the daemon runs
(the settings may have been read before it arrived, so it is not assumed to be moot). The
interpreter's own start, the first 20-30 ms, stays uncovered: under systemd (Type=notify)
a reload waits for READY anyway.
"""

from __future__ import annotations

import signal
from types import FrameType

_early_reload = False


def _hold(signum: int, frame: FrameType | None) -> None:
    global _early_reload
    _early_reload = True


def hold_reloads() -> None:
    """Remember a SIGHUP instead of dying of it, until the daemon takes it over."""
    signal.signal(signal.SIGHUP, _hold)


def release_reloads() -> None:
    """Give SIGHUP its default action back (commands that do not reload: a hangup ends them)."""
    if signal.getsignal(signal.SIGHUP) is _hold:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def take_early_reload() -> bool:
    """Return whether a SIGHUP arrived before the daemon's handler, and forget it."""
    global _early_reload
    seen, _early_reload = _early_reload, False
    return seen


def main() -> int:
    """Run the ``puppylogd`` command line with SIGHUP held during its imports."""
    hold_reloads()
    try:
        from puppylogd.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        return 130  # Ctrl-C before the daemon's own handler: quietly, as an interrupted command
