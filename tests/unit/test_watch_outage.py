"""What puppylog-watch says when the database cannot be used: a short status, a full line."""

from __future__ import annotations

import socket

import asyncpg

from puppylog_watch.outage import connect_failed, session_failed, short_path
from puppylog_watch.state import WatchState
from tests.unit.test_watch_render import alert_state, render

SOCKET_DSN = "postgresql://watcher@/puppylog?host=/run/postgresql"


def test_a_missing_socket_is_named_not_an_errno() -> None:
    outage = connect_failed(
        FileNotFoundError(2, "No such file or directory"), SOCKET_DSN, timeout=10
    )
    assert outage.status == "unreachable: no server at /run/…/.s.PGSQL.5432"
    assert outage.detail == (
        "database unreachable: no server at /run/postgresql/.s.PGSQL.5432 "
        "(FileNotFoundError: [Errno 2] No such file or directory); retrying"
    )
    embedded = "postgresql://puppylog@/puppylog?host=/var/lib/puppylog/run&port=5433"
    assert connect_failed(FileNotFoundError(2, "x"), embedded, timeout=10).status == (
        "unreachable: no server at /var/…/.s.PGSQL.5433"
    )
    assert short_path("/tmp/.s.PGSQL.5432") == "/tmp/.s.PGSQL.5432"  # short: kept whole


def test_each_kind_of_outage_says_what_happened_in_a_few_words() -> None:
    tcp = "postgresql://watcher@db.example.com:6432/puppylog"

    def status(exc: BaseException, dsn: str = tcp) -> str:
        return connect_failed(exc, dsn, timeout=10).status

    refused = ConnectionRefusedError(111, "Connect call failed ('10.1.2.3', 6432)")
    assert status(refused) == "unreachable: connection refused at db.example.com:6432"
    unknown = socket.gaierror(-2, "Name or service not known")
    assert status(unknown) == "unreachable: unknown host db.example.com"
    assert status(TimeoutError()) == "unreachable: timed out after 10 s"
    password = asyncpg.InvalidPasswordError('password authentication failed for user "bob"')
    assert status(password) == "refused: authentication failed for user bob"
    starting = asyncpg.CannotConnectNowError("the database system is starting up")
    assert status(starting) == "unavailable: the database system is starting up"
    closed = asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    lost = session_failed(closed, lost=True, probe_timeout=5)
    assert lost.status == "connection lost: the server closed it"
    assert "ConnectionDoesNotExistError" in lost.detail
    assert session_failed(TimeoutError(), lost=True, probe_timeout=5).status == (
        "connection lost: no answer within 5 s"
    )
    denied = asyncpg.InsufficientPrivilegeError("permission denied for schema puppylog")
    assert session_failed(denied, lost=False, probe_timeout=5).status == (
        "database error: permission denied for schema puppylog"
    )


def test_the_outage_fits_an_80_column_header_with_the_newest_bucket_gone() -> None:
    outage = connect_failed(FileNotFoundError(2, "No such file"), SOCKET_DSN, timeout=10)
    for state in (alert_state(), WatchState(group="default")):
        state.connected, state.status = False, outage.status
        first = render(state, 80, 24).splitlines()[0].rstrip()
        assert first == (
            " puppylog  group default  ● unreachable: no server at /run/…/.s.PGSQL.5432"
        )
