"""Hosts whose clocks are wrong, against the real daemon and database.

A stream's watermark is held to its own host's clock, so a host whose clock runs minutes fast
reports a watermark minutes ahead of everyone else's. A daemon's clock cannot be set from a
test, so the fast host's stream is written here exactly as its daemon would write it: its
heartbeats go through the daemon's own ``heartbeat`` query (or set the watermark outright,
as an older daemon could) with a watermark 3 minutes ahead of the database's clock.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from puppylogd import db as queries
from puppylogd import systemd as sd
from puppylogd.config import Settings
from puppylogd.daemon import Daemon, clock_warning
from puppylogd.ingest import StreamIngest
from puppylogd.logs import configure_logging
from tests.integration.helpers import append, clf_lines, query_val, start_daemon

pytestmark = pytest.mark.timeout(120)

FAST = timedelta(minutes=3)
LATENESS = timedelta(seconds=2)


async def db_now(conn: asyncpg.Connection) -> datetime:
    """Return the database's clock."""
    value: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return value


async def fast_stream(conn: asyncpg.Connection, group: int) -> int:
    """Register the stream of a host whose clock runs FAST ahead; return its id."""
    sid: int = await conn.fetchval(
        "INSERT INTO puppylog.log_streams (group_id, host, path, heartbeat_at) "
        "VALUES ($1, 'web-fast', '/var/log/access.log', now()) RETURNING id",
        group,
    )
    return sid


async def fast_heartbeat(conn: asyncpg.Connection, sid: int) -> None:
    """Beat as the fast host's caught-up daemon does: its wall clock minus the lateness."""
    wm = (await db_now(conn)).replace(microsecond=0) + FAST - LATENESS
    await conn.execute(queries.query("heartbeat"), sid, wm, 0, True)


async def closed_through(conn: asyncpg.Connection) -> datetime:
    value: datetime = await conn.fetchval("SELECT closed_through FROM puppylog.log_groups")
    return value


async def test_a_fast_host_alone_does_not_close_seconds_ahead_of_the_database(
    db: asyncpg.Connection,
) -> None:
    """Set outright (no heartbeat query), a watermark 3 minutes ahead closes nothing ahead."""
    gid = await db.fetchval(
        "INSERT INTO puppylog.log_groups (name) VALUES ('default') RETURNING id"
    )
    sid = await fast_stream(db, gid)
    now = await db_now(db)
    await db.execute("SELECT puppylog.ensure_partitions($1::date, $1::date)", now.date())
    await db.execute(
        "INSERT INTO puppylog.log_records (ts, stream_id, remote_host, method, path, section, "
        "protocol, status) VALUES ($1, $2, '10.0.0.1', 'GET', '/a', '/a', 'HTTP/1.1', 200)",
        now - timedelta(seconds=30),
        sid,
    )
    await db.execute(
        "UPDATE puppylog.log_streams SET watermark = $2, heartbeat_at = now() WHERE id = $1",
        sid,
        now + FAST,
    )
    closed = await closed_through(db)
    assert closed is not None
    assert closed <= await db_now(db)
    newest_bucket = await db.fetchval("SELECT max(bucket) FROM puppylog.stats_buckets")
    assert newest_bucket + timedelta(seconds=10) <= await db_now(db)


async def test_lines_of_a_host_with_a_right_clock_are_not_late_after_a_fast_one_was_alone(
    db: asyncpg.Connection, db_dsn: str, tmp_path: Path
) -> None:
    """web-a stops; web-fast (3 min fast) is alone; web-a's next lines still count.

    Before the fix, web-fast alone closed the next 3 minutes at once: web-a's lines, back a
    few seconds later, were late for all of them (stored, in no bucket and no alert).
    """
    log = tmp_path / "a.log"
    # Some earlier traffic: the group's time starts at its first record.
    append(
        log, clf_lines(100, 3, (await db_now(db)).replace(microsecond=0) - timedelta(seconds=20))
    )
    flags: dict[str, Any] = {"host": "web-a", "heartbeat_timeout_seconds": 10, "retention_days": 0}
    with start_daemon(db_dsn, log, **flags) as daemon:
        for _ in range(200):
            daemon.assert_running()
            if await db.fetchval("SELECT closed_through FROM puppylog.log_groups") is not None:
                break
            await asyncio.sleep(0.1)
        assert daemon.stop() == 0
    gid = await db.fetchval("SELECT id FROM puppylog.log_groups")
    sid = await fast_stream(db, gid)
    for _ in range(3):  # web-fast alone, beating each second
        await fast_heartbeat(db, sid)
        await asyncio.sleep(1.0)

    beating = True
    beat_conn = await asyncpg.connect(db_dsn)

    async def keep_beating() -> None:
        while beating:
            await fast_heartbeat(beat_conn, sid)
            await asyncio.sleep(1.0)

    beater = asyncio.create_task(keep_beating())
    try:
        with start_daemon(db_dsn, log, **flags) as daemon:
            for _ in range(200):
                daemon.assert_running()
                stopped = await db.fetchval(
                    "SELECT stopped FROM puppylog.log_streams WHERE host = 'web-a'"
                )
                if not stopped:
                    break
                await asyncio.sleep(0.1)
            when = (await db_now(db)).replace(microsecond=0)
            append(log, clf_lines(0, 5, when))
            bucket = when - timedelta(seconds=when.second % 10)
            for _ in range(300):
                daemon.assert_running()
                stored = await db.fetchval(
                    "SELECT lines_stored FROM puppylog.log_streams WHERE host = 'web-a'"
                )
                if stored == 3 + 5:
                    break
                await asyncio.sleep(0.1)
            # Their bucket closes at most 10 s + lateness after them.
            for _ in range(300):
                daemon.assert_running()
                if await closed_through(db) >= bucket + timedelta(seconds=9):
                    break
                await asyncio.sleep(0.1)
            assert stored == 3 + 5
            payload = await db.fetchval(
                "SELECT payload FROM puppylog.stats_buckets WHERE bucket = $1", bucket
            )
            # Before the fix it had been published, empty, before web-a was even back.
            assert json.loads(payload)["hits"] == 5, payload
            assert daemon.stop() == 0
    finally:
        beating = False
        await beater
        await beat_conn.close()


async def test_a_stream_whose_fast_clock_is_set_right_holds_time_back_again(
    db: asyncpg.Connection,
) -> None:
    """Watermarks only grow: the one stored for a fast clock must not stay minutes ahead.

    After its clock is set right (NTP steps it back), a stream that is not caught up (a
    backlog, after a database outage say) must keep the group's time where its data ends.
    """
    gid = await db.fetchval(
        "INSERT INTO puppylog.log_groups (name) VALUES ('default') RETURNING id"
    )
    right = await db.fetchval(
        "INSERT INTO puppylog.log_streams (group_id, host, path, heartbeat_at) "
        "VALUES ($1, 'web-a', '/var/log/access.log', now()) RETURNING id",
        gid,
    )
    sid = await fast_stream(db, gid)
    now = await db_now(db)
    await db.execute("SELECT puppylog.ensure_partitions($1::date, $1::date)", now.date())
    await db.execute(
        "INSERT INTO puppylog.log_records (ts, stream_id, remote_host, method, path, section, "
        "protocol, status) VALUES ($1, $2, '10.0.0.1', 'GET', '/a', '/a', 'HTTP/1.1', 200)",
        now - timedelta(seconds=30),
        right,
    )
    await fast_heartbeat(db, sid)
    set_right = await db_now(db)
    await asyncio.sleep(5.0)
    # Clock set right, behind on its file: it says nothing about time past its data.
    await db.execute(queries.query("heartbeat"), sid, None, 0, False)
    right_wm = (await db_now(db)).replace(microsecond=0) - LATENESS
    await db.execute(queries.query("heartbeat"), right, right_wm, 0, True)
    assert await closed_through(db) < set_right


@pytest.mark.parametrize(("shift", "says"), [(-180, "180 s behind"), (180, "180 s ahead")])
async def test_a_host_clock_off_from_the_database_is_measured_and_said(
    db: asyncpg.Connection, shift: int, says: str
) -> None:
    """A daemon measures its clock against the database's and says how far off it is."""

    def host_clock() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=shift)

    offset = await queries.clock_offset(db, host_clock)
    assert abs(offset.total_seconds() + shift) < 1.0
    warning = clock_warning(offset)
    assert warning is not None and says in warning and "NTP" in warning
    assert clock_warning(await queries.clock_offset(db)) is None


@pytest.mark.parametrize("shift", [-180, 180])
async def test_a_host_clock_off_from_the_database_is_stored_on_its_streams(
    db: asyncpg.Connection, db_dsn: str, tmp_path: Path, shift: int
) -> None:
    """The offset measured at start is stored as a stream registers, an hourly one on it.

    Stored as the console shows it: this host's clock minus the database's (-180: behind).
    """

    def host_clock() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=shift)

    gid = await db.fetchval(
        "INSERT INTO puppylog.log_groups (name) VALUES ('default') RETURNING id"
    )
    log = tmp_path / "a.log"
    log.touch()
    settings = Settings(dsn=db_dsn, log_files=[log], host="web-off")
    offset = await queries.clock_offset(db, host_clock)
    ingest = StreamIngest(settings, db_dsn, log, gid, clock_offset=lambda: offset)
    try:
        await ingest.register()
    finally:
        await ingest.close()
    stored = "SELECT clock_offset_s FROM puppylog.log_streams WHERE id = $1"
    assert abs(await db.fetchval(stored, ingest.stream_id) - shift) < 1.0
    # The hourly check (the clock set right since) updates it.
    await queries.record_clock_offset(db, [ingest.stream_id], await queries.clock_offset(db))
    assert abs(await db.fetchval(stored, ingest.stream_id)) < 1.0


def test_a_daemon_whose_clock_is_right_says_nothing_of_it(db_dsn: str, tmp_path: Path) -> None:
    """No warning; the offset it measured (about 0) is on its stream for the console."""
    log = tmp_path / "a.log"
    log.touch()
    with start_daemon(db_dsn, log, host="web-a") as daemon:
        for _ in range(200):  # the clock is read at start, before the streams open
            daemon.assert_running()
            if "stream opened" in daemon.output():
                break
            time.sleep(0.1)
        assert daemon.stop() == 0
        assert "stream opened" in daemon.output()
        assert "host's clock" not in daemon.output()
    offset = query_val(db_dsn, "SELECT clock_offset_s FROM puppylog.log_streams")
    assert offset is not None and abs(offset) < 1.0


async def test_a_daemon_whose_clock_is_off_says_so_naming_its_host_and_files(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon measures its clock at start and warns: the test above alone passes without.

    A process's clock cannot be set, so this daemon runs in process and reads a host clock
    180 s fast through the real query (only the host's side of the measurement is shifted).
    """
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr(sd, "_SYSTEMD", None)
    measure = queries.clock_offset

    async def fast_clock(conn: asyncpg.Connection) -> timedelta:
        return await measure(conn, lambda: datetime.now(UTC) + timedelta(seconds=180))

    monkeypatch.setattr(queries, "clock_offset", fast_clock)
    log = tmp_path / "a.log"
    log.touch()
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        settings = Settings(dsn=db_dsn, log_files=[log], host="web-fast", once=True)
        assert await asyncio.wait_for(Daemon(settings).run(), timeout=30) == 0
    finally:
        configure_logging("warning", "json", stream=io.StringIO())
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    (warning,) = [e for e in events if "host's clock" in e["event"]]
    assert warning["level"] == "warning" and "180 s ahead" in warning["event"], warning
    assert (warning["host"], warning["files"]) == ("web-fast", [str(log)])
    assert abs(warning["offset_s"] + 180) < 1.0, warning
