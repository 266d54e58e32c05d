"""Say why the database cannot be used: briefly for the live view's header, in full for stderr.

An exception's own text is a poor status line: ``FileNotFoundError: [Errno 2] No such file
or directory`` does not say which socket was missing, and it is too long for an 80-column
header. Each outage is described twice: a short status (the header, after "●") and a full
line naming the whole address and the error as raised (stderr, once).
"""

from __future__ import annotations

import inspect
import socket
from dataclasses import dataclass

import asyncpg

__all__ = ["Outage", "connect_failed", "session_failed", "short_path"]

# Longer socket paths are shortened in the header to their first directory and file name.
_PATH_KEEP = 24


@dataclass(frozen=True, slots=True)
class Outage:
    """Why the watch is not live: ``status`` fits the header, ``detail`` is for stderr."""

    status: str
    detail: str


def short_path(path: str) -> str:
    """Return a long socket path as ``/run/…/.s.PGSQL.5432`` (first directory, file name)."""
    parts = path.split("/")
    if len(path) <= _PATH_KEEP or len(parts) < 4 or parts[0]:
        return path
    return f"/{parts[1]}/…/{parts[-1]}"


def _addresses(dsn: str) -> list[str | tuple[str, int]]:
    """Return the addresses asyncpg tries for ``dsn``, in order; [] if it cannot be told.

    asyncpg's own parser knows its defaults (PGHOST, the usual socket directories, then
    localhost); it is private, so any change in it only costs the address in the message.
    """
    try:
        from asyncpg import connect_utils

        parse = connect_utils._parse_connect_dsn_and_args  # type: ignore[attr-defined]
        kwargs: dict[str, object] = dict.fromkeys(inspect.signature(parse).parameters)
        kwargs["dsn"] = dsn
        addrs, _params = parse(**kwargs)
        return list(addrs)
    except Exception:
        return []


def _socket(dsn: str) -> str | None:
    paths = [a for a in _addresses(dsn) if isinstance(a, str)]
    return paths[-1] if paths else None


def _host_port(dsn: str) -> str | None:
    hosts = [a for a in _addresses(dsn) if not isinstance(a, str)]
    if not hosts:
        return None
    host, port = hosts[-1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _raw(exc: BaseException) -> str:
    """Return the error as raised, on one line: ``FileNotFoundError: [Errno 2] ...``."""
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text.splitlines()[0]}" if text else name


def _unreachable(exc: BaseException, dsn: str, timeout: float) -> tuple[str, str]:
    """Return (short, full) reasons why no server answered at ``dsn``."""
    if isinstance(exc, TimeoutError):
        where = _host_port(dsn) or _socket(dsn)
        reason = f"timed out after {timeout:g} s"
        return reason, f"{reason}{f' connecting to {where}' if where else ''}"
    if isinstance(exc, FileNotFoundError):
        path = _socket(dsn)
        if path is None:
            return "no server socket", "no server socket"
        return f"no server at {short_path(path)}", f"no server at {path}"
    if isinstance(exc, socket.gaierror):
        host = (_host_port(dsn) or "").rpartition(":")[0] or "the host"
        return f"unknown host {host}", f"cannot resolve host {host}"
    if isinstance(exc, ConnectionRefusedError):
        where = _host_port(dsn)
        reason = f"connection refused at {where}" if where else "connection refused"
        return reason, reason
    if isinstance(exc, PermissionError):
        path = _socket(dsn)
        if path is not None:
            return f"no access to {short_path(path)}", f"no access to {path}"
    if isinstance(exc, OSError) and exc.strerror:
        where = _host_port(dsn) or _socket(dsn)
        reason = exc.strerror[0].lower() + exc.strerror[1:]
        return reason, f"{reason}{f' at {where}' if where else ''}"
    return _first_line(exc), _first_line(exc)


def _refusal(exc: asyncpg.PostgresError) -> str:
    """Return a short reason the server gave for refusing a session."""
    text = _first_line(exc)
    if isinstance(exc, asyncpg.InvalidPasswordError):
        user = text.rpartition(" for user ")[2].strip('"')
        return f"authentication failed for user {user}" if user else "authentication failed"
    if text.startswith("no pg_hba.conf entry"):
        return "no pg_hba.conf entry allows it"
    return text


def connect_failed(exc: BaseException, dsn: str, *, timeout: float) -> Outage:
    """Describe a failed connection attempt (no server, a refusal, a server starting...)."""
    if isinstance(exc, asyncpg.CannotConnectNowError | asyncpg.TooManyConnectionsError):
        # The server answered: it is starting, stopping or full (asyncpg: PostgresError).
        reason = _first_line(exc)
        return Outage(f"unavailable: {reason}", f"database unavailable: {reason}; retrying")
    if isinstance(exc, asyncpg.PostgresError):
        reason = _refusal(exc)
        return Outage(
            f"refused: {reason}",
            f"database refused the connection: {reason} ({_raw(exc)}); retrying",
        )
    short, full = _unreachable(exc, dsn, timeout)
    return Outage(f"unreachable: {short}", f"database unreachable: {full} ({_raw(exc)}); retrying")


def session_failed(exc: BaseException, *, lost: bool, probe_timeout: float) -> Outage:
    """Describe why a live session ended: the connection was ``lost``, or a query failed."""
    if not lost:
        return Outage(
            f"database error: {_first_line(exc)}", f"database error: {_raw(exc)}; reconnecting"
        )
    if isinstance(exc, TimeoutError):
        reason = f"no answer within {probe_timeout:g} s"
    elif isinstance(exc, asyncpg.CrashShutdownError):
        reason = "the server crashed"
    elif isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror[0].lower() + exc.strerror[1:]  # connection reset by peer, ...
    elif isinstance(
        exc, ConnectionError | asyncpg.ConnectionDoesNotExistError | asyncpg.AdminShutdownError
    ):
        reason = "the server closed it"
    else:
        reason = _first_line(exc)
    return Outage(
        f"connection lost: {reason}", f"connection lost: {reason} ({_raw(exc)}); reconnecting"
    )
