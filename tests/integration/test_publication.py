"""Publishing closed buckets: ``bucket_payloads`` (one query for many buckets, migration 0006)
against ``bucket_payload`` (one bucket, the reference from 0002).

Two groups whose records share the same seconds (so each bucket must count only its own
group's streams), more sections, methods and users than the top lists keep, ties in hits,
keys longer than the 64 characters a payload keeps, rows without a user, an idle gap, alert
intervals that end exactly on a bucket's last second or never: every payload must be the
same, byte for byte, and so must what ``advance_group`` stores and announces.
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import asyncpg

from puppylogd.ingest import partition_of
from puppylogd.migrations import apply_migrations
from puppylogd.parser import COLUMNS
from tests.integration.helpers import migrate_up_to

# Aligned to 10 s, and well before any clock the suite runs on: group time never passes the
# database's clock (migration 0008), so a T0 in its future would close nothing.
T0 = datetime(2025, 11, 28, 4, 0, 0, tzinfo=UTC)
SECONDS = 200
IDLE = range(100, 130)  # no records at all: three empty buckets
SIGNATURE = "puppylog.bucket_payloads(integer, timestamptz[], bigint)"


def at(offset: int) -> datetime:
    """T0 plus ``offset`` seconds."""
    return T0 + timedelta(seconds=offset)


def random_rows(rnd: random.Random, streams: list[int], n: int) -> list[tuple[Any, ...]]:
    """Build ``n`` record rows over ``SECONDS`` seconds outside ``IDLE``, in no order."""
    sections = [f"/s{i}" for i in range(14)] + ["/" + "x" * 90]
    methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "M" * 80]
    users = [None, None, None, "ana", "raj", "li", "ola", "kim", "jo", "u" * 70]
    hosts = [f"10.0.0.{i}" for i in range(25)] + ["2001:db8::1", "2001:db8::2"]
    seconds = [s for s in range(SECONDS) if s not in IDLE]
    rows = []
    for _ in range(n):
        section = rnd.choice(sections)
        rows.append(
            (
                at(rnd.choice(seconds)),
                rnd.choice(streams),
                rnd.choice(hosts),
                None,
                rnd.choice(users),
                rnd.choice(methods),
                section + "/page",
                section,
                "HTTP/1.1",
                rnd.choice((200, 200, 301, 404, 500, 999)),
                rnd.choice((None, 0, 512)),
                None,
                None,
            )
        )
    return rows


async def make_group(conn: asyncpg.Connection, name: str, window: int, streams: int) -> list[int]:
    """Create a group with live streams; return the stream ids (the group's id comes first)."""
    gid = await conn.fetchval(
        "INSERT INTO puppylog.log_groups (name, threshold, window_s) VALUES ($1, 3, $2) "
        "RETURNING id",
        name,
        window,
    )
    sids = [
        await conn.fetchval(
            "INSERT INTO puppylog.log_streams (group_id, host, path, heartbeat_at) "
            "VALUES ($1, $2, '/a.log', now()) RETURNING id",
            gid,
            f"h{i}",
        )
        for i in range(streams)
    ]
    return [int(gid), *sids]


async def reference(
    conn: asyncpg.Connection, gid: int, buckets: list[datetime], rejected: int
) -> list[tuple[datetime, str]]:
    """Return ``bucket_payload``'s JSON text for each bucket, the first with ``rejected``."""
    return [
        (
            b,
            await conn.fetchval(
                "SELECT puppylog.bucket_payload($1, $2, $3)::text",
                gid,
                b,
                rejected if i == 0 else 0,
            ),
        )
        for i, b in enumerate(buckets)
    ]


async def in_one_query(
    conn: asyncpg.Connection, gid: int, buckets: list[datetime], rejected: int
) -> list[tuple[datetime, str]]:
    rows = await conn.fetch(
        "SELECT bucket, payload::text FROM puppylog.bucket_payloads($1, $2, $3)",
        gid,
        buckets,
        rejected,
    )
    return [(r["bucket"], r["payload"]) for r in rows]


def parsed(payloads: list[tuple[datetime, str]]) -> list[dict[str, Any]]:
    """Decode the payloads' JSON text, dropping the buckets."""
    return [json.loads(text) for _, text in payloads]


async def test_one_query_gives_every_bucket_what_bucket_payload_gives(
    db: asyncpg.Connection,
) -> None:
    rnd = random.Random(20261129)
    one, *one_streams = await make_group(db, "one", 7, 2)
    two, *two_streams = await make_group(db, "two", 120, 1)
    await db.execute("SELECT puppylog.ensure_partitions($1, $1)", T0.date())
    for n in (1500, 900):  # two statements: the rollups add up
        await db.copy_records_to_table(
            partition_of(T0.date()),
            schema_name="puppylog",
            columns=COLUMNS,
            records=random_rows(rnd, one_streams + two_streams, n),
        )
    # Group one fired twice: recovered on the last second of bucket 30 (so that bucket is
    # already "ok"), and from second 165 on without recovery.
    await db.execute(
        "INSERT INTO puppylog.alert_history (group_id, triggered_at, hits_at_trigger, "
        "avg_at_trigger, threshold, recovery_threshold, window_s, recovered_at) "
        "VALUES ($1, $2, 30, 4.3, 3, 3, 7, $3), ($1, $4, 30, 4.3, 3, 3, 7, NULL)",
        one,
        at(15),
        at(39),
        at(165),
    )
    every = [at(s) for s in range(0, SECONDS, 10)]
    scattered = [at(150), at(20), at(110), at(30), at(190)]  # any order, gaps, an empty one
    for gid in (one, two):
        for buckets in (every, scattered, every[:1]):
            want = await reference(db, gid, buckets, 17)
            assert await in_one_query(db, gid, buckets, 17) == want
    assert await db.fetch("SELECT * FROM puppylog.bucket_payloads($1, '{}', 0)", one) == []

    # The data exercised what it is meant to.
    payloads = parsed(await reference(db, one, every, 0))
    assert [p["alert"] for p in payloads[1:5]] == ["firing", "firing", "ok", "ok"]
    assert payloads[-2]["alert"] == "firing" and payloads[12]["hits"] == 0
    assert all(len(p["sections"]) == 10 and len(p["users"]) == 5 for p in payloads[:10])
    assert any(len(k) == 64 for p in payloads for k, _ in p["sections"] + p["methods"])
    assert any(a[1] == b[1] for p in payloads for a, b in pairwise(p["sections"]))  # ties
    other = parsed(await reference(db, two, every[:3], 0))
    assert all(
        p["unique_hosts"] != q["unique_hosts"] for p, q in zip(payloads[:3], other, strict=True)
    )


async def fill(conn: asyncpg.Connection, seed: int) -> int:
    """Create a group of two streams holding 2,000 records and 4 rejected lines; its id."""
    gid, *streams = await make_group(conn, "one", 120, 2)
    await conn.execute("SELECT puppylog.ensure_partitions($1, $1)", T0.date())
    await conn.copy_records_to_table(
        partition_of(T0.date()),
        schema_name="puppylog",
        columns=COLUMNS,
        records=random_rows(random.Random(seed), streams, 2000),
    )
    await conn.execute(
        "UPDATE puppylog.log_streams SET lines_rejected = 4 WHERE id = $1", streams[0]
    )
    return gid


async def advance(conn: asyncpg.Connection, gid: int, offset: int) -> None:
    """Move all of the group's watermarks to T0 + offset + 1 s: closes second offset."""
    await conn.execute(
        "UPDATE puppylog.log_streams SET watermark = $2, heartbeat_at = now() WHERE group_id = $1",
        gid,
        at(offset + 1),
    )


async def stored(conn: asyncpg.Connection, gid: int) -> list[tuple[datetime, str]]:
    rows = await conn.fetch(
        "SELECT bucket, payload::text FROM puppylog.stats_buckets WHERE group_id = $1 "
        "ORDER BY bucket",
        gid,
    )
    return [(r["bucket"], r["payload"]) for r in rows]


async def test_advance_group_stores_and_announces_the_reference_payloads(
    db: asyncpg.Connection, db_dsn: str
) -> None:
    gid = await fill(db, 7)
    heard: list[str] = []
    listener = await asyncpg.connect(db_dsn)
    await listener.add_listener(
        "puppylog_stats", lambda _c, _p, _ch, payload: heard.append(payload)
    )
    try:
        # Two steps: 8 buckets, then the other 12 (the 3 idle ones included).
        for offset in (80, SECONDS):
            await advance(db, gid, offset)
        for _ in range(50):
            if len(heard) >= 20:
                break
            await listener.execute("SELECT 1")
            await asyncio.sleep(0.05)
    finally:
        await listener.close()
    # The rejected lines are reported once, by the first bucket published.
    want = await reference(db, gid, [at(s) for s in range(0, SECONDS, 10)], 4)
    assert await stored(db, gid) == want
    assert heard == [text for _, text in want]


async def test_a_database_upgraded_to_0006_publishes_on_where_0005_stopped(
    db: asyncpg.Connection, tmp_path: Path
) -> None:
    assert len(await migrate_up_to(db, 5, tmp_path / "migrations")) == 5
    gid = await fill(db, 11)
    await advance(db, gid, 80)  # 0005's advance_group publishes the first 8 buckets
    assert "0006_publish_buckets_in_one_query" in await apply_migrations(db)
    await advance(db, gid, SECONDS)
    want = await reference(db, gid, [at(s) for s in range(0, SECONDS, 10)], 4)
    assert await stored(db, gid) == want


async def test_readers_and_writers_may_run_it_public_may_not(db: asyncpg.Connection) -> None:
    for role, allowed in (("puppylog_reader", True), ("puppylog_writer", True), ("public", False)):
        assert (
            await db.fetchval("SELECT has_function_privilege($1, $2, 'EXECUTE')", role, SIGNATURE)
            is allowed
        )
