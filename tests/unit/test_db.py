"""The connection helpers that need no server."""

from __future__ import annotations

import socket
from typing import Any

from puppylogd.db import widen_send_buffer


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
