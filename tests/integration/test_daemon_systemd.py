"""puppylogd under a stand-in systemd: a real notify socket, real signals, real PostgreSQL.

The daemon runs as ``python -m puppylogd`` in a subprocess. A Unix datagram socket bound by
the test is its ``NOTIFY_SOCKET``; ``WATCHDOG_USEC`` turns the watchdog on (``WATCHDOG_PID``
is left unset, which sd_watchdog_enabled(3) accepts). Its stderr goes to a file and is
checked as JSON lines. Helpers here are shared by the other daemon tests.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from puppylogd import systemd as sd
from puppylogd.config import Settings
from puppylogd.daemon import Daemon
from puppylogd.logs import configure_logging
from tests import pg
from tests.conftest import ClusterFactory

T = TypeVar("T")

PASSWORD = "s3cret-Pw"
WATCHDOG_S = 2.0
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
STABLE_KEYS = ["timestamp", "level", "logger", "event"]


# -- helpers shared with test_reload.py and test_daemon_embedded.py ------------------------


def lines(start: int, count: int, tag: str = "p") -> bytes:
    """Return ``count`` CLF lines stamped now, with unique paths ``/<tag>/id-<i>``."""
    now = datetime.now(UTC)
    when = f"{now.day:02d}/{_MONTHS[now.month - 1]}/{now.year}:{now:%H:%M:%S} +0000"
    return b"".join(
        f'10.0.0.1 - - [{when}] "GET /{tag}/id-{i} HTTP/1.1" 200 123\n'.encode()
        for i in range(start, start + count)
    )


def append(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (the daemon sees it at once)."""
    with path.open("ab") as f:
        f.write(data)


def wait_for(what: str, predicate: Callable[[], T], timeout: float = 20.0) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def query(dsn: str, sql: str, *args: Any) -> Any:
    """Run one query on ``dsn`` and return its single value."""

    async def run() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return pg.run_async(run)


def stored(dsn: str, tag: str | None = None) -> tuple[int, int]:
    """Return (rows, distinct paths) in log_records, optionally only under ``/<tag>/``."""

    async def run() -> tuple[int, int]:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT path) AS d FROM puppylog.log_records"
                " WHERE $1::text IS NULL OR path LIKE '/' || $1 || '/%'",
                tag,
            )
            assert row is not None
            return int(row["n"]), int(row["d"])
        finally:
            await conn.close()

    return pg.run_async(run)


def with_password(dsn: str, password: str = PASSWORD) -> str:
    """Return ``postgresql://user:password@...`` for ``postgresql://user@...``."""
    scheme, rest = dsn.split("://", 1)
    user, tail = rest.split("@", 1)
    return f"{scheme}://{user}:{password}@{tail}"


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket; records every message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode("utf-8")))

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()

    def snapshot(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.messages)

    def assignments(self) -> list[tuple[float, str]]:
        """Return every ``KEY=VALUE`` line received, in order (a datagram may hold several)."""
        return [(t, line) for t, msg in self.snapshot() for line in msg.split("\n") if line]

    def times(self, assignment: str) -> list[float]:
        """Return when each datagram containing ``assignment`` (e.g. ``READY=1``) arrived."""
        return [t for t, line in self.assignments() if line == assignment]

    def wait(self, assignment: str, after: float = 0.0, timeout: float = 20.0) -> float:
        """Wait for ``assignment`` received after monotonic time ``after``; return its time."""

        def found() -> float | None:
            later = [t for t in self.times(assignment) if t > after]
            return later[0] if later else None

        result = wait_for(assignment, found, timeout)
        assert result is not None
        return result


class DaemonProc:
    """A ``python -m puppylogd`` subprocess whose output goes to a file."""

    def __init__(
        self,
        args: list[str],
        workdir: Path,
        *,
        notify: NotifySocket | None = None,
        watchdog_s: float | None = WATCHDOG_S,
        env: Mapping[str, str] | None = None,
    ) -> None:
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("PUPPYLOG_")}
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
            child_env.pop(name, None)
        if notify is not None:
            child_env["NOTIFY_SOCKET"] = str(notify.path)
        if watchdog_s is not None:
            child_env["WATCHDOG_USEC"] = str(int(watchdog_s * 1_000_000))
        child_env.update(env or {})
        self.out_path = workdir / f"daemon-{time.monotonic_ns()}.err"
        with self.out_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "puppylogd", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """Return the JSON log lines (failing on any line that is not one JSON object)."""
        parsed = []
        for line in self.output().splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                pytest.fail(f"not a JSON log line: {line!r}\n--- output:\n{self.output()}")
            assert isinstance(obj, dict), line
            parsed.append(obj)
        return parsed

    def event_names(self) -> list[str]:
        return [str(e["event"]) for e in self.events()]

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and return the exit code (failing if it takes over ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"daemon did not exit within {timeout}s\n--- output:\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def workdir(pg_tmp_dir: Path) -> Path:
    """A directory for log files, the notify socket and the daemon's output."""
    return pg_tmp_dir


@pytest.fixture
def notify(workdir: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(workdir / "notify.sock")
    yield sock
    sock.close()


@pytest.fixture
def spawn(workdir: Path) -> Iterator[Callable[..., DaemonProc]]:
    """Start daemons (``spawn(args, notify=..., env=...)``); any still running are killed."""
    started: list[DaemonProc] = []

    def factory(args: list[str], **kwargs: Any) -> DaemonProc:
        daemon = DaemonProc(args, workdir, **kwargs)
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        daemon.kill()


@pytest.fixture
def empty_db(pg_server: pg.PgServer) -> Iterator[str]:
    """Yield the DSN of a new database without puppylog's schema (the daemon migrates it)."""
    name = pg.unique_name("e")
    admin = pg_server.admin_dsn
    pg.run_async(lambda: pg.create_database(admin, name))
    try:
        yield pg_server.dsn(name)
    finally:
        pg.run_async(lambda: pg.drop_database(admin, name))


def assert_clean_json_logs(daemon: DaemonProc, secret: str = PASSWORD) -> list[dict[str, Any]]:
    """Every output line is one JSON object with the stable keys first; no secret anywhere."""
    text = daemon.output()
    assert secret not in text
    events = daemon.events()
    assert events
    for event in events:
        assert list(event)[:4] == STABLE_KEYS, event
        assert event["level"] in ("debug", "info", "warning", "error", "critical"), event
    return events


# -- tests ----------------------------------------------------------------------------------


def test_ready_status_watchdog_stopping_and_last_batch(
    empty_db: str, workdir: Path, notify: NotifySocket, spawn: Callable[..., DaemonProc]
) -> None:
    """READY once migrated and tailing; STATUS and WATCHDOG; STOPPING; the last batch kept."""
    first, second = workdir / "a.log", workdir / "b.log"
    append(first, lines(0, 100))
    dsn = with_password(empty_db)  # trust auth ignores it; it must never be shown
    daemon = spawn(
        ["--dsn", dsn, "--log-file", str(first), "--log-file", str(second), "--batch-ms", "1500"],
        notify=notify,
    )
    ready = notify.wait("READY=1", timeout=30)
    # At READY the schema is there and every file's stream is registered (tailer open).
    assert query(empty_db, "SELECT to_regclass('puppylog.log_records') IS NOT NULL")
    assert query(empty_db, "SELECT count(*) FROM puppylog.log_streams") == 2
    wait_for("the first 100 lines", lambda: stored(empty_db) == (100, 100))
    watchdog = notify.wait("WATCHDOG=1", after=ready)
    status = [t for t, a in notify.assignments() if a.startswith("STATUS=") and t > ready]
    assert status
    assert any("lines/s" in a for _, a in notify.assignments())

    # Lines written just before SIGTERM are read into the batch in hand (batch_ms 1.5 s
    # holds it back); stopping must commit them.
    append(first, lines(100, 40))
    append(second, lines(1000, 10))
    time.sleep(0.5)
    before_stop = time.monotonic()
    assert daemon.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - before_stop < 8
    assert stored(empty_db) == (150, 150)

    stopping = notify.wait("STOPPING=1", timeout=1)
    assert ready < watchdog < stopping
    assert min(status) < stopping
    assert notify.times("READY=1") == [ready]
    for _, assignment in notify.assignments():
        assert PASSWORD not in assignment
    events = assert_clean_json_logs(daemon)
    names = [e["event"] for e in events]
    assert names.index("ready") < names.index("stopping") < names.index("stopped")
    assert events[-1]["event"] == "stopped" and events[-1]["exit_code"] == 0
    # Every stream said goodbye, so it no longer holds the group's time back.
    assert query(empty_db, "SELECT bool_and(stopped) FROM puppylog.log_streams")


def test_hung_database_stops_the_watchdog_until_it_recovers(
    make_cluster: ClusterFactory,
    workdir: Path,
    notify: NotifySocket,
    spawn: Callable[..., DaemonProc],
) -> None:
    """A database that hangs (SIGSTOP, not down) stops WATCHDOG=1; it resumes after SIGCONT."""
    cluster = make_cluster()
    log_file = workdir / "access.log"
    append(log_file, lines(0, 10))
    daemon = spawn(["--dsn", cluster.dsn(), "--log-file", str(log_file)], notify=notify)
    ready = notify.wait("READY=1", timeout=30)
    notify.wait("WATCHDOG=1", after=ready)
    wait_for("the first lines", lambda: stored(cluster.dsn()) == (10, 10))

    cluster.pause()
    try:
        paused = time.monotonic()
        time.sleep(2 * WATCHDOG_S + 1.5)
        pings = [t for t in notify.times("WATCHDOG=1") if t > paused]
        # Systemd would kill us after one period without a ping; we stop within two.
        assert all(t < paused + 2 * WATCHDOG_S for t in pings), [t - paused for t in pings]
        statuses = [a for t, a in notify.assignments() if t > paused and a.startswith("STATUS=")]
        assert any("not responding" in s for s in statuses), statuses
        assert daemon.proc.poll() is None
        append(log_file, lines(10, 5))
    finally:
        cluster.resume()
    resumed = time.monotonic()
    notify.wait("WATCHDOG=1", after=resumed, timeout=3 * WATCHDOG_S)
    wait_for("lines written during the hang", lambda: stored(cluster.dsn()) == (15, 15))
    assert daemon.stop() == 0
    assert_clean_json_logs(daemon)


def test_unopenable_file_is_an_error_line_and_others_carry_on(
    db_dsn: str, workdir: Path, notify: NotifySocket, spawn: Callable[..., DaemonProc]
) -> None:
    """A file that cannot be opened is logged as an error and retried; others keep going."""
    good, bad = workdir / "good.log", workdir / "bad.log"
    append(good, lines(0, 20, tag="good"))
    bad.symlink_to(bad)  # ELOOP on open, for root too (chmod 000 would not stop root)
    daemon = spawn(
        ["--dsn", db_dsn, "--log-file", str(good), "--log-file", str(bad)],
        notify=notify,
        watchdog_s=1.5,  # retries the bad file every 0.5 s
    )
    ready = notify.wait("READY=1", timeout=30)
    wait_for("the good file's lines", lambda: stored(db_dsn, "good") == (20, 20))
    errors = [e for e in daemon.events() if e["level"] == "error"]
    assert len(errors) == 1, errors
    assert errors[0]["path"] == str(bad)
    assert "symbolic links" in errors[0]["error"]
    # Still healthy: the watchdog is fed and more lines of the good file arrive.
    notify.wait("WATCHDOG=1", after=ready + WATCHDOG_S)
    append(good, lines(20, 5, tag="good"))
    wait_for("more good lines", lambda: stored(db_dsn, "good") == (25, 25))

    # Fixed: the file is picked up without a restart.
    bad.unlink()
    append(bad, lines(0, 7, tag="bad"))
    wait_for("the fixed file's lines", lambda: stored(db_dsn, "bad") == (7, 7))
    assert "log file can be opened now" in daemon.event_names()
    assert daemon.stop() == 0
    assert_clean_json_logs(daemon)


def test_waiting_for_database_is_logged_without_the_password(
    workdir: Path, notify: NotifySocket, spawn: Callable[..., DaemonProc]
) -> None:
    """An unreachable database: a masked JSON warning, STATUS says so, SIGTERM exits 0."""
    dsn = f"postgresql://puppylog:{PASSWORD}@/puppylog?host={workdir / 'nowhere'}&port=5432"
    daemon = spawn(["--dsn", dsn, "--log-file", str(workdir / "a.log")], notify=notify)

    def warned() -> list[dict[str, Any]]:
        return [e for e in daemon.events() if e["event"] == "waiting for database"]

    warning = wait_for("the waiting-for-database warning", warned)[0]
    assert warning["level"] == "warning"
    assert warning["dsn"] == dsn.replace(PASSWORD, "***")
    notify.wait("STATUS=waiting for database")
    assert daemon.stop(signal.SIGINT) == 0
    assert_clean_json_logs(daemon)
    for _, assignment in notify.assignments():
        assert PASSWORD not in assignment


def test_a_start_waiting_for_the_database_says_ready_and_feeds_the_watchdog(
    make_cluster: ClusterFactory,
    workdir: Path,
    notify: NotifySocket,
    spawn: Callable[..., DaemonProc],
) -> None:
    """The database down at start: READY with STATUS=waiting, WATCHDOG=1 fed, then the lines.

    Without READY, systemd would fail the start after TimeoutStartSec and restart it in a loop.
    """
    cluster = make_cluster()
    cluster.stop()
    log_file = workdir / "access.log"
    append(log_file, lines(0, 10))
    daemon = spawn(["--dsn", cluster.dsn(), "--log-file", str(log_file)], notify=notify)
    ready = notify.wait("READY=1", timeout=4 * WATCHDOG_S)
    statuses = [a for t, a in notify.assignments() if t <= ready and a.startswith("STATUS=")]
    assert statuses[-1] == "STATUS=waiting for database", statuses
    # Alive and retrying against a server that is plainly down: systemd must not kill it.
    waited = notify.wait("WATCHDOG=1", after=ready + 2 * WATCHDOG_S, timeout=4 * WATCHDOG_S)
    assert daemon.proc.poll() is None
    pings = [t for t in notify.times("WATCHDOG=1") if t > ready]
    gaps = [b - a for a, b in itertools.pairwise([ready, *pings])]
    assert max(gaps) < WATCHDOG_S, gaps

    cluster.start()
    wait_for("the lines written before the start", lambda: stored(cluster.dsn()) == (10, 10), 30)
    back = notify.wait("WATCHDOG=1", after=waited)
    wait_for(
        "a running status",
        lambda: any(
            a.startswith("STATUS=") and "lines/s" in a for t, a in notify.assignments() if t > back
        ),
    )
    assert notify.times("READY=1") == [ready]
    assert daemon.stop() == 0
    assert_clean_json_logs(daemon)


# -- supervision, in process ---------------------------------------------------------------


class _FailingHelper(Daemon):
    """A daemon whose housekeeping task crashes shortly after start."""

    async def _housekeeping_loop(self) -> None:
        await asyncio.sleep(0.3)
        raise RuntimeError("housekeeping exploded")


async def test_a_task_that_dies_ends_the_daemon_with_a_reason(
    db_dsn: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any task dying makes the daemon log which and why, stop the others and exit 1."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr(sd, "_SYSTEMD", None)
    log_file = workdir / "a.log"
    append(log_file, lines(0, 30))
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        settings = Settings(dsn=db_dsn, log_files=[log_file])
        code = await asyncio.wait_for(_FailingHelper(settings).run(), timeout=30)
    finally:
        configure_logging("warning", "json", stream=io.StringIO())
    assert code == 1
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    died = [e for e in events if e["event"] == "task died"]
    assert len(died) == 1
    assert died[0]["task"] == "housekeeping"
    assert "housekeeping exploded" in died[0]["error"]
    assert "RuntimeError" in died[0]["exception"]
    assert events[-1]["event"] == "stopped" and events[-1]["exit_code"] == 1
    # The streams were stopped in order: what they had read is committed.
    assert stored(db_dsn) == (30, 30)
