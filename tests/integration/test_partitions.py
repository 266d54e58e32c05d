"""Day partitions: each carries the rollup trigger and the writer's grant; the daemon COPYs
straight into them, across midnight and after one was dropped under it."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg

from puppylogd.ingest import partition_of
from puppylogd.migrations import apply_migrations
from puppylogd.parser import COLUMNS
from tests.integration.helpers import (
    append,
    clf_line,
    counts,
    migrate_up_to,
    query_rows,
    query_val,
    run_once,
    start_daemon,
    wait_for,
)

DAYS = [date(2026, 11, 27), date(2026, 11, 28), date(2026, 11, 29)]


async def partition_state(db: asyncpg.Connection, day: date) -> tuple[bool, bool]:
    """Return (has the rollup trigger, puppylog_writer may INSERT) for a day's partition."""
    row = await db.fetchrow(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1::regclass "
        "               AND tgname = 'log_records_rollup') AS trig, "
        "       has_table_privilege('puppylog_writer', $1::regclass, 'INSERT') AS ins",
        f"puppylog.{partition_of(day)}",
    )
    assert row is not None
    return bool(row["trig"]), bool(row["ins"])


async def test_ensure_partitions_makes_and_repairs_trigger_and_grant(
    db: asyncpg.Connection,
) -> None:
    await db.execute("SELECT puppylog.ensure_partitions($1, $2)", DAYS[0], DAYS[-1])
    for day in DAYS:
        assert await partition_state(db, day) == (True, True)
    # A partition that lost both (made by hand, or before migration 0005) is repaired.
    part = f"puppylog.{partition_of(DAYS[1])}"
    await db.execute(f"DROP TRIGGER log_records_rollup ON {part}")
    await db.execute(f"REVOKE INSERT ON {part} FROM puppylog_writer")
    assert await partition_state(db, DAYS[1]) == (False, False)
    assert await db.fetchval("SELECT puppylog.ensure_partitions($1, $1)", DAYS[1]) == 0
    assert await partition_state(db, DAYS[1]) == (True, True)
    # A COPY straight into the partition is rolled up once.
    gid = await db.fetchval("INSERT INTO puppylog.log_groups (name) VALUES ('g') RETURNING id")
    sid = await db.fetchval(
        "INSERT INTO puppylog.log_streams (group_id, host, path) VALUES ($1, 'h', '/a') "
        "RETURNING id",
        gid,
    )
    ts = datetime(2026, 11, 28, 12, 0, 5, tzinfo=UTC)
    row = (ts, sid, "10.0.0.1", None, None, "GET", "/a/b", "/a", "HTTP/1.1", 200, 5, None, None)
    await db.copy_records_to_table(
        partition_of(DAYS[1]), schema_name="puppylog", columns=COLUMNS, records=[row] * 3
    )
    assert await db.fetchval("SELECT sum(hits) FROM puppylog.stats_seconds") == 3
    assert await db.fetchval("SELECT sum(hits) FROM puppylog.bucket_counts WHERE dim = 's'") == 3


async def test_migration_0005_upgrades_the_partitions_made_before_it(
    db: asyncpg.Connection, tmp_path: Path
) -> None:
    # Rebuild the schema as migrations 0001-0004 left it, with partitions made by then.
    assert len(await migrate_up_to(db, 4, tmp_path / "migrations")) == 4
    await db.execute("SELECT puppylog.ensure_partitions($1, $1)", DAYS[0])
    await db.execute("SELECT puppylog.ensure_partitions($1, $1)", DAYS[2])  # a gap between
    assert await partition_state(db, DAYS[0]) == (False, False)
    # Upgrade to the shipped head, as a user would: 0005 is the first step.
    assert (await apply_migrations(db))[0] == "0005_partition_rollup_triggers"
    assert await partition_state(db, DAYS[0]) == (True, True)
    assert await partition_state(db, DAYS[2]) == (True, True)
    # The gap stays a gap: only existing partitions were touched.
    assert await db.fetchval("SELECT to_regclass($1)", f"puppylog.{partition_of(DAYS[1])}") is None


def test_a_batch_across_midnight_goes_to_both_partitions(db_dsn: str, tmp_path: Path) -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    before, after = today - timedelta(seconds=2), today + timedelta(seconds=1)
    log = tmp_path / "access.log"
    # Out of order across midnight, as a buffering server may write them.
    append(log, b"".join(clf_line(i, (before, after)[i % 2]) for i in range(40)))
    run_once(db_dsn, log)
    c = counts(db_dsn)
    assert (c.rows, c.duplicates, c.lines_stored) == (40, 0, 40)
    for day in (before.date(), after.date()):
        n = query_val(db_dsn, f"SELECT count(*) FROM puppylog.{partition_of(day)}")
        assert n == 20, day
    assert query_val(db_dsn, "SELECT sum(hits) FROM puppylog.stats_seconds") == 40
    stored = query_rows(db_dsn, "SELECT ts, count(*) FROM puppylog.log_records GROUP BY ts")
    assert {r["ts"]: r["count"] for r in stored} == {before: 20, after: 20}


def test_the_daemon_remakes_a_partition_dropped_under_it(db_dsn: str, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    now = datetime.now(UTC).replace(microsecond=0)
    append(log, clf_line(0, now - timedelta(seconds=3)))
    with start_daemon(db_dsn, log, poll_interval=0.05) as daemon:
        wait_for(lambda: counts(db_dsn).rows == 1, 20, message=daemon.output)
        # Gone with its row (dropped by hand); the daemon still believes the day is ready.
        query_val(db_dsn, f"DROP TABLE puppylog.{partition_of(now.date())}")
        append(log, clf_line(1, now - timedelta(seconds=2)))
        wait_for(lambda: counts(db_dsn).lines_stored == 2, 20, message=daemon.output)
        assert daemon.stop() == 0, daemon.output()
    c = counts(db_dsn)
    assert (c.rows, c.duplicates, c.lines_stored) == (1, 0, 2)
    assert query_val(db_dsn, "SELECT min(path) FROM puppylog.log_records") == "/pages/id-1"
