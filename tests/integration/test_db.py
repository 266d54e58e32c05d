"""The connection helpers against the real server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import asyncpg

from puppylogd import db as pdb


async def test_fast_timestamps_store_and_read_what_asyncpg_does(
    db: asyncpg.Connection, db_dsn: str
) -> None:
    fast = await asyncpg.connect(db_dsn)
    try:
        await pdb.use_fast_timestamps(fast)
        values = [
            datetime(2026, 11, 29, 0, 0, 0, tzinfo=UTC),
            datetime(2026, 11, 28, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(1999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
            datetime(1, 1, 2, tzinfo=UTC),
            datetime(9999, 12, 30, tzinfo=UTC),
        ]
        await db.execute("CREATE TABLE t (i int, ts timestamptz)")
        await fast.copy_records_to_table("t", records=list(enumerate(values)))
        await db.copy_records_to_table("t", records=[(i + 10, v) for i, v in enumerate(values)])
        # Both encoders stored the same instants; both decoders read them back equal.
        by_default = await db.fetch("SELECT i, ts FROM t ORDER BY i")
        by_fast = await fast.fetch("SELECT i, ts FROM t ORDER BY i")
        assert [r["ts"] for r in by_default] == values * 2
        assert [r["ts"] for r in by_fast] == values * 2
        # 1999-12-31 23:00 at -05:30 is 2000-01-01 04:30 UTC.
        epoch = await db.fetchval("SELECT extract(epoch FROM ts)::bigint FROM t WHERE i = 2")
        assert epoch == int(datetime(2000, 1, 1, 4, 30, tzinfo=UTC).timestamp())
        # Parameters go through it too (the checkpoint's watermark), and so do infinities.
        as_param = await fast.fetchval(
            "SELECT extract(epoch FROM $1::timestamptz)::bigint", values[2]
        )
        assert as_param == epoch
        assert await fast.fetchval("SELECT 'infinity'::timestamptz") == datetime.max.replace(
            tzinfo=UTC
        )
    finally:
        await fast.close()
