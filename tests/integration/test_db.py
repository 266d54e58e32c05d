"""The connection helpers against the real server."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from puppylogd import db as pdb
from tests.integration.helpers import end_backend


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


@pytest.fixture
async def copying(db: asyncpg.Connection, db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """Yield a connection in a transaction that has copied into ``t (i int, s text)`` before.

    As the daemon's batches: asyncpg's COPY asks a table's columns only the first time.
    """
    await db.execute("CREATE TABLE public.t (i int, s text)")
    conn = await asyncpg.connect(db_dsn)
    try:
        await pdb.copy_records(conn, "t", [(0, "")], columns=["i", "s"], schema_name="public")
        await conn.execute("BEGIN")
        yield conn
    finally:
        conn.terminate()


def loop_reports() -> list[dict[str, Any]]:
    """Collect what asyncio reports to the running loop's exception handler (until the end)."""
    reports: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reports.append(ctx))
    return reports


async def test_a_copy_after_the_goodbye_of_an_idle_session_leaves_no_future_behind(
    copying: asyncpg.Connection, db_dsn: str
) -> None:
    # The goodbye is read, not yet the close (two turns of the loop): asyncpg's COPY then
    # fails on the protocol's state, after making its result future. That future must not
    # fail unseen once the connection closes ("Future exception was never retrieved").
    reports = loop_reports()
    end_backend(db_dsn, copying.get_server_pid())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    with pytest.raises(asyncpg.InternalClientError):
        await pdb.copy_records(copying, "t", [(1, "x")], columns=["i", "s"], schema_name="public")
    await asyncio.sleep(0.2)  # the close is read: the future fails
    assert copying.is_closed()
    gc.collect()
    assert [r["message"] for r in reports] == []


async def test_a_copy_into_a_closed_socket_stops_at_once(
    copying: asyncpg.Connection, db_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing is read yet: the COPY goes into a socket the server has closed. asyncpg sends
    # the whole batch (10 MB here, 20 messages) without a pause, and asyncio warns
    # "socket.send() raised exception." for each send past the fifth into a failed socket.
    rows = [(i, "x" * 200) for i in range(50_000)]
    end_backend(db_dsn, copying.get_server_pid())
    with caplog.at_level(logging.WARNING, logger="asyncio"), pytest.raises(pdb.CONNECTION_ERRORS):
        await pdb.copy_records(copying, "t", rows, columns=["i", "s"], schema_name="public")
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
