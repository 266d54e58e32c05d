"""The connection helpers that need no server."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from puppylogd import db
from puppylogd.db import (
    decode_timestamptz,
    encode_timestamptz,
    timestamp_encoder,
    widen_send_buffer,
)


class _Transport:
    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None


class _Conn:
    def __init__(self, sock: socket.socket | None) -> None:
        self._transport = _Transport(sock)


def test_tcp_buffers_are_left_to_the_kernel() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        assert widen_send_buffer(_Conn(sock)) is None
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == before


def test_unix_socket_buffer_is_widened() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        before = a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        granted = widen_send_buffer(_Conn(a), size=before)  # within any kernel's cap
        assert granted == a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        assert granted == 2 * before  # Linux doubles the size asked for (bookkeeping)


def test_no_socket_no_change() -> None:
    assert widen_send_buffer(_Conn(None)) is None
    assert widen_send_buffer(object()) is None


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
    st.integers(min_value=-23 * 60, max_value=23 * 60),
)
def test_timestamps_round_trip_as_microseconds_since_2000(when: datetime, offset: int) -> None:
    local = when.astimezone(timezone(timedelta(minutes=offset)))  # any offset, same instant
    (micros,) = encode_timestamptz(local)
    since = when.replace(tzinfo=None) - datetime(2000, 1, 1)
    assert micros == (since.days * 86400 + since.seconds) * 10**6 + since.microseconds
    assert decode_timestamptz((micros,)) == when


def test_naive_timestamps_are_refused_and_infinity_is_decoded() -> None:
    with pytest.raises(TypeError):
        encode_timestamptz(datetime(2026, 1, 1))
    assert decode_timestamptz((2**63 - 1,)) == datetime.max.replace(tzinfo=UTC)
    assert decode_timestamptz((-(2**63),)) == datetime.min.replace(tzinfo=UTC)


def test_remembered_encodings_equal_fresh_ones_and_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(db, "_ENCODED_MAX", 50)
    encode = timestamp_encoder()
    start = datetime(2026, 11, 29, 23, 59, 30, tzinfo=UTC)
    for second in [*range(120), *range(120)]:  # twice: hits, misses and clearing
        when = start + timedelta(seconds=second)
        for offset in (0, 330, -720):  # the same instant written with other offsets
            local = when.astimezone(timezone(timedelta(minutes=offset)))
            assert encode(local) == encode_timestamptz(local) == encode_timestamptz(when)
    remembered = encode.__self__  # type: ignore[attr-defined]
    assert 0 < len(remembered) <= 50
    with pytest.raises(TypeError):
        encode(datetime(2026, 1, 1))
    assert datetime(2026, 1, 1) not in remembered


def _budget_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "max_connections": 100,
        "reserved": 3,
        "role_name": "web1",
        "role_limit": -1,
        "database_name": "puppylog",
        "database_limit": -1,
        "used": 10,
        "used_by_role": 2,
        "used_in_database": 5,
    }
    row.update(changes)
    return row


def test_budget_without_role_or_database_limits_is_the_servers_minus_reserved_slots() -> None:
    budget = db.budget_from_row(_budget_row())
    # 97 slots for this role, one of them this session; 10 sessions in use now.
    assert budget == db.ConnectionBudget(96, 87, "max_connections = 100, 3 of them reserved")
    unreserved = db.budget_from_row(_budget_row(reserved=0))
    assert (unreserved.at_most, unreserved.now) == (99, 90)
    assert unreserved.limit == "max_connections = 100"


def test_budget_takes_the_tightest_limit_for_at_most_and_for_now() -> None:
    role = db.budget_from_row(_budget_row(role_limit=4))
    assert role == db.ConnectionBudget(3, 2, "role web1 has CONNECTION LIMIT 4")
    database = db.budget_from_row(_budget_row(database_limit=8, role_limit=20))
    assert database == db.ConnectionBudget(7, 3, "database puppylog has CONNECTION LIMIT 8")
    # The server is nearly full: the role's limit bounds what is possible, the server's
    # sessions what is free now.
    busy = db.budget_from_row(_budget_row(role_limit=20, used=95))
    assert busy == db.ConnectionBudget(19, 2, "role web1 has CONNECTION LIMIT 20")


def test_budget_never_goes_negative() -> None:
    full = db.budget_from_row(_budget_row(role_limit=0, used_by_role=1))
    assert (full.at_most, full.now) == (0, 0)


def test_a_lost_connection_is_said_with_the_first_error_of_its_chain() -> None:
    # What asyncpg raises as a batch's transaction ends on a terminated backend.
    server = asyncpg.AdminShutdownError("terminating connection due to administrator command")
    lost = asyncpg.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation: terminating connection due to "
        "administrator command"
    )
    lost.__cause__ = server
    noticed = asyncpg.InterfaceError(
        "cannot call Transaction.__aexit__(): the underlying connection is closed"
    )
    noticed.__context__ = lost
    assert db.lost_reason(noticed) == "terminating connection due to administrator command"
    sent = asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    sent.__cause__ = BrokenPipeError(32, "Broken pipe")
    assert db.lost_reason(sent) == "[Errno 32] Broken pipe"
    assert db.lost_reason(ConnectionResetError()) == "ConnectionResetError"


def test_a_goodbye_read_while_idle_is_said_as_the_end_of_the_session() -> None:
    broken = asyncpg.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress"
    )
    assert db.lost_reason(broken) == (
        "the server ended the session "
        "(cannot switch to state 15; another operation (2) is in progress)"
    )


def test_a_loop_in_the_chain_ends_the_walk() -> None:
    first, second = ConnectionError("first"), ConnectionError("second")
    first.__context__, second.__context__ = second, first
    assert db.lost_reason(first) == "second"
