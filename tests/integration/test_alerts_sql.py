"""The alert and 10-second stats evaluation in PL/pgSQL, driven by direct inserts.

Records are inserted into ``puppylog.log_records`` (one statement per batch, as COPY does) and
time is moved by updating a stream's watermark, exactly what the daemon's checkpoint does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.alert_model import evaluate, intervals
from tests.pg import run_async

# Aligned to 10 s, and well before any clock the suite runs on: group time never passes the
# database's clock (migration 0008), so a T0 in its future would close nothing.
T0 = datetime(2025, 11, 28, 4, 0, 0, tzinfo=UTC)
NOTIFY_LIMIT = 8000


def at(offset: int) -> datetime:
    """T0 plus ``offset`` seconds."""
    return T0 + timedelta(seconds=offset)


def iso(offset: int) -> str:
    """The message form of T0 + offset."""
    return at(offset).isoformat()


async def make_group(
    conn: asyncpg.Connection,
    name: str = "default",
    *,
    threshold: float = 10.0,
    recovery: float | None = None,
    window: int = 120,
    streams: int = 1,
) -> tuple[int, list[int]]:
    """Create a group and its streams (alive, no watermark yet); return their ids."""
    gid = await conn.fetchval(
        "INSERT INTO puppylog.log_groups (name, threshold, recovery_threshold, window_s) "
        "VALUES ($1, $2, $3, $4) RETURNING id",
        name,
        threshold,
        recovery,
        window,
    )
    sids = [
        await conn.fetchval(
            "INSERT INTO puppylog.log_streams (group_id, host, path, heartbeat_at) "
            "VALUES ($1, $2, '/var/log/access.log', now()) RETURNING id",
            gid,
            f"host{i}",
        )
        for i in range(streams)
    ]
    return int(gid), [int(s) for s in sids]


INSERT_SQL = """
INSERT INTO puppylog.log_records
    (ts, stream_id, remote_host, auth_user, method, path, section, protocol, status, bytes)
SELECT u.ts, $1, $3, $4, $5, $6, $6, 'HTTP/1.1', $7, 100
FROM unnest($2::timestamptz[]) AS u (ts)
"""


async def insert(
    conn: asyncpg.Connection,
    stream: int,
    hits: Mapping[int, int],
    *,
    host: str = "10.0.0.1",
    user: str | None = None,
    method: str = "GET",
    section: str = "/pages",
    status: int = 200,
) -> None:
    """Insert ``hits[s]`` records at T0 + s (one statement: the rollup trigger fires once)."""
    stamps = [at(s) for s, n in sorted(hits.items()) for _ in range(n)]
    if not stamps:
        return
    await conn.execute(
        "SELECT puppylog.ensure_partitions($1::date, $2::date)",
        min(stamps).date(),
        max(stamps).date(),
    )
    await conn.execute(INSERT_SQL, stream, stamps, host, user, method, section, status)


async def advance(conn: asyncpg.Connection, stream: int, offset: int) -> None:
    """Move a stream's watermark to T0 + offset: closes every second before it."""
    await conn.execute(
        "UPDATE puppylog.log_streams SET watermark = $2, heartbeat_at = now() WHERE id = $1",
        stream,
        at(offset),
    )


class Listener:
    """A dedicated connection LISTENing on both channels, collecting parsed payloads."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.alerts: list[dict[str, Any]] = []
        self.stats: list[dict[str, Any]] = []
        self.raw_sizes: list[int] = []

    @classmethod
    async def start(cls, dsn: str) -> Listener:
        listener = cls(await asyncpg.connect(dsn))
        await listener.conn.add_listener("puppylog_alerts", listener._on_alert)
        await listener.conn.add_listener("puppylog_stats", listener._on_stats)
        return listener

    def _on_alert(self, _c: object, _pid: int, _channel: str, payload: object) -> None:
        self.raw_sizes.append(len(str(payload).encode()))
        self.alerts.append(json.loads(str(payload)))

    def _on_stats(self, _c: object, _pid: int, _channel: str, payload: object) -> None:
        self.raw_sizes.append(len(str(payload).encode()))
        self.stats.append(json.loads(str(payload)))

    async def settle(self, *, alerts: int = 0, stats: int = 0, timeout: float = 5.0) -> None:
        """Wait until at least the given numbers arrived, then a little more for strays."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.alerts) < alerts or len(self.stats) < stats:
            assert loop.time() < deadline, (len(self.alerts), len(self.stats))
            await self.conn.execute("SELECT 1")
            await asyncio.sleep(0.02)
        for _ in range(3):
            await self.conn.execute("SELECT 1")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.conn.close()


def steady(rate: int, start: int, seconds: int) -> dict[int, int]:
    return {s: rate for s in range(start, start + seconds)}


async def history(conn: asyncpg.Connection, gid: int) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(
        "SELECT triggered_at, hits_at_trigger, recovered_at, hits_at_recovery "
        "FROM puppylog.alert_history WHERE group_id = $1 ORDER BY triggered_at",
        gid,
    )
    return [tuple(r.values()) for r in rows]


async def stateless(conn: asyncpg.Connection, gid: int) -> list[tuple[Any, ...]]:
    rows = await conn.fetch("SELECT * FROM puppylog.alert_intervals($1)", gid)
    return [tuple(r.values()) for r in rows]


def as_rows(model_rows: Iterable[tuple[int, int, int | None, int | None]]) -> list[tuple[Any, ...]]:
    return [(at(t), h, None if r is None else at(r), rh) for t, h, r, rh in model_rows]


# -- alerts ----------------------------------------------------------------------------------


async def test_alert_and_recovery_history_and_messages(db: asyncpg.Connection, db_dsn: str) -> None:
    listener = await Listener.start(db_dsn)
    try:
        gid, (sid,) = await make_group(db)
        await insert(db, sid, steady(20, 0, 180))
        await advance(db, sid, 239)  # closes through 238: fired, not yet recovered
        await listener.settle(alerts=1)
        assert [a["message"] for a in listener.alerts] == [
            f"High traffic generated an alert - hits = 1220, triggered at {iso(60)}"
        ]
        first = listener.alerts[0]
        assert first["v"] == 1 and first["type"] == "alert" and first["group"] == "default"
        assert first["hits"] == 1220 and first["threshold"] == 10.0 and first["window_s"] == 120
        assert first["avg"] == pytest.approx(1220 / 120, abs=0.001)
        assert first["at"] == iso(60)
        assert await db.fetchval("SELECT alert_state FROM puppylog.log_groups") == "firing"

        await advance(db, sid, 400)
        await listener.settle(alerts=2)
        assert [a["message"] for a in listener.alerts] == [
            f"High traffic generated an alert - hits = 1220, triggered at {iso(60)}",
            f"High traffic alert recovered - hits = 1180, recovered at {iso(240)}",
        ]
        rec = listener.alerts[1]
        assert rec["type"] == "recovery" and rec["triggered_at"] == iso(60)
        assert rec["alert_id"] == first["alert_id"]

        expected = [(at(60), 1220, at(240), 1180)]
        assert await history(db, gid) == expected
        assert await stateless(db, gid) == expected
        assert as_rows(intervals(evaluate(steady(20, 0, 180), 399))) == expected
        row = await db.fetchrow("SELECT * FROM puppylog.alert_history")
        assert row is not None
        assert row["avg_at_trigger"] == pytest.approx(1220 / 120)
        assert row["avg_at_recovery"] == pytest.approx(1180 / 120)
        assert (row["threshold"], row["recovery_threshold"], row["window_s"]) == (10, 10, 120)
        # The view replays exactly what was notified.
        events = await db.fetch("SELECT kind, payload FROM puppylog.alert_events ORDER BY at")
        assert [json.loads(e["payload"]) for e in events] == listener.alerts
    finally:
        await listener.close()


async def test_recovery_threshold_and_window_settings(db: asyncpg.Connection) -> None:
    gid, (sid,) = await make_group(db, threshold=10, recovery=5)
    await insert(db, sid, steady(20, 0, 180))
    await advance(db, sid, 500)
    model = evaluate(steady(20, 0, 180), 499, recovery_threshold=5)
    assert await history(db, gid) == as_rows(intervals(model)) == [(at(60), 1220, at(270), 580)]
    assert await stateless(db, gid) == await history(db, gid)
    # A short window: 3 s at threshold 2.
    gid2, (sid2,) = await make_group(db, "short", threshold=2, window=3)
    await insert(db, sid2, {0: 6, 1: 1, 5: 7, 6: 7})
    await advance(db, sid2, 20)
    # At 0 the average is exactly 2 (6 / 3): nothing; at 1 it is 7 / 3.
    assert await history(db, gid2) == [(at(1), 7, at(3), 1), (at(5), 7, at(9), 0)]


async def test_exactly_one_message_per_transition_repeated_and_concurrent(
    db: asyncpg.Connection, db_dsn: str
) -> None:
    listener = await Listener.start(db_dsn)
    other = await asyncpg.connect(db_dsn)
    try:
        gid, (s1, s2) = await make_group(db, streams=2)
        await insert(db, s1, steady(10, 0, 180))
        await insert(db, s2, steady(10, 0, 180))

        async def walk(conn: asyncpg.Connection, stream: int) -> None:
            for off in range(0, 420, 7):
                await advance(conn, stream, off)
                await conn.fetchval("SELECT puppylog.advance_group($1)", gid)

        async def hammer(conn: asyncpg.Connection) -> None:
            for _ in range(60):
                await conn.fetchval("SELECT puppylog.advance_group($1)", gid)

        third = await asyncpg.connect(db_dsn)
        try:
            await asyncio.gather(walk(db, s1), walk(other, s2), hammer(third))
        finally:
            await third.close()
        await advance(db, s1, 420)
        await advance(other, s2, 420)
        for _ in range(5):
            await db.fetchval("SELECT puppylog.advance_group($1)", gid)
        await listener.settle(alerts=2, stats=42)
        assert [a["type"] for a in listener.alerts] == ["alert", "recovery"]
        assert listener.alerts[0]["hits"] == 1220 and listener.alerts[1]["hits"] == 1180
        buckets = [s["bucket"] for s in listener.stats]
        # Closed through 419: buckets 0..410, each announced once.
        assert buckets == [iso(b) for b in range(0, 420, 10)]
        assert await history(db, gid) == [(at(60), 1220, at(240), 1180)]
    finally:
        await other.close()
        await listener.close()


async def test_group_time_is_the_slowest_live_stream(db: asyncpg.Connection) -> None:
    gid, (s1, s2) = await make_group(db, streams=2)
    await insert(db, s1, steady(21, 0, 60))
    await advance(db, s1, 300)
    # s2 has no watermark yet: it does not count (a fresh stream); time closes through 299.
    closed = await db.fetchval("SELECT closed_through FROM puppylog.log_groups")
    assert closed == at(299)
    await advance(db, s2, 350)
    await advance(db, s1, 400)
    assert await db.fetchval("SELECT closed_through FROM puppylog.log_groups") == at(349)
    # s2 stops heart-beating: after the timeout it no longer holds time back.
    await db.execute(
        "UPDATE puppylog.log_streams SET heartbeat_at = now() - interval '31 seconds' "
        "WHERE id = $1",
        s2,
    )
    await advance(db, s1, 450)
    assert await db.fetchval("SELECT closed_through FROM puppylog.log_groups") == at(449)
    # A cleanly stopped stream does not hold it back either.
    await advance(db, s2, 460)
    await db.execute("UPDATE puppylog.log_streams SET stopped = true WHERE id = $1", s2)
    await advance(db, s1, 500)
    assert await db.fetchval("SELECT closed_through FROM puppylog.log_groups") == at(499)
    assert await history(db, gid) == [(at(57), 1218, at(122), 1197)]


# -- stats -----------------------------------------------------------------------------------


async def test_one_stats_payload_per_closed_bucket_including_empty(
    db: asyncpg.Connection, db_dsn: str
) -> None:
    listener = await Listener.start(db_dsn)
    try:
        _gid, (sid,) = await make_group(db)
        await insert(db, sid, {3: 5, 7: 2}, user="james", section="/pages", status=200)
        await insert(db, sid, {8: 3}, host="10.0.0.2", section="/api", status=404, method="POST")
        await insert(db, sid, {51: 4}, status=503)
        await advance(db, sid, 55)  # closes through 54: buckets 0..40; 50 still open
        await listener.settle(stats=5)
        assert [s["bucket"] for s in listener.stats] == [iso(b) for b in range(0, 50, 10)]
        first = listener.stats[0]
        assert first["type"] == "stats" and first["v"] == 1 and first["seconds"] == 10
        assert first["hits"] == 10 and first["rps"] == 1.0 and first["bytes"] == 1000
        assert first["sections"] == [["/pages", 7], ["/api", 3]]
        assert first["status"] == {"2xx": 7, "3xx": 0, "4xx": 3, "5xx": 0, "other": 0}
        assert first["error_rate"] == 0.3
        assert first["methods"] == [["GET", 7], ["POST", 3]]
        assert first["unique_hosts"] == 2
        assert first["users"] == [["james", 7]]
        assert first["alert"] == "ok" and first["threshold"] == 10.0
        assert first["avg"] == round(10 / 120, 3)
        for empty in listener.stats[1:]:
            assert empty["hits"] == 0 and empty["sections"] == [] and empty["users"] == []
            assert empty["error_rate"] == 0 and empty["unique_hosts"] == 0
        await advance(db, sid, 70)
        await listener.settle(stats=7)
        assert [s["bucket"] for s in listener.stats[5:]] == [iso(50), iso(60)]
        assert listener.stats[5]["status"]["5xx"] == 4
        # The table keeps exactly what was published.
        rows = await db.fetch("SELECT payload FROM puppylog.stats_buckets ORDER BY bucket")
        assert [json.loads(r["payload"]) for r in rows] == listener.stats
    finally:
        await listener.close()


async def test_payloads_stay_small_with_huge_keys(db: asyncpg.Connection, db_dsn: str) -> None:
    listener = await Listener.start(db_dsn)
    try:
        _gid, (sid,) = await make_group(db, threshold=0.01)
        for i in range(40):
            await insert(
                db,
                sid,
                {1: 1 + i % 3},
                host=f"10.1.{i}.{'9' * 3000}",
                user=f"user{i}-" + "\U0001f600" * 5000,
                section=f"/{i}" + '\\"' * 4000,
                method=f"M{i}" + "Y" * 3000,
            )
        await advance(db, sid, 20)
        await listener.settle(alerts=1, stats=1)
        assert listener.raw_sizes and max(listener.raw_sizes) < NOTIFY_LIMIT
        stats = listener.stats[0]
        assert len(stats["sections"]) == 10 and len(stats["users"]) == 5
        assert len(stats["methods"]) == 5 and stats["unique_hosts"] == 40
        assert stats["alert"] == "firing"
    finally:
        await listener.close()


async def test_late_lines_count_in_stats_but_do_not_rewrite_history(
    db: asyncpg.Connection, db_dsn: str
) -> None:
    listener = await Listener.start(db_dsn)
    try:
        gid, (sid,) = await make_group(db)
        await insert(db, sid, {0: 1, 25: 1})
        await advance(db, sid, 31)  # closed through 30: buckets 0, 10, 20
        await listener.settle(stats=3)
        published = await db.fetch("SELECT * FROM puppylog.stats_buckets ORDER BY bucket")
        # 2000 lines, far later than the lateness, at a closed second.
        await insert(db, sid, {5: 2000})
        assert (
            await db.fetchval(
                "SELECT hits FROM puppylog.stats_seconds WHERE group_id = $1 AND ts = $2",
                gid,
                at(5),
            )
            == 2000
        )
        assert await history(db, gid) == []
        await advance(db, sid, 45)
        await listener.settle(stats=4)
        # Published buckets are not rewritten, nor re-announced.
        again = await db.fetch(
            "SELECT * FROM puppylog.stats_buckets WHERE bucket < $1 ORDER BY bucket", at(30)
        )
        assert again == published
        assert [s["bucket"] for s in listener.stats] == [iso(b) for b in (0, 10, 20, 30)]
        # They do count in the window of the seconds that were still open: the alert fires at
        # the first open second, never in the past.
        assert await history(db, gid) == [(at(31), 2002, None, None)]
        assert listener.stats[3]["alert"] == "firing"
        assert [a["at"] for a in listener.alerts] == [iso(31)]
    finally:
        await listener.close()


async def test_rejected_lines_are_reported_once(db: asyncpg.Connection, db_dsn: str) -> None:
    _gid, (sid,) = await make_group(db)
    await insert(db, sid, {1: 1})
    await db.execute("UPDATE puppylog.log_streams SET lines_rejected = 3 WHERE id = $1", sid)
    await advance(db, sid, 25)
    await db.execute("UPDATE puppylog.log_streams SET lines_rejected = 5 WHERE id = $1", sid)
    await advance(db, sid, 35)
    rows = await db.fetch("SELECT payload FROM puppylog.stats_buckets ORDER BY bucket")
    assert [json.loads(r["payload"])["rejected"] for r in rows] == [3, 0, 2]


# -- the property: database == stateless query == reference model --------------------------

traffic = st.dictionaries(st.integers(0, 40), st.integers(0, 6), max_size=25)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    hits=traffic,
    window=st.integers(1, 6),
    threshold=st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0]),
    recovery_factor=st.sampled_from([None, 0.0, 0.5, 1.0]),
    cuts=st.lists(st.integers(0, 42), max_size=6),
)
def test_database_agrees_with_model(
    db_dsn: str,
    *,
    hits: dict[int, int],
    window: int,
    threshold: float,
    recovery_factor: float | None,
    cuts: list[int],
) -> None:
    recovery = None if recovery_factor is None else threshold * recovery_factor
    final = 41 + window + 2

    async def run() -> None:
        conn = await asyncpg.connect(db_dsn)
        try:
            name = f"g{await conn.fetchval('SELECT count(*) FROM puppylog.log_groups')}"
            gid, (sid,) = await make_group(
                conn, name, threshold=threshold, recovery=recovery, window=window
            )
            # Records of each second are stored before that second closes, in a few batches.
            done = -1
            for cut in [*sorted(cuts), final]:
                await insert(conn, sid, {s: n for s, n in hits.items() if done < s <= cut + 1})
                done = max(done, cut + 1)
                await advance(conn, sid, cut)
            model = evaluate(
                hits, final - 1, window=window, threshold=threshold, recovery_threshold=recovery
            )
            expected = as_rows(intervals(model))
            assert await history(conn, gid) == expected
            assert await stateless(conn, gid) == expected
            # Stats: one per bucket from the first with traffic to the last closed one.
            buckets = [
                r[0]
                for r in await conn.fetch(
                    "SELECT bucket FROM puppylog.stats_buckets WHERE group_id = $1 ORDER BY bucket",
                    gid,
                )
            ]
            busy = [s for s, n in hits.items() if n > 0]
            if busy:
                first = min(busy) // 10 * 10
                assert buckets == [at(b) for b in range(first, final - 9, 10)]
            else:
                assert buckets == []
        finally:
            await conn.close()

    run_async(run)
