"""Connect to PostgreSQL and load the named queries kept in ``puppylogd/sql/*.sql``."""

from __future__ import annotations

import functools
from importlib import resources

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
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
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


# Anything a database round trip can raise that the caller should survive and retry.
DB_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *CONNECTION_ERRORS)
