"""puppylog-watch against databases that answer but refuse, and servers that never answer."""

from __future__ import annotations

import asyncio
import contextlib
import io
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from puppylog_watch.app import LineSink
from puppylog_watch.listener import Listener
from puppylog_watch.state import WatchState
from tests import pg
from tests.integration.helpers import (
    append,
    clf_lines,
    daemon_env,
    loaded,
    query_val,
    recent,
    run_once,
    signal_at,
    wait_for,
)
from tests.integration.test_watch import Watch, with_user
from tests.pg import run_async


def watch(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``puppylog-watch`` to its end (it must end by itself)."""
    return subprocess.run(
        [sys.executable, "-m", "puppylog_watch", *args],
        env=daemon_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("mode", ["--plain", "--history"])
def test_a_dsn_the_server_refuses_is_one_line_and_exit_1(
    db_dsn: str, mode: str, tmp_path: Path
) -> None:
    """No such role or database: said once, password masked, instead of retried forever."""
    no_role = watch(mode, "--dsn", with_user(db_dsn, "nosuchrole:s3cret"))
    assert no_role.returncode == 1, no_role
    assert len(no_role.stderr.splitlines()) == 1, no_role.stderr
    assert no_role.stderr.startswith("puppylog-watch: error: cannot connect to postgresql://")
    assert '"nosuchrole" does not exist' in no_role.stderr
    assert "s3cret" not in no_role.stderr and "nosuchrole:***@" in no_role.stderr
    assert no_role.stderr.rstrip().endswith("(check --dsn / PUPPYLOG_DSN)")
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(pg.with_database(db_dsn, "nosuchdb") + "\n")
    no_db = watch("--json" if mode == "--plain" else mode, "--dsn-file", str(dsn_file))
    assert no_db.returncode == 1, no_db
    assert len(no_db.stderr.splitlines()) == 1 and '"nosuchdb" does not exist' in no_db.stderr
    # The line points at where the DSN came from.
    assert f"(check the DSN file {dsn_file}, --dsn-file / PUPPYLOG_DSN_FILE)" in no_db.stderr


@pytest.mark.parametrize("mode", ["--plain", "--history"])
def test_a_role_without_rights_is_told_what_to_grant(
    db_dsn: str, unique_name: Callable[[str], str], mode: str
) -> None:
    role = unique_name("nobody")
    query_val(db_dsn, f"CREATE ROLE {role} LOGIN")
    try:
        out = watch(mode, "--dsn", with_user(db_dsn, role))
    finally:
        query_val(db_dsn, f"DROP ROLE {role}")
    assert out.returncode == 1, out
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith(f"puppylog-watch: error: role {role} may not read schema ")
    assert out.stderr.endswith(f": GRANT puppylog_reader TO {role}\n")


@pytest.mark.parametrize("mode", ["--plain", "--history"])
def test_a_database_without_the_schema_says_to_migrate(
    pg_server: pg.PgServer, unique_name: Callable[[str], str], mode: str
) -> None:
    name = unique_name("bare")
    run_async(lambda: pg.create_database(pg_server.admin_dsn, name))
    try:
        out = watch(mode, "--dsn", pg_server.dsn(name))
    finally:
        run_async(lambda: pg.drop_database(pg_server.admin_dsn, name))
    assert out.returncode == 1, out
    assert out.stderr == (
        "puppylog-watch: error: the database has no puppylog schema: run puppylogd (or "
        "`puppylogd migrate`) against it first\n"
    )


def test_a_session_failing_after_the_watch_was_live_is_retried_with_backoff(
    db_dsn: str, unique_name: Callable[[str], str]
) -> None:
    """A right revoked under a running watch: it waits for it, without a tight loop."""
    role = unique_name("watcher")
    query_val(db_dsn, f"CREATE ROLE {role} LOGIN IN ROLE puppylog_reader")
    err = io.StringIO()

    async def go() -> tuple[int, bool]:
        state = WatchState(group="default")
        listener = Listener(with_user(db_dsn, role), state, LineSink(io.StringIO(), err))
        stop = asyncio.Event()
        task = asyncio.create_task(listener.run(stop))
        admin = await asyncpg.connect(db_dsn)
        try:
            while not state.connected:
                await asyncio.sleep(0.05)
            await admin.execute(f"REVOKE puppylog_reader FROM {role}")
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'puppylog-watch'"
            )
            before = listener.attempts
            await asyncio.sleep(3.0)
            attempts = listener.attempts - before
            await admin.execute(f"GRANT puppylog_reader TO {role}")
            deadline = time.monotonic() + 15
            while not state.connected and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return attempts, state.connected
        finally:
            stop.set()
            await task
            await admin.close()

    try:
        attempts, back = run_async(go)
    finally:
        query_val(db_dsn, f"DROP ROLE {role}")
    # 0.5 s, 1 s, 2 s apart: a handful in 3 s, not hundreds.
    assert 1 <= attempts <= 5, (attempts, err.getvalue())
    assert back, err.getvalue()
    assert "permission denied" in err.getvalue()


def start_watch(*args: str) -> subprocess.Popen[str]:
    """Start ``puppylog-watch`` with ``args``, its output piped (use it as a context manager)."""
    return subprocess.Popen(
        [sys.executable, "-m", "puppylog_watch", *args],
        env=daemon_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextlib.contextmanager
def silent_server() -> Iterator[socket.socket]:
    """Yield a listening socket that accepts TCP (the kernel does) but never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as server:
        yield server


def silent_dsn(server: socket.socket) -> str:
    return f"postgresql://watcher:s3cret@127.0.0.1:{server.getsockname()[1]}/puppylog"


def interrupt_while_connecting(server: socket.socket, *args: str) -> tuple[int, str, float]:
    """Start the watch, Ctrl-C it once it is connecting; return (status, stderr, seconds)."""
    with start_watch(*args, "--dsn", silent_dsn(server)) as proc:
        try:
            # Readable once the watch's connection waits in the backlog: it is connecting.
            assert select.select([server], [], [], 20)[0], "the watch never connected"
            time.sleep(0.3)  # into the wait for the server's answer
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
            return proc.returncode, err, time.monotonic() - t0
        finally:
            proc.kill()


def test_ctrl_c_while_connecting_ends_the_watch_at_once_and_quietly() -> None:
    with silent_server() as server:
        status, err, took = interrupt_while_connecting(server, "--plain")
    assert (status, err) == (0, "")
    assert took < 3


def test_ctrl_c_while_history_connects_ends_it_at_once_without_traceback() -> None:
    with silent_server() as server:
        status, err, took = interrupt_while_connecting(server, "--history")
    assert (status, err) == (130, "")
    assert took < 3


def test_history_says_that_connecting_timed_out() -> None:
    with silent_server() as server:
        port = server.getsockname()[1]
        out = watch("--history", "--dsn", silent_dsn(server))
    assert out.returncode == 1
    assert out.stderr == (
        "puppylog-watch: cannot read the alert history: timed out after 10 s connecting to "
        f"postgresql://watcher:***@127.0.0.1:{port}/puppylog\n"
    )


def test_plain_watch_says_when_no_daemon_heartbeats_as_the_tables_have_it(
    db_dsn: str, tmp_path: Path
) -> None:
    """Heartbeat ages and the group's timeout come from the database."""
    log = tmp_path / "access.log"
    append(log, clf_lines(0, 3, recent(30)))
    run_once(db_dsn, log)
    query_val(db_dsn, "UPDATE puppylog.log_groups SET heartbeat_timeout_s = 60")
    query_val(
        db_dsn,
        "UPDATE puppylog.log_streams SET stopped = false, heartbeat_at = now() - interval '5 min'",
    )
    watch = Watch("--plain", "--dsn", db_dsn)
    try:
        wait_for(lambda: any("no daemon heartbeat" in e for e in watch.errors), 20)
        told = [e for e in watch.errors if "no daemon heartbeat" in e]
        assert told[0].startswith("puppylog-watch: no daemon heartbeat for 30")
        assert told[0].endswith("(group 'default', heartbeat timeout 60 s): is puppylogd running?")
        query_val(db_dsn, "UPDATE puppylog.log_streams SET heartbeat_at = now()")
        wait_for(lambda: "puppylog-watch: a daemon heartbeats again" in watch.errors, 20)
        assert len([e for e in watch.errors if "no daemon heartbeat" in e]) == 1
    finally:
        assert watch.stop() == 0


def test_an_unreachable_database_is_said_once_and_in_words(tmp_path: Path) -> None:
    """No server socket: which one, on stderr once, however many retries; short in the state."""
    sock = tmp_path / "nosuchdir" / ".s.PGSQL.5432"
    short = f"/{sock.parts[1]}/…/{sock.name}"  # what the header has room for
    dsn = f"postgresql://watcher@/puppylog?host={sock.parent}"
    err = io.StringIO()
    state = WatchState(group="default")

    async def go() -> int:
        sink = LineSink(io.StringIO(), err)
        listener = Listener(dsn, state, sink, min_backoff=0.05, max_backoff=0.1)
        stop = asyncio.Event()
        task = asyncio.create_task(listener.run(stop))
        while listener.attempts < 5:
            await asyncio.sleep(0.02)
        stop.set()
        await task
        return listener.attempts

    assert run_async(go) >= 5
    assert err.getvalue() == (
        f"puppylog-watch: database unreachable: no server at {sock} (FileNotFoundError: "
        "[Errno 2] No such file or directory); retrying\n"
    )
    assert state.status == f"unreachable: no server at {short}"


def test_live_streams_are_listed_before_stopped_ones(db_dsn: str) -> None:
    """The console shows one to three streams: a stopped one must not hide a live one."""
    query_val(db_dsn, "INSERT INTO puppylog.log_groups (name) VALUES ('default')")
    query_val(
        db_dsn,
        "INSERT INTO puppylog.log_streams (group_id, host, path, stopped, heartbeat_at) "
        "SELECT id, h, p, s, now() FROM puppylog.log_groups, (VALUES "
        "('a-old', '/var/log/a.log', true), ('b', '/var/log/z.log', false), "
        "('b', '/var/log/a.log', true), ('c', '/var/log/a.log', false)) AS v (h, p, s) "
        "WHERE name = 'default'",
    )

    async def go() -> list[tuple[str, str, bool]]:
        state = WatchState(group="default")
        listener = Listener(db_dsn, state, LineSink(io.StringIO(), io.StringIO()))
        stop = asyncio.Event()
        task = asyncio.create_task(listener.run(stop))
        try:
            deadline = time.monotonic() + 20
            while not state.streams and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return [(s.host, s.path, s.stopped) for s in state.streams]
        finally:
            stop.set()
            await task

    assert run_async(go) == [
        ("b", "/var/log/z.log", False),
        ("c", "/var/log/a.log", False),
        ("a-old", "/var/log/a.log", True),
        ("b", "/var/log/a.log", True),
    ]


@pytest.mark.parametrize(("args", "status"), [(["--plain"], 0), (["--history"], 130)])
def test_ctrl_c_during_the_imports_ends_the_watch_quietly(args: list[str], status: int) -> None:
    """The imports take a good part of a second: a Ctrl-C then is no traceback either."""
    with start_watch(*args, "--dsn", "postgresql://x@/y?host=/no") as proc:
        try:
            # pydantic's library loaded: the imports run.
            signal_at(proc.pid, lambda pid: loaded(pid, "pydantic_core"), signal.SIGINT)
            _, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
    assert (proc.returncode, err) == (status, "")
