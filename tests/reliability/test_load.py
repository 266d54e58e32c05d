"""Load: three daemons (three files, three hosts, one group) with a watch connected.

A writer appends exactly ``RATE`` lines per second to each file, stamped with the second they
are written in, for ``SECONDS`` seconds; one scripted burst adds ``BURST`` extra lines per
file in two seconds. Per-second traffic is exact, so the group's average (window
``WINDOW`` s) sits at 3 x RATE, below the threshold (1.25 x that), except for the burst,
which lifts it to about 1.5 x: exactly one alert and one recovery, in the database and at
the watch. Every row is stored exactly once.

This machine (2 cores, shared with PostgreSQL, the writer, three daemons and the watch)
sets the rate: ``PUPPYLOG_LOAD_RATE`` / ``PUPPYLOG_LOAD_SECONDS`` override the defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import DaemonProcess, append, daemon_env, query_rows, start_daemon
from tests.reliability.support import Lines, assert_exact, record, stream_totals, wait_stored

RATE = int(os.environ.get("PUPPYLOG_LOAD_RATE", "30000"))  # lines/s per file
SECONDS = int(os.environ.get("PUPPYLOG_LOAD_SECONDS", "120"))
SLICES = 10  # appends per second and file
WINDOW = 5  # --window-seconds
LATENESS = 5  # --lateness-seconds: the writer may fall a little behind the wall clock
THRESHOLD = 1.25 * 3 * RATE  # req/s over the window, for the whole group
BURST = int(0.5 * RATE * WINDOW)  # extra lines per file: average +50 %
BURST_AT = SECONDS // 2  # second of the run at which the burst starts (spread over 2 s)
GROUP = "load"


class Writer(threading.Thread):
    """Write RATE lines/s (plus the burst) to each file, each second's lines stamped with it."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__(name="load-writer", daemon=True)
        self.paths = paths
        self.gens = [Lines(section=f"f{i}") for i in range(len(paths))]
        self.behind = 0.0  # worst lag behind schedule, seconds
        self.t0 = float(int(time.time()) + 1)  # the first second written
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._write()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _write(self) -> None:
        t0 = self.t0 = float(int(time.time()) + 1)
        per_slice = [RATE // SLICES + (1 if k < RATE % SLICES else 0) for k in range(SLICES)]
        for s in range(SECONDS):
            ts = datetime.fromtimestamp(t0 + s, UTC)
            extra = BURST // 2 + (BURST % 2 if s == BURST_AT else 0)
            burst = s in (BURST_AT, BURST_AT + 1)
            for k in range(SLICES):
                due = t0 + s + k / SLICES
                now = time.time()
                if due > now:
                    time.sleep(due - now)
                else:
                    self.behind = max(self.behind, now - due)
                n = per_slice[k] + (extra * (k + 1) // SLICES - extra * k // SLICES if burst else 0)
                for path, gen in zip(self.paths, self.gens, strict=True):
                    append(path, gen.make(n, ts))

    @property
    def valid(self) -> int:
        return sum(g.valid for g in self.gens)


def transitions(dsn: str) -> list[tuple[str, datetime]]:
    rows = query_rows(
        dsn,
        "SELECT kind, at FROM puppylog.alert_events WHERE group_name = $1 ORDER BY at, kind",
        GROUP,
    )
    return [(str(r["kind"]), r["at"]) for r in rows]


def watch_events(out: Path) -> list[tuple[str, int]]:
    """Return the distinct (type, alert_id) of the alerts and recoveries the watch printed."""
    seen: list[tuple[str, int]] = []
    for line in out.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            payload: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        key = (str(payload.get("type")), int(payload.get("alert_id", -1)))
        if key[0] in ("alert", "recovery") and key not in seen:
            seen.append(key)
    return seen


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 240)
def test_three_daemons_one_group_under_load(db_dsn: str, tmp_path: Path) -> None:
    paths = [tmp_path / f"access-{i}.log" for i in range(3)]
    for p in paths:
        p.touch()
    settings: dict[str, Any] = {
        "group": GROUP,
        "threshold": THRESHOLD,
        "window_seconds": WINDOW,
        "lateness_seconds": LATENESS,
    }
    watch_out = tmp_path / "watch.ndjson"
    daemons: list[DaemonProcess] = []
    with watch_out.open("wb") as out:
        watch = subprocess.Popen(
            [sys.executable, "-m", "puppylog_watch", "--json", "--dsn", db_dsn, "--group", GROUP],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=daemon_env(),
        )
    try:
        for i, p in enumerate(paths):
            daemons.append(
                start_daemon(db_dsn, p, host=f"web{i}", log_path=tmp_path / f"d{i}.log", **settings)
            )
        time.sleep(2.0)  # daemons registered and tailing
        started = time.monotonic()
        writer = Writer(paths)
        writer.start()
        lags: list[int] = []
        while writer.is_alive():
            writer.join(5.0)
            for d in daemons:
                d.assert_running()
            stored, _ = stream_totals(db_dsn)
            lags.append(writer.valid - stored)
        assert writer.error is None, writer.error
        write_s = time.monotonic() - started
        valid = writer.valid
        assert valid == 3 * (RATE * SECONDS + BURST)
        wait_stored(db_dsn, valid, 0, 180, daemons)
        drained_s = time.monotonic() - started - write_s

        def both() -> bool:
            return len(transitions(db_dsn)) >= 2 and len(watch_events(watch_out)) >= 2

        deadline = time.monotonic() + 30
        while not both() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2.0)  # anything more (a second alert) would show now
        (alert, alert_at), (recovery, recovered_at) = transitions(db_dsn)
        assert (alert, recovery) == ("alert", "recovery")
        # The burst's seconds are B and B+1: the average passes the threshold at B+1 (at B
        # it equals it), and falls below it when B+1 leaves the window.
        burst = datetime.fromtimestamp(writer.t0 + BURST_AT, UTC)
        assert int((alert_at - burst).total_seconds()) in (0, 1), (alert_at, burst)
        assert int((recovered_at - burst).total_seconds()) in (WINDOW, WINDOW + 1)
        seen = watch_events(watch_out)
        assert [kind for kind, _ in seen] == ["alert", "recovery"], seen
        assert watch.poll() is None, watch_out.read_text()[-3000:]
        for d in daemons:
            assert d.stop() == 0, d.output()[-3000:]
    finally:
        for d in daemons:
            d.kill9()
        if watch.poll() is None:
            watch.terminate()
            watch.wait(10)
    c = assert_exact(db_dsn, valid, 0)
    record(
        f"load: 3 daemons x {RATE:,} lines/s x {SECONDS} s (+{BURST:,} burst each), "
        f"watch connected; writer max behind {writer.behind:.2f} s, max backlog "
        f"{max(lags, default=0):,} lines, drained {drained_s:.1f} s after the writer; "
        f"1 alert (burst +{(alert_at - burst).total_seconds():.0f} s) + 1 recovery",
        valid,
        c,
        write_s + drained_s,
    )
