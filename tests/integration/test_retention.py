"""Retention: old day partitions (and old rollups) are dropped, recent ones kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from puppylogd.db import query


async def _partitions(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'puppylog.log_records'::regclass"
    )
    return {r["relname"] for r in rows}


async def test_retention_drops_whole_old_days_and_keeps_recent(db: asyncpg.Connection) -> None:
    """A 7-day retention drops the partition of 10 days ago with its rows and rollups."""
    now = datetime.now(UTC).replace(microsecond=0)
    old = now - timedelta(days=10)
    await db.execute(
        "SELECT puppylog.ensure_partitions($1::date, $2::date)", old.date(), now.date()
    )
    group = await db.fetchval("INSERT INTO puppylog.log_groups (name) VALUES ('g') RETURNING id")
    stream = await db.fetchval(
        "INSERT INTO puppylog.log_streams (group_id, host, path) VALUES ($1, 'h', '/f') "
        "RETURNING id",
        group,
    )
    for ts in (old, now):
        await db.execute(
            "INSERT INTO puppylog.log_records (ts, stream_id, remote_host, method, path, "
            "section, protocol, status) VALUES ($1, $2, '10.0.0.1', 'GET', '/a', '/a', "
            "'HTTP/1.1', 200)",
            ts,
            stream,
        )
    old_part = f"log_records_p{old:%Y%m%d}"
    assert old_part in await _partitions(db)
    assert await db.fetchval("SELECT count(*) FROM puppylog.stats_seconds") == 2

    dropped = await db.fetchval(query("apply_retention"), now - timedelta(days=7))

    assert dropped == 3  # the days 10, 9 and 8 days ago end before the cut-off
    parts = await _partitions(db)
    assert old_part not in parts
    assert f"log_records_p{now:%Y%m%d}" in parts
    assert await db.fetchval("SELECT count(*) FROM puppylog.log_records") == 1
    assert await db.fetchval("SELECT count(*) FROM puppylog.stats_seconds") == 1


async def test_retention_refuses_to_drop_the_last_day(db: asyncpg.Connection) -> None:
    """The owner-rights function cannot be used to wipe recent data."""
    with pytest.raises(asyncpg.RaiseError, match="refusing to drop"):
        await db.fetchval("SELECT count(*) FROM puppylog.drop_partitions_before(now())")
