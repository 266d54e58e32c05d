"""Connect to PostgreSQL and load the named queries kept in ``puppylogd/sql/*.sql``."""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import asyncpg

# Errors that mean "the server is gone or unreachable", as opposed to a bad statement.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # The client's protocol state is broken (e.g. the server killed the backend mid-way):
    # the connection is unusable, like a lost one.
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
    # Every slot (of the server, the role or the database) is taken: one frees when another
    # session ends, so wait for it like for a server that is starting.
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


# Connection errors that are an answer, not silence: the server is down (refused, no socket),
# starting or full. A daemon retrying against them is alive; a hang (a timeout) is not.
ANSWERED_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionRefusedError,
    FileNotFoundError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


@functools.cache
def query(name: str) -> str:
    """Return the SQL text of the named query (file ``sql/<name>.sql``)."""
    return (resources.files("puppylogd") / "sql" / f"{name}.sql").read_text(encoding="utf-8")


async def connect(dsn: str, *, application_name: str, timeout: float = 10.0) -> asyncpg.Connection:
    """Open one connection, tagged with the application name so operators can see who is who."""
    return await asyncpg.connect(
        dsn,
        timeout=timeout,
        command_timeout=None,
        server_settings={"application_name": application_name},
    )


@dataclass(frozen=True, slots=True)
class ConnectionBudget:
    """Say how many more connections this session's role may open in its database."""

    at_most: int  # with no session connected but this one
    now: int  # given the sessions connected at the moment
    limit: str  # the setting that bounds ``at_most``, for messages


def budget_from_row(row: Mapping[str, Any]) -> ConnectionBudget:
    """Return the budget described by a row of the ``connection_budget`` query."""
    server = f"max_connections = {row['max_connections']}"
    if row["reserved"]:
        server += f", {row['reserved']} of them reserved"
    # (capacity, sessions counted against it, description); this session is among them.
    limits = [(row["max_connections"] - row["reserved"], row["used"], server)]
    if row["role_limit"] >= 0:
        limits.append(
            (
                row["role_limit"],
                row["used_by_role"],
                f"role {row['role_name']} has CONNECTION LIMIT {row['role_limit']}",
            )
        )
    if row["database_limit"] >= 0:
        limits.append(
            (
                row["database_limit"],
                row["used_in_database"],
                f"database {row['database_name']} has CONNECTION LIMIT {row['database_limit']}",
            )
        )
    capacity, _, limit = min(limits, key=lambda item: item[0])
    return ConnectionBudget(
        at_most=max(capacity - 1, 0),
        now=max(min(cap - used for cap, used, _ in limits), 0),
        limit=limit,
    )


async def connection_budget(conn: asyncpg.Connection) -> ConnectionBudget:
    """Read the connection limits that apply to ``conn``'s role and database."""
    row = await conn.fetchrow(query("connection_budget"))
    assert row is not None
    return budget_from_row(dict(row))


async def clock_offset(
    conn: asyncpg.Connection, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> timedelta:
    """Return the database's clock minus this host's (positive: this host's clock is slow).

    Read halfway through the round trip, so it is off by at most half of one.
    """
    before = now()
    theirs: datetime = await conn.fetchval(query("clock"))
    after = now()
    return theirs - (before + (after - before) / 2)


async def session_role(conn: asyncpg.Connection) -> tuple[str, str]:
    """Return the session's role and database, for an error that says what to grant."""
    row = await conn.fetchrow("SELECT current_user AS role, current_database() AS db")
    assert row is not None
    return str(row["role"]), str(row["db"])


def seconds_ahead(offset: timedelta | None) -> float | None:
    """Return a ``clock_offset`` as ``log_streams.clock_offset_s``: seconds this host is ahead.

    Stored the way the console shows it (``clock -180s``: this host's clock is behind).
    """
    return None if offset is None else round(-offset.total_seconds(), 1)


async def record_clock_offset(
    conn: asyncpg.Connection, stream_ids: Sequence[int], offset: timedelta
) -> None:
    """Store a clock ``offset`` just measured on the streams ``stream_ids`` (for the console)."""
    await conn.execute(query("record_clock_offset"), list(stream_ids), seconds_ahead(offset))


# Kernel send buffer asked for on a local (Unix socket) connection that carries COPY: room for
# most of a batch, so PostgreSQL keeps reading while the daemon's one thread parses the next
# batch (bench/: bulk ingest +14 %). The kernel caps it at net.core.wmem_max, which only means
# less overlap.
COPY_SEND_BUFFER = 4 * 1024 * 1024


def widen_send_buffer(conn: object, size: int = COPY_SEND_BUFFER) -> int | None:
    """Enlarge a Unix-socket connection's send buffer; return the size the kernel granted.

    Returns None (and changes nothing) for TCP, whose buffers the kernel autotunes (a fixed
    size would switch that off), or when the socket is not reachable.
    """
    transport = getattr(conn, "_transport", None)  # asyncpg offers no public handle on it
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
    except OSError:
        return None


# Rows handed to asyncpg's COPY between two looks at the socket: a few hundred KiB encoded,
# about one of the 512 KiB messages it sends.
COPY_SLICE = 1000


async def copy_records(
    conn: asyncpg.Connection,
    table: str,
    records: Sequence[Sequence[Any]],
    *,
    columns: Sequence[str],
    schema_name: str = "puppylog",
) -> None:
    """Binary-COPY ``records`` into ``table``, quietly when the server ends the session.

    asyncpg's COPY (0.29 to 0.32 at least) is noisy when the backend is terminated (a server
    stop, ``pg_terminate_backend``); the caller gets the error all the same, and this keeps
    the rest out of the journal:

    * It makes its result future before it checks the connection's state. When the
      server's goodbye (``FATAL: terminating connection``) arrived while the session was
      idle just before the COPY, that check fails (``InternalClientError: cannot switch to
      state 21``) and the future is left behind; it fails as the connection closes, and
      asyncio logs ``Future exception was never retrieved`` with a traceback. Its outcome
      is claimed here.
    * It encodes and sends the whole batch without yielding to the event loop, so once a
      send has failed, each later message of the batch goes to the dead socket, and asyncio
      warns ``socket.send() raised exception.`` for every one past the fifth. The rows go
      in slices here, and the COPY stops at the first slice after the socket failed.
    """
    transport = getattr(conn, "_transport", None)  # asyncpg offers no public handle on it

    def slices() -> Iterator[Sequence[Any]]:
        for start in range(0, len(records), COPY_SLICE):
            if transport is not None and transport.is_closing():
                raise asyncpg.ConnectionDoesNotExistError(
                    "connection lost while the rows were being sent"
                )
            yield records[start : start + COPY_SLICE]

    rows: Iterable[Sequence[Any]] = (
        itertools.chain.from_iterable(slices()) if len(records) > COPY_SLICE else records
    )
    try:
        await conn.copy_records_to_table(
            table, schema_name=schema_name, columns=columns, records=rows
        )
    except asyncpg.InternalClientError:
        _claim_pending_futures(conn)
        raise


def _claim_pending_futures(conn: asyncpg.Connection) -> None:
    """Mark the outcome of every future ``conn``'s protocol still holds as seen, when it comes.

    asyncpg keeps an operation's future in a private attribute of its (compiled) protocol;
    the garbage collector's view of the protocol's references is the only way to reach it.
    """
    protocol = getattr(conn, "_protocol", None)
    if protocol is None:
        return
    for held in gc.get_referents(protocol):
        if isinstance(held, asyncio.Future) and not held.done():
            held.add_done_callback(claim_outcome)


def claim_outcome(future: asyncio.Future[Any]) -> None:
    """Read a finished future's exception, so asyncio does not report it as never retrieved.

    A done callback for a future (or task) whose outcome nobody is going to read.
    """
    if not future.cancelled():
        future.exception()


# timestamptz on the wire: microseconds since PostgreSQL's epoch; int64 extremes are infinity.
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_PG_INFINITY = 2**63 - 1
_PG_NEGATIVE_INFINITY = -(2**63)


def encode_timestamptz(value: datetime) -> tuple[int]:
    """Return an aware datetime as asyncpg's tuple form of timestamptz: ``(microseconds,)``.

    A naive datetime raises TypeError (asyncpg's own encoder would read it as local time).
    """
    return ((value - PG_EPOCH) // _MICROSECOND,)


# Distinct timestamps remembered per connection: a log has one per second, so this is over an
# hour of traffic; clearing it when full costs a few re-encodings.
_ENCODED_MAX = 4096


class _EncodedTimestamps(dict[datetime, tuple[int]]):
    """Map datetimes to their wire form, encoding each distinct instant once."""

    def __missing__(self, value: datetime) -> tuple[int]:
        if len(self) >= _ENCODED_MAX:
            self.clear()
        encoded = self[value] = encode_timestamptz(value)
        return encoded


def timestamp_encoder() -> Callable[[datetime], tuple[int]]:
    """Return ``encode_timestamptz`` remembering its results, for one connection.

    A log line's timestamp has whole seconds, so a batch of 20,000 lines holds a few hundred
    distinct values: a hit is a dict lookup in C, not Python arithmetic (333 -> 74 ns per
    value on a slow day). Equal aware datetimes are the same instant, so they share an entry
    whatever their offsets; a naive one never equals an aware one and still raises.
    """
    return _EncodedTimestamps().__getitem__


def decode_timestamptz(value: tuple[int]) -> datetime:
    """Return the aware UTC datetime of a timestamptz in tuple form (infinity: max/min)."""
    (micros,) = value
    if micros == _PG_INFINITY:
        return datetime.max.replace(tzinfo=UTC)
    if micros == _PG_NEGATIVE_INFINITY:
        return datetime.min.replace(tzinfo=UTC)
    return PG_EPOCH + timedelta(microseconds=micros)


async def use_fast_timestamps(conn: asyncpg.Connection) -> None:
    """Encode timestamptz values on ``conn`` by plain arithmetic (for the COPY connection).

    asyncpg's built-in encoder compares every value with its two naive infinity sentinels, and
    comparing an aware datetime with a naive one is slow: the timestamp was about 60 % of the
    daemon's COPY encoding (bench/: 2.6 -> 1.7 µs per 13-column row on a slow day).
    """
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=timestamp_encoder(),
        decoder=decode_timestamptz,
        format="tuple",
    )


def lost_reason(exc: BaseException) -> str:
    """Return, on one line, why a connection was lost: the first error of ``exc``'s chain.

    asyncpg names what it was doing when it noticed (``cannot call Transaction.__aexit__():
    the underlying connection is closed``) and chains the reason below it (the server's
    ``terminating connection due to administrator command``, a broken pipe); a goodbye read
    while the session was idle surfaces as a broken protocol state (``cannot switch to state
    15; another operation (2) is in progress``).
    """
    chain = [exc]
    while len(chain) < 10:
        below = chain[-1].__cause__ or chain[-1].__context__
        if below is None or below in chain:
            break
        chain.append(below)
    first = chain[-1]
    lines = str(first).strip().splitlines()
    said = lines[0] if lines else type(first).__name__
    if isinstance(first, asyncpg.InternalClientError):
        return f"the server ended the session ({said})"
    return said


# Anything a database round trip can raise that the caller should survive and retry.
DB_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *CONNECTION_ERRORS)
