"""Connection limits: the daemon fits its files into them or says which limit to raise.

A stream holds one connection (``--once`` two, when the server has room for them); a server,
role or database limit below that used to surface as ``too many clients`` half-way through.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from puppylogd import db as pdb
from tests.integration.helpers import (
    append,
    clf_lines,
    count_rows,
    counts,
    query_val,
    recent,
    run_cli,
    run_once,
    start_daemon,
    wait_for,
)
from tests.integration.test_security import RoleFactory, make_role, with_user  # noqa: F401
from tests.pg import run_async


@pytest.fixture
def limited_writer(make_role: RoleFactory) -> Callable[[int], str]:  # noqa: F811
    """Return ``limited_writer(n) -> dsn``: a daemon role with CONNECTION LIMIT n."""
    return lambda limit: make_role("puppylog_writer", connection_limit=limit)


def budget(dsn: str) -> pdb.ConnectionBudget:
    """Return the connection budget of a fresh session on ``dsn``."""

    async def go() -> pdb.ConnectionBudget:
        conn = await asyncpg.connect(dsn)
        try:
            return await pdb.connection_budget(conn)
        finally:
            await conn.close()

    return run_async(go)


def test_budget_query_reads_the_server_role_and_database_limits(
    db_dsn: str, limited_writer: Callable[[int], str]
) -> None:
    max_connections = int(query_val(db_dsn, "SELECT current_setting('max_connections')"))
    server = budget(db_dsn)  # the suite's superuser: no reserved slots, no role limit
    assert server.limit == f"max_connections = {max_connections}"
    assert server.at_most == max_connections - 1
    assert 0 < server.now <= server.at_most

    writer = limited_writer(3)
    role = writer.split("://", 1)[1].split("@", 1)[0]
    assert budget(writer) == pdb.ConnectionBudget(2, 2, f"role {role} has CONNECTION LIMIT 3")

    async def with_a_second_session() -> pdb.ConnectionBudget:
        other = await asyncpg.connect(writer)
        try:
            return budget(writer)
        finally:
            await other.close()

    assert run_async(with_a_second_session).now == 1

    name = query_val(db_dsn, "SELECT current_database()")
    query_val(db_dsn, f'ALTER DATABASE "{name}" CONNECTION LIMIT 5')
    unlimited_role = limited_writer(-1)
    in_db = budget(unlimited_role)
    assert (in_db.at_most, in_db.limit) == (4, f"database {name} has CONNECTION LIMIT 5")
    assert in_db.now == 5 - int(
        query_val(db_dsn, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name)
    )


@pytest.mark.parametrize(("limit", "per_file"), [(4, 1), (7, 2)])
def test_once_uses_one_connection_per_file_when_two_do_not_fit(
    tmp_path: Path, db_dsn: str, limited_writer: Callable[[int], str], limit: int, per_file: int
) -> None:
    """Three files under a limit of 4 (the daemon's own + one each) or 7 (+ two each)."""
    dsn = limited_writer(limit)
    files = [tmp_path / f"site{i}.log" for i in range(3)]
    for i, f in enumerate(files):
        append(f, clf_lines(i * 1000, 300, recent(120 + i)) + b"junk\n")
    # Small batches: many commits, which must take turns on the connections they have.
    result = run_once(dsn, *files, batch_lines=40, log_level="debug")
    events = [json.loads(line)["event"] for line in result.stderr.splitlines() if line]
    assert ("once: one connection per file (no free connections for two)" in events) == (
        per_file == 1
    ), result.stderr
    c = counts(db_dsn)
    assert (c.rows, c.duplicates, c.rejected_lines, c.lines_stored) == (900, 0, 3, 900)


@pytest.mark.parametrize("once", [True, False])
def test_more_files_than_the_limit_allows_is_one_clear_error(
    tmp_path: Path, db_dsn: str, limited_writer: Callable[[int], str], once: bool
) -> None:
    dsn = limited_writer(4)
    files = [tmp_path / f"site{i}.log" for i in range(4)]
    for i, f in enumerate(files):
        append(f, clf_lines(i * 1000, 10, recent(60)))
    args = ["--dsn", dsn, *(a for f in files for a in ("--log-file", str(f)))]
    result = run_cli(*args, *(["--once"] if once else []), timeout=60)
    assert result.returncode == 1, result
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    (error,) = [json.loads(line) for line in output.splitlines() if '"error"' in line]
    assert error["event"] == "cannot start"
    assert "4 log files need 4 database connections" in error["error"]
    assert "CONNECTION LIMIT 4" in error["error"]
    assert "split the files over several daemons" in error["error"]
    assert count_rows(db_dsn) == 0


def test_a_stream_waits_for_a_free_slot_when_it_reconnects(
    tmp_path: Path, db_dsn: str, limited_writer: Callable[[int], str]
) -> None:
    """A stream that finds no free slot when it reconnects waits for one, then goes on."""
    dsn = limited_writer(3)  # the daemon's own connection and one per file: full
    role = dsn.split("://", 1)[1].split("@", 1)[0]
    files = [tmp_path / "a.log", tmp_path / "b.log"]
    for i, f in enumerate(files):
        append(f, clf_lines(i * 1000, 5, recent(30)))
    with start_daemon(dsn, *files, poll_interval=0.05) as daemon:
        wait_for(lambda: count_rows(db_dsn) == 10, 30, message=daemon.output)
        # The slot of a stream's connection goes away (as if another session took it).
        query_val(db_dsn, f"ALTER ROLE {role} CONNECTION LIMIT 2")
        query_val(
            db_dsn,
            # The newest session is a stream's (the daemon's own connected first).
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1 "
            "ORDER BY backend_start DESC LIMIT 1",
            role,
        )
        for i, f in enumerate(files):
            append(f, clf_lines(i * 1000 + 5, 5, recent(5)))
        wait_for(
            lambda: "too many connections for role" in daemon.output(), 30, message=daemon.output
        )
        wait_for(lambda: count_rows(db_dsn) == 15, 30, message=daemon.output)
        time.sleep(1.0)
        daemon.assert_running()
        assert count_rows(db_dsn) == 15  # the other stream waits for a slot
        query_val(db_dsn, f"ALTER ROLE {role} CONNECTION LIMIT 3")
        wait_for(lambda: count_rows(db_dsn) == 20, 30, message=daemon.output)
        assert daemon.stop() == 0, daemon.output()
    c = counts(db_dsn)
    assert (c.rows, c.duplicates, c.lines_stored) == (20, 0, 20)


# Hold one connection until stdin closes.
HOLD = """
import asyncio, sys, asyncpg
async def main():
    conn = await asyncpg.connect(sys.argv[1])
    print("held", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await conn.close()
asyncio.run(main())
"""


def test_run_starts_when_slots_are_short_for_now_and_stops_while_a_stream_waits(
    tmp_path: Path, db_dsn: str, limited_writer: Callable[[int], str]
) -> None:
    """Another session holds the slot the third file needs: two files go on, SIGTERM works."""
    dsn = limited_writer(4)  # the daemon's own and one per file: enough, but one is taken
    files = [tmp_path / f"site{i}.log" for i in range(3)]
    for i, f in enumerate(files):
        append(f, clf_lines(i * 1000, 5, recent(30)))
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, dsn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with start_daemon(dsn, *files, poll_interval=0.05) as daemon:
            wait_for(lambda: count_rows(db_dsn) == 10, 30, message=daemon.output)
            events = [json.loads(line) for line in daemon.output().splitlines()]
            (short,) = [e for e in events if e["event"].startswith("not enough free database")]
            assert (short["files"], short["free"]) == (3, 2)
            # The stream that waits for a slot holds up neither the others nor the start.
            wait_for(lambda: '"event": "ready"' in daemon.output(), 10, message=daemon.output)
            started = time.monotonic()
            assert daemon.stop() == 0, daemon.output()
            assert time.monotonic() - started < 10
        holder.stdin.close()
        assert holder.wait(10) == 0
    # What the third file holds is read on the next start, once there is a slot for it.
    run_once(dsn, *files)
    c = counts(db_dsn)
    assert (c.rows, c.duplicates, c.lines_stored) == (15, 0, 15)


def test_files_a_reload_adds_beyond_the_free_slots_are_a_warning_and_wait(
    tmp_path: Path, db_dsn: str, limited_writer: Callable[[int], str]
) -> None:
    """A reload adding two files with one slot left: a warning naming the limit, no loss."""
    dsn = limited_writer(3)  # the daemon's own, the first file's, and one more
    files = [tmp_path / f"site{i}.log" for i in range(3)]
    for i, f in enumerate(files):
        append(f, clf_lines(i * 1000, 5, recent(30)))
    env_file = tmp_path / "puppylogd.env"
    env_file.write_text(f"PUPPYLOG_LOG_FILES={files[0]}\n", encoding="utf-8")
    with start_daemon(dsn, env={"PUPPYLOG_ENV_FILE": str(env_file)}, poll_interval=0.05) as daemon:
        wait_for(lambda: count_rows(db_dsn) == 5, 30, message=daemon.output)
        env_file.write_text(f"PUPPYLOG_LOG_FILES={','.join(map(str, files))}\n", encoding="utf-8")
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: count_rows(db_dsn) == 10, 30, message=daemon.output)
        wait_for(lambda: "configuration reloaded" in daemon.output(), 30, message=daemon.output)
        events = [json.loads(line) for line in daemon.output().splitlines()]
        (short,) = [e for e in events if e["event"].startswith("not enough free database")]
        assert "files added" in short["event"]
        assert (short["files"], short["free"]) == (2, 1)
        assert short["limit"].endswith("has CONNECTION LIMIT 3"), short
        assert daemon.stop() == 0, daemon.output()
    run_once(dsn, files[2])  # the third file's lines, once there is a slot for them
    c = counts(db_dsn)
    assert (c.rows, c.duplicates, c.lines_stored) == (15, 0, 15)


def test_embedded_database_is_started_with_room_for_every_file(pg_tmp_dir: Path) -> None:
    """120 files, --once: 241 connections, more than PostgreSQL's default of 100."""
    files = [pg_tmp_dir / f"vhost{i}.log" for i in range(120)]
    for i, f in enumerate(files):
        append(f, clf_lines(i * 10, 2, recent(60)))
    args = ["--once", "--state-dir", str(pg_tmp_dir / "state")]
    result = run_cli(*args, *(a for f in files for a in ("--log-file", str(f))), timeout=180)
    assert result.returncode == 0, result.stderr
    done = [json.loads(line) for line in result.stderr.splitlines() if "once: done" in line]
    assert [(d["stored"], d["rejected"]) for d in done] == [(240, 0)]
