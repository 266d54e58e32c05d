"""Tests for puppylogd.systemd against a real Unix datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from puppylogd import systemd as sd
from puppylogd.systemd import Systemd, get_systemd


def _bind(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """Bind a datagram socket in tmp_path and point NOTIFY_SOCKET at it."""
    path = tmp_path / "notify"
    sock = _bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


@pytest.fixture(autouse=True)
def _fresh_singleton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sd, "_SYSTEMD", None)
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_systemd() -> Iterator[type[Systemd]]:
    """Construct Systemd instances that are closed after the test."""
    made: list[Systemd] = []

    class Closing(Systemd):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    yield Closing
    for systemd in made:
        systemd.close()


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def test_messages_arrive_in_order(
    notify_socket: socket.socket, make_systemd: type[Systemd]
) -> None:
    systemd = make_systemd()
    assert systemd.available
    systemd.ready()
    systemd.status("ingesting 3 files")
    systemd.watchdog_ping()
    systemd.stopping()
    received = [_recv(notify_socket) for _ in range(4)]
    assert received == ["READY=1", "STATUS=ingesting 3 files", "WATCHDOG=1", "STOPPING=1"]


def test_ready_with_status_and_reloading(
    notify_socket: socket.socket, make_systemd: type[Systemd]
) -> None:
    systemd = make_systemd()
    systemd.reloading()
    systemd.ready(status="reloaded")
    reloading = _recv(notify_socket).split("\n")
    assert reloading[0] == "RELOADING=1"
    assert reloading[1].startswith("MONOTONIC_USEC=")
    assert int(reloading[1].removeprefix("MONOTONIC_USEC=")) > 0
    assert _recv(notify_socket) == "READY=1\nSTATUS=reloaded"


def test_status_is_one_line_utf8(notify_socket: socket.socket, make_systemd: type[Systemd]) -> None:
    make_systemd().status("tailing /var/log/café\nINJECTED=1")
    assert _recv(notify_socket) == "STATUS=tailing /var/log/café INJECTED=1"


def test_status_masks_dsn_passwords(
    notify_socket: socket.socket, make_systemd: type[Systemd]
) -> None:
    make_systemd().status("waiting for postgresql://app:hunter2@db/logs")
    assert _recv(notify_socket) == "STATUS=waiting for postgresql://app:***@db/logs"


def test_notify_socket_removed_from_environment(
    notify_socket: socket.socket, make_systemd: type[Systemd]
) -> None:
    # Children (the embedded PostgreSQL server) must not inherit it.
    make_systemd()
    assert "NOTIFY_SOCKET" not in os.environ


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch, make_systemd: type[Systemd]) -> None:
    name = f"puppylog-test-{uuid.uuid4().hex}"
    sock = _bind("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        systemd = make_systemd()
        systemd.ready()
        systemd.watchdog_ping()
        assert [_recv(sock), _recv(sock)] == ["READY=1", "WATCHDOG=1"]
    finally:
        sock.close()


def test_reconnects_when_socket_is_recreated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_systemd: type[Systemd]
) -> None:
    path = tmp_path / "notify"
    first = _bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    systemd = make_systemd()
    first.close()
    path.unlink()
    second = _bind(str(path))
    try:
        systemd.watchdog_ping()
        assert _recv(second) == "WATCHDOG=1"
    finally:
        second.close()


def test_send_errors_never_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_systemd: type[Systemd]
) -> None:
    path = tmp_path / "notify"
    sock = _bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    systemd = make_systemd()
    sock.close()
    path.unlink()
    assert systemd.available
    systemd.ready()
    systemd.status("x")
    assert systemd.notify("WATCHDOG=1") is False


def test_unconnectable_socket_is_silent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_systemd: type[Systemd]
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing"))
    systemd = make_systemd()
    assert systemd.notify("READY=1") is False
    systemd.stopping()


def test_noop_without_notify_socket(
    monkeypatch: pytest.MonkeyPatch, make_systemd: type[Systemd]
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    systemd = make_systemd()
    assert not systemd.available
    assert systemd.notify("READY=1") is False
    systemd.ready()
    systemd.status("x")
    systemd.watchdog_ping()
    systemd.stopping()
    systemd.reloading()
    systemd.extend_timeout(5)


@pytest.mark.parametrize("value", ["", "x", "relative/path", "vsock:2:1234"])
def test_unusable_notify_socket_values(
    monkeypatch: pytest.MonkeyPatch, value: str, make_systemd: type[Systemd]
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert not make_systemd().available


def test_get_systemd_is_a_singleton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert get_systemd() is get_systemd()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("30000000", None, 30.0),
        ("30000000", "self", 30.0),
        ("1500000", "self", 1.5),
        ("30000000", "other", None),  # inherited by a child: not ours to ping
        ("0", None, None),
        ("-5", None, None),
        ("abc", None, None),
        ("30000000", "not-a-pid", None),
    ],
)
def test_watchdog_period(
    monkeypatch: pytest.MonkeyPatch,
    usec: str | None,
    pid: str | None,
    expected: float | None,
    make_systemd: type[Systemd],
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid == "self":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    elif pid == "other":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    elif pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    assert make_systemd().watchdog_period() == expected
