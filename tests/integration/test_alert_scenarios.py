"""End-to-end alert scenarios with the real daemon (``python -m puppylogd``) as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.integration.helpers import DaemonProcess, clf_line, start_daemon

pytestmark = pytest.mark.timeout(120)


def alert_msg(hits: int, t: datetime) -> str:
    return f"High traffic generated an alert - hits = {hits}, triggered at {t.isoformat()}"


def recovery_msg(hits: int, t: datetime) -> str:
    return f"High traffic alert recovered - hits = {hits}, recovered at {t.isoformat()}"


def traffic(t0: datetime, rate: int, seconds: int, start_id: int = 0) -> bytes:
    """``rate`` CLF lines in each second of ``[t0, t0 + seconds)``."""
    lines = [
        clf_line(start_id + s * rate + i, t0 + timedelta(seconds=s))
        for s in range(seconds)
        for i in range(rate)
    ]
    return b"".join(lines)


def whole_second(seconds_ago: float) -> datetime:
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).replace(microsecond=0)


class Alerts:
    """A LISTENing connection on ``puppylog_alerts``; payloads with their arrival time."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.got: list[tuple[float, dict[str, Any]]] = []

    @classmethod
    async def listen(cls, dsn: str) -> Alerts:
        self = cls(await asyncpg.connect(dsn))
        await self.conn.add_listener("puppylog_alerts", self._on)
        return self

    def _on(self, _c: object, _pid: int, _ch: str, payload: object) -> None:
        self.got.append((time.monotonic(), json.loads(str(payload))))

    @property
    def messages(self) -> list[str]:
        return [p["message"] for _, p in self.got]

    async def wait(self, n: int, timeout: float, *daemons: DaemonProcess) -> None:
        deadline = time.monotonic() + timeout
        while len(self.got) < n:
            for d in daemons:
                d.assert_running()
            assert time.monotonic() < deadline, f"got {self.messages}, wanted {n}"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.conn.close()


async def run_once(dsn: str, *files: Path, **flags: str) -> None:
    args = ["--dsn", dsn, "--once"]
    for f in files:
        args += ["--log-file", str(f)]
    for k, v in flags.items():
        args += ["--" + k.replace("_", "-"), v]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUPPYLOG_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "puppylogd",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode(errors="replace")


async def test_replay_with_once(db_dsn: str, tmp_path: Path) -> None:
    """20 req/s for 180 s then a trickle: fires at T0+60, recovers at T0+240 (log time)."""
    t0 = whole_second(3600)
    log = tmp_path / "access.log"
    trickle = b"".join(
        clf_line(10_000 + i, t0 + timedelta(seconds=s)) for i, s in enumerate(range(245, 265, 5))
    )
    log.write_bytes(traffic(t0, 20, 180) + trickle)
    alerts = await Alerts.listen(db_dsn)
    try:
        await run_once(db_dsn, log)
        await alerts.wait(2, 10)
        await asyncio.sleep(0.3)
        assert alerts.messages == [
            alert_msg(1220, t0 + timedelta(seconds=60)),
            recovery_msg(1180, t0 + timedelta(seconds=240)),
        ]
        rows = await alerts.conn.fetch(
            "SELECT triggered_at, hits_at_trigger, recovered_at, hits_at_recovery "
            "FROM puppylog.alert_history"
        )
        expected = (t0 + timedelta(seconds=60), 1220, t0 + timedelta(seconds=240), 1180)
        assert [tuple(r.values()) for r in rows] == [expected]
        stateless = await alerts.conn.fetch("SELECT * FROM puppylog.alert_intervals(1)")
        assert [tuple(r.values()) for r in stateless] == [expected]
        # Time stopped at the last timestamp (T0+260): that second is closed, none later.
        closed = await alerts.conn.fetchval("SELECT closed_through FROM puppylog.log_groups")
        assert closed == t0 + timedelta(seconds=260)
    finally:
        await alerts.close()


async def test_live_recovery_comes_from_the_wall_clock(db_dsn: str, tmp_path: Path) -> None:
    """The lines end at T0+179 and nothing follows: the clock alone recovers at T0+240."""
    log = tmp_path / "access.log"
    # Fired at once (T0+60 is long past); recovery closes at T0+240+1+lateness, ~11 s on.
    t0 = whole_second(232)
    log.write_bytes(traffic(t0, 20, 180))
    alerts = await Alerts.listen(db_dsn)
    try:
        with start_daemon(db_dsn, log, host="web1") as daemon:
            await alerts.wait(1, 30, daemon)
            written_last = time.monotonic()
            assert alerts.messages == [alert_msg(1220, t0 + timedelta(seconds=60))]
            await alerts.wait(2, 30, daemon)
            # Nothing was written since: the recovery came from the clock, seconds later.
            assert alerts.got[1][0] - written_last > 3
            assert alerts.messages[1] == recovery_msg(1180, t0 + timedelta(seconds=240))
            await asyncio.sleep(1.5)
            assert len(alerts.got) == 2
            assert daemon.stop() == 0
    finally:
        await alerts.close()


async def test_two_daemons_alert_once_on_the_total(db_dsn: str, tmp_path: Path) -> None:
    """Two files, two daemons, 6 req/s each: one alert on 12 req/s (threshold 10)."""
    files = [tmp_path / "a.log", tmp_path / "b.log"]
    for f in files:
        f.touch()
    alerts = await Alerts.listen(db_dsn)
    flags: dict[str, Any] = {"window_seconds": 10, "threshold": 10, "heartbeat_timeout_seconds": 10}
    try:
        with (
            start_daemon(db_dsn, files[0], host="web-a", **flags) as d1,
            start_daemon(db_dsn, files[1], host="web-b", **flags) as d2,
        ):

            async def streams_ready() -> bool:
                n = await alerts.conn.fetchval(
                    "SELECT count(*) FROM puppylog.log_streams WHERE watermark IS NOT NULL"
                )
                return int(n) == 2

            deadline = time.monotonic() + 30
            while not await streams_ready():
                d1.assert_running()
                d2.assert_running()
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            # Live traffic: at the start of each second, 6 lines stamped that second per file.
            t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
            for s in range(14):
                when = t0 + timedelta(seconds=s)
                await asyncio.sleep(max(0.0, (when - datetime.now(UTC)).total_seconds()))
                for n, f in enumerate(files):
                    with f.open("ab") as out:
                        out.write(
                            b"".join(clf_line(n * 10_000 + s * 6 + i, when) for i in range(6))
                        )
            await alerts.wait(2, 20, d1, d2)
            await asyncio.sleep(2.0)
            # 12 (n) > 100 first with 9 seconds (108); after the last second (T0+13) the
            # window holds 12 x 8 = 96 < 100 at T0+15.
            assert alerts.messages == [
                alert_msg(108, t0 + timedelta(seconds=8)),
                recovery_msg(96, t0 + timedelta(seconds=15)),
            ]
            assert d1.stop() == 0 and d2.stop() == 0
        stored = await alerts.conn.fetchval("SELECT sum(lines_stored) FROM puppylog.log_streams")
        assert stored == 2 * 14 * 6
    finally:
        await alerts.close()
