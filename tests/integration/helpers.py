"""Shared helpers for integration tests that run the real daemon against real PostgreSQL.

Everything here is synchronous, so tests can be plain functions:

* :func:`clf_line` / :func:`clf_lines` -- Common Log Format lines whose path carries a
  unique id (``/pages/id-<i>``), so a duplicate shows as ``count(*) > count(DISTINCT path)``.
* :func:`append` -- append bytes to a log file (flushed, so the daemon sees them).
* :func:`daemon_cmd`, :func:`run_once`, :func:`start_daemon` -- run ``python -m puppylogd``
  with ``--dsn`` and any setting as a keyword (``batch_lines=500`` -> ``--batch-lines 500``,
  ``once=True`` -> ``--once``).  The child's environment has every ``PUPPYLOG_*`` variable
  removed, then ``env`` added.
* :class:`DaemonProcess` -- the ``Popen`` returned by :func:`start_daemon`: its output goes
  to a file (``output()``); ``stop()`` sends SIGTERM and waits; ``kill9()``.
* :func:`wait_for` -- poll a predicate with a deadline; fails the test with a message.
* :func:`journal_noise` -- the lines of a daemon's output that are not its own plain events.
* :func:`query_val`, :func:`counts`, :func:`reject_reasons` -- read the database.
* :func:`end_backend` -- ``pg_terminate_backend`` one backend and wait until it is gone.
* :func:`migrate_up_to` -- rebuild the schema as an older release left it (upgrade tests).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import asyncpg

from puppylogd.migrations import apply_migrations, migrations_dir
from tests.pg import run_async

T = TypeVar("T")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# -- log lines ---------------------------------------------------------------------------


def clf_time(ts: datetime) -> str:
    """Format a timestamp the way CLF writes it (``28/Nov/2026:04:30:00 +0000``)."""
    ts = ts.astimezone(UTC)
    return f"{ts.day:02d}/{_MONTHS[ts.month - 1]}/{ts.year}:{ts:%H:%M:%S} +0000"


def clf_line(
    i: int,
    ts: datetime | None = None,
    *,
    host: str = "10.0.0.1",
    user: str = "-",
    method: str = "GET",
    section: str = "pages",
    status: int = 200,
    size: int | None = 123,
) -> bytes:
    """Return one valid CLF line (with ``\\n``) whose path ``/<section>/id-<i>`` is unique.

    ``ts`` defaults to now (UTC); the default retention rejects lines older than 7 days.
    """
    when = clf_time(ts if ts is not None else datetime.now(UTC))
    size_text = "-" if size is None else str(size)
    return (
        f'{host} - {user} [{when}] "{method} /{section}/id-{i} HTTP/1.1" {status} {size_text}\n'
    ).encode()


def clf_lines(start: int, count: int, ts: datetime | None = None, **kwargs: Any) -> bytes:
    """Return ``count`` lines with ids ``start .. start+count-1`` (all at ``ts``, default now)."""
    when = ts if ts is not None else datetime.now(UTC)
    return b"".join(clf_line(i, when, **kwargs) for i in range(start, start + count))


def recent(seconds_ago: float = 60.0) -> datetime:
    """Return a UTC timestamp ``seconds_ago`` seconds before now (whole seconds)."""
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).replace(microsecond=0)


def append(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (created if missing) and flush it."""
    with open(path, "ab") as f:
        f.write(data)
        f.flush()


# -- running the daemon ------------------------------------------------------------------


def settings_flags(settings: Mapping[str, Any]) -> list[str]:
    """Turn keyword settings into flags: True -> ``--name``; False/None are left out."""
    flags: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            flags.append(flag)
        else:
            flags += [flag, str(value)]
    return flags


def daemon_cmd(dsn: str | None, *files: Path | str, **settings: Any) -> list[str]:
    """Return the command line running the daemon (``run``) on ``files`` with ``settings``."""
    cmd = [sys.executable, "-m", "puppylogd", "run"]
    if dsn is not None:
        cmd += ["--dsn", dsn]
    for f in files:
        cmd += ["--log-file", str(f)]
    return cmd + settings_flags(settings)


def daemon_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the child environment: ours without ``PUPPYLOG_*``, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUPPYLOG_")}
    base.pop("NOTIFY_SOCKET", None)
    base.setdefault("PUPPYLOG_LOG_FORMAT", "json")
    base.update(env or {})
    return base


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m puppylogd ARGS`` to completion and return its result (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "puppylogd", *args],
        env=daemon_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_once(
    dsn: str,
    *files: Path | str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    check: bool = True,
    **settings: Any,
) -> subprocess.CompletedProcess[str]:
    """Run ``puppylogd --once`` on ``files``; with ``check``, fail the test unless it exits 0."""
    settings["once"] = True
    result = subprocess.run(
        daemon_cmd(dsn, *files, **settings),
        env=daemon_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, (
            f"puppylogd --once exited {result.returncode}\n{result.stderr}\n{result.stdout}"
        )
    return result


class DaemonProcess(subprocess.Popen[bytes]):
    """A running ``puppylogd``; stdout and stderr go to ``log_path``."""

    log_path: Path
    # A log file made for it in the temporary directory: removed when the test passes (kept
    # for a look when it fails).
    own_log: bool = False

    def output(self) -> str:
        """Return what the daemon has logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def assert_running(self) -> None:
        """Fail the test (with the daemon's log) if the daemon has exited."""
        code = self.poll()
        assert code is None, f"daemon exited with {code}:\n{self.output()[-4000:]}"

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the daemon and wait for it; return its exit code (kill -9 on timeout)."""
        if self.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                raise
        return int(self.returncode)

    def kill9(self) -> None:
        """SIGKILL the daemon and reap it."""
        if self.poll() is None:
            self.kill()
        self.wait(10)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.poll() is None:
                self.kill9()
        finally:
            super().__exit__(exc_type, exc, tb)
            if self.own_log and exc_type is None:
                self.log_path.unlink(missing_ok=True)


def start_daemon(
    dsn: str,
    *files: Path | str,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    **settings: Any,
) -> DaemonProcess:
    """Start ``puppylogd run`` on ``files`` in the background; use it as a context manager.

    Leaving the ``with`` block kills it if still running.  Call ``stop()`` for a clean stop.
    """
    owned = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="puppylogd-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    out = open(log_path, "wb")  # noqa: SIM115 -- the child owns it; closed right after spawn
    try:
        proc = DaemonProcess(
            daemon_cmd(dsn, *files, **settings),
            env=daemon_env(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        out.close()
    proc.log_path = log_path
    proc.own_log = owned
    return proc


def journal_noise(output: str) -> list[str]:
    """Return the lines of a daemon's output that are not one plain event of its own.

    Tracebacks, asyncio's "never retrieved" and "was destroyed" reports, other libraries'
    warnings and error-level lines are noise when every fault was recovered from; so is an
    error given as asyncpg's account of what it was doing (``cannot call
    Transaction.__aexit__()``) instead of the reason (``db.lost_reason``).
    """
    noise = []
    for line in output.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            noise.append(line)
            continue
        if (
            not isinstance(event, dict)
            or not str(event.get("logger", "")).startswith("puppylogd")
            or "exception" in event
            or event.get("level") in ("error", "critical")
            or "__aexit__" in str(event.get("error", ""))
        ):
            noise.append(line)
    return noise


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout} s waiting for: {text}")
        time.sleep(interval)


# -- reading the database ----------------------------------------------------------------


def query_val(dsn: str, sql: str, *args: Any) -> Any:
    """Run one query on a fresh connection and return its first value."""

    async def go() -> Any:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return run_async(go)


def query_rows(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one query on a fresh connection and return all its rows."""

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return run_async(go)


def end_backend(dsn: str, pid: int) -> bool:
    """Terminate backend ``pid`` and wait until it has exited; False if it was not there.

    Once it has exited, its goodbye (``FATAL: terminating connection``) and the close are on
    its client's socket.
    """
    if not query_val(dsn, "SELECT pg_terminate_backend($1)", pid):
        return False
    wait_for(
        lambda: not query_val(dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid),
        10,
        message=f"backend {pid} gone",
    )
    return True


@dataclass(frozen=True, slots=True)
class Counts:
    """What the database holds: records, distinct paths, rejected lines and stream counters."""

    rows: int
    distinct_paths: int
    rejected_lines: int
    lines_stored: int
    lines_rejected: int

    @property
    def duplicates(self) -> int:
        """Records whose unique path was stored more than once."""
        return self.rows - self.distinct_paths


COUNTS_SQL = """
SELECT (SELECT count(*) FROM puppylog.log_records) AS rows,
       (SELECT count(DISTINCT path) FROM puppylog.log_records) AS distinct_paths,
       (SELECT count(*) FROM puppylog.rejected_lines) AS rejected_lines,
       (SELECT coalesce(sum(lines_stored), 0) FROM puppylog.log_streams) AS lines_stored,
       (SELECT coalesce(sum(lines_rejected), 0) FROM puppylog.log_streams) AS lines_rejected
"""


def counts(dsn: str) -> Counts:
    """Return the record and rejection counts of the database at ``dsn``."""
    (row,) = query_rows(dsn, COUNTS_SQL)
    return Counts(*(int(v) for v in row.values()))


def count_rows(dsn: str) -> int:
    """Return ``count(*)`` of ``puppylog.log_records``."""
    return int(query_val(dsn, "SELECT count(*) FROM puppylog.log_records"))


def reject_reasons(dsn: str) -> dict[str, int]:
    """Return how many rejected lines each reason has."""
    rows = query_rows(
        dsn, "SELECT reason, count(*) AS n FROM puppylog.rejected_lines GROUP BY reason"
    )
    return {str(r["reason"]): int(r["n"]) for r in rows}


async def migrate_up_to(conn: asyncpg.Connection, version: int, folder: Path) -> list[str]:
    """Drop the schema and apply the shipped migrations up to ``version`` only.

    The files are copied to ``folder`` (a scratch directory) and applied from there; returns
    the labels applied. ``apply_migrations(conn)`` then upgrades to the shipped head.
    """
    await conn.execute("DROP SCHEMA puppylog CASCADE")
    folder.mkdir(exist_ok=True)
    for path in sorted(migrations_dir().glob("[0-9][0-9][0-9][0-9]_*.sql")):
        if int(path.name[:4]) <= version:
            shutil.copy(path, folder / path.name)
    return await apply_migrations(conn, folder)


def catches_sighup(pid: int) -> bool:
    """Return whether process ``pid`` has a handler for SIGHUP (``SigCgt`` in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text("ascii").splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    raise AssertionError("no SigCgt line")


def loaded(pid: int, library: str) -> bool:
    """Return whether process ``pid`` has ``library`` mapped (its import has begun)."""
    return library in Path(f"/proc/{pid}/maps").read_text("ascii")


def signal_at(pid: int, moment: Callable[[int], bool], sig: int, timeout: float = 30) -> None:
    """Send ``sig`` to ``pid`` as soon as ``moment(pid)`` holds.

    The process is stopped while ``moment`` looks at it, so what /proc shows is one moment's
    state, and the signal lands in that very state.
    """
    deadline = time.monotonic() + timeout
    while True:
        os.kill(pid, signal.SIGSTOP)
        try:
            if moment(pid):
                os.kill(pid, sig)
                return
        finally:
            os.kill(pid, signal.SIGCONT)
        if time.monotonic() >= deadline:
            raise AssertionError(f"the moment for signal {sig} never came")
        time.sleep(0.001)
