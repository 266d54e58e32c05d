"""The real terminal view of puppylog-watch in a tmux pane: during an alert, and cut off."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import append, query_val, recent, run_once, wait_for
from tests.integration.test_watch import FAST, alert_payload, burst_lines
from tests.pg import unique_name

SCREEN_FILE = Path("/tmp/puppylog-watch-screen.txt")

if shutil.which("tmux") is None:
    if os.environ.get("CI", "").lower() == "true":  # set by .ci/run
        pytest.fail("tmux is required in CI", pytrace=False)
    pytestmark = pytest.mark.skip(reason="tmux not installed")


class Tmux:
    """A private tmux server (own socket) with one detached session."""

    def __init__(self, width: int, height: int, command: str) -> None:
        self.socket = unique_name("pw")
        self.run(
            "new-session", "-d", "-s", "w", "-x", str(width), "-y", str(height),
            "env", "-u", "COLUMNS", "-u", "LINES", "TERM=xterm-256color", "sh", "-c", command,
        )  # fmt: skip

    def run(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "w")

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False, timeout=10
        )


@pytest.fixture
def firing_db(db_dsn: str, tmp_path: Path) -> str:
    log = tmp_path / "access.log"
    append(log, burst_lines(recent(120), quiet_after=0))
    run_once(db_dsn, log, **FAST)
    assert query_val(db_dsn, "SELECT alert_state FROM puppylog.log_groups") == "firing"
    return db_dsn


@pytest.fixture
def tmux_watch(firing_db: str) -> Iterator[Tmux]:
    # The shell traps (does not ignore) SIGINT so that it outlives Ctrl-C and reports the
    # watch's exit status; the watch itself gets the default disposition.
    cmd = (
        "trap true INT; "
        f"{shlex.quote(sys.executable)} -m puppylog_watch --dsn {shlex.quote(firing_db)}; "
        "echo EXIT=$?; sleep 60"
    )
    tmux = Tmux(100, 30, cmd)
    try:
        yield tmux
    finally:
        tmux.close()


def test_live_view_in_tmux_shows_banner_sections_and_chart(
    tmux_watch: Tmux, firing_db: str
) -> None:
    def ready() -> str | None:
        s = tmux_watch.screen()
        return s if "HIGH TRAFFIC ALERT" in s and "top sections" in s and "█" in s else None

    screen = str(wait_for(ready, 30, interval=0.1, message=tmux_watch.screen))
    SCREEN_FILE.write_text(screen, encoding="utf-8")
    lines = screen.splitlines()
    assert len(lines) <= 30 and all(len(line) <= 100 for line in lines)
    assert "High traffic generated an alert - hits = " in screen  # banner and list
    assert "/pages" in screen or "/api" in screen  # a top section of the latest bucket
    assert "threshold 5" in screen and " 5.0┤" in screen  # the threshold drawn on the chart
    assert "2-min avg" not in screen and "20s avg" in screen  # the group's 20 s window
    SCREEN_FILE.write_text(screen, encoding="utf-8")

    # A notification reaches the screen at once (a few trials, polling the pane).
    delays = []
    for i in (2, 4, 6):  # recoveries of made-up alerts: they go to the list
        payload = alert_payload(i)
        marker = f"hits = {1000 + i}"
        t0 = time.monotonic()
        query_val(firing_db, "SELECT pg_notify('puppylog_alerts', $1)", payload)

        def shown(m: str = marker) -> bool:
            return m in tmux_watch.screen()

        wait_for(shown, 10, interval=0.005)
        delays.append(time.monotonic() - t0)
    print(f"notification -> tmux pane: {[round(d * 1000, 1) for d in delays]} ms")

    # Ctrl-C leaves cleanly: exit 0 and the terminal back from the alternate screen.
    tmux_watch.run("send-keys", "-t", "w", "C-c")

    def exited() -> str | None:
        s = tmux_watch.screen()
        return s if "EXIT=" in s else None

    after = str(wait_for(exited, 15, interval=0.1))
    assert "EXIT=0" in after
    assert "HIGH TRAFFIC ALERT" not in after


def test_an_unreachable_database_is_one_readable_header_line_at_80_columns(
    tmp_path: Path,
) -> None:
    """The header says which socket is missing, in words; the whole error follows the exit."""
    sock = tmp_path / "nosuchdir" / ".s.PGSQL.5432"
    short = f"/{sock.parts[1]}/…/{sock.name}"  # what the header has room for
    dsn = f"postgresql://watcher@/puppylog?host={sock.parent}"
    cmd = (
        "trap true INT; "
        f"{shlex.quote(sys.executable)} -m puppylog_watch --dsn {shlex.quote(dsn)}; "
        "echo EXIT=$?; sleep 60"
    )
    tmux = Tmux(80, 24, cmd)
    try:

        def outage() -> str | None:
            s = tmux.screen()
            return s if "unreachable" in s else None

        first = str(wait_for(outage, 30, interval=0.1, message=tmux.screen)).splitlines()[0]
        assert first.rstrip() == (f" puppylog  group default  ● unreachable: no server at {short}")
        tmux.run("send-keys", "-t", "w", "C-c")

        def exited() -> str | None:
            s = tmux.screen()
            return s if "EXIT=" in s else None

        after = str(wait_for(exited, 15, interval=0.1, message=tmux.screen))
        assert "EXIT=0" in after
        joined = after.replace("\n", "")  # the line wraps at 80 columns
        assert f"puppylog-watch: database unreachable: no server at {sock} (" in joined
    finally:
        tmux.close()
