"""Least privilege and passwords, against a real server.

* After the owner migrated, a login role in ``puppylog_writer`` runs the daemon (records,
  rejected lines, checkpoints, heartbeats, partitions through the SECURITY DEFINER function,
  retention, ``puppylogd migrate`` as a no-op) but cannot drop, alter, truncate, delete or
  update records, or call the reader-only surface's writers; it moves only the streams it
  registered (row-level security): another daemon role gets a clear refusal.
* A login role in ``puppylog_reader`` can SELECT, LISTEN and run ``puppylog-watch --plain``,
  but cannot write anything, call the functions that write, or run the daemon.
* Passwords: a scram-protected role connects with the password from ``PGPASSFILE`` or from
  ``--dsn-file``; the password never shows in the daemon's output, also when the connection
  fails; ``--dsn`` with a password on the command line logs a warning.

The embedded database's socket directory (only its user may enter) is tested in
``tests/integration/test_embedded.py``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from puppylogd.config import PASSWORD_ON_COMMAND_LINE
from tests import pg
from tests.conftest import ClusterFactory
from tests.integration.helpers import (
    append,
    clf_line,
    clf_lines,
    counts,
    daemon_cmd,
    daemon_env,
    query_rows,
    query_val,
    recent,
    run_cli,
    run_once,
    start_daemon,
    wait_for,
)
from tests.integration.test_bad_input import plain_watch_lines
from tests.pg import run_async

PASSWORD = "S3cret-pw-9f2c"
WRONG = "Wr0ng-pw-41aa"


def with_user(dsn: str, user: str, password: str | None = None) -> str:
    """Return ``dsn`` logging in as ``user`` (with ``password`` if given)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    login = user if password is None else f"{user}:{password}"
    return urlunsplit(parts._replace(netloc=f"{login}@{host}"))


class RoleFactory(Protocol):
    """Signature of the ``make_role`` fixture."""

    def __call__(self, group: str, connection_limit: int = -1) -> str: ...


@pytest.fixture
def make_role(db_dsn: str, unique_name: Callable[[str], str]) -> Iterator[RoleFactory]:
    """Yield ``make_role(group, connection_limit=-1) -> dsn``: a new login role in ``group``.

    The role is dropped afterwards (its sessions ended first).
    """
    made: list[str] = []

    def factory(group: str, connection_limit: int = -1) -> str:
        role = unique_name(group.removeprefix("puppylog_"))
        query_val(
            db_dsn,
            f"CREATE ROLE {role} LOGIN CONNECTION LIMIT {connection_limit} IN ROLE {group}",
        )
        made.append(role)
        return with_user(db_dsn, role)

    yield factory
    for role in made:
        query_val(
            db_dsn,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1",
            role,
        )
        query_val(db_dsn, f"DROP ROLE {role}")


async def denied(dsn: str, statements: list[str]) -> list[str]:
    """Return the statements that did NOT fail with insufficient_privilege (42501)."""
    allowed: list[str] = []
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            try:
                await conn.execute(sql)
            except asyncpg.InsufficientPrivilegeError:
                continue
            allowed.append(sql)
    finally:
        await conn.close()
    return allowed


NO_DDL = [
    "DROP TABLE puppylog.log_records",
    "DROP TABLE puppylog.log_streams CASCADE",
    "DROP SCHEMA puppylog CASCADE",
    "ALTER TABLE puppylog.log_records ADD COLUMN evil integer",
    "ALTER TABLE puppylog.log_streams DROP COLUMN byte_offset",
    "TRUNCATE puppylog.log_records",
    "TRUNCATE puppylog.alert_history",
    "CREATE TABLE puppylog.evil (x integer)",
    "DROP FUNCTION puppylog.advance_group(integer)",
    "CREATE OR REPLACE FUNCTION puppylog.iso(t timestamptz) RETURNS text "
    "LANGUAGE sql AS $$ SELECT 'x' $$",
    "DROP TRIGGER log_records_rollup ON puppylog.log_records",
]


def test_writer_role_runs_the_daemon_but_cannot_drop_or_alter(
    db_dsn: str, tmp_path: Path, make_role: Callable[[str], str]
) -> None:
    writer = make_role("puppylog_writer")
    log = tmp_path / "access.log"
    # Lines three days old need a partition the daemon does not create ahead: it is created
    # on demand through the SECURITY DEFINER ensure_partitions.
    append(log, clf_lines(0, 5, recent(3 * 86400)) + clf_lines(5, 5, recent(60)) + b"junk\n")
    result = run_cli("migrate", "--dsn", writer)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "schema is up to date" in result.stdout + result.stderr
    run_once(writer, log)
    append(log, clf_line(10, recent(30)))
    run_once(writer, log)  # the checkpoint moves on: only the new line
    with start_daemon(writer, log, poll_interval=0.05) as daemon:  # live: heartbeats too
        append(log, clf_line(11, recent(5)))
        wait_for(lambda: counts(db_dsn).rows == 12, 20, message=daemon.output)
        assert daemon.stop() == 0, daemon.output()
    c = counts(db_dsn)
    assert (c.rows, c.duplicates, c.rejected_lines, c.lines_stored, c.lines_rejected) == (
        12,
        0,
        1,
        12,
        1,
    )
    part = recent(3 * 86400).strftime("log_records_p%Y%m%d")
    statements = [
        *NO_DDL,
        f"DROP TABLE puppylog.{part}",
        f"DROP TRIGGER log_records_rollup ON puppylog.{part}",  # rows would go uncounted
        f"ALTER TABLE puppylog.{part} DISABLE TRIGGER log_records_rollup",
        f"ALTER TABLE puppylog.{part} DETACH PARTITION puppylog.{part}",
        "ALTER TABLE puppylog.log_records DETACH PARTITION puppylog." + part,
        "DELETE FROM puppylog.log_records",
        "UPDATE puppylog.log_records SET status = 500",
        f"UPDATE puppylog.{part} SET status = 500",
        "DELETE FROM puppylog.log_streams",
        "DELETE FROM puppylog.log_groups",
        "UPDATE puppylog.alert_history SET hits_at_trigger = 0",
        "DELETE FROM puppylog.alert_history",
        "DELETE FROM puppylog.schema_migrations",
        "INSERT INTO puppylog.schema_migrations (version, name) VALUES (99, 'evil')",
        "INSERT INTO puppylog.stats_buckets (group_id, bucket, payload) "
        "VALUES (1, now(), '{}'::jsonb)",
    ]
    assert run_async(lambda: denied(writer, statements)) == []
    assert counts(db_dsn).rows == 12


async def rows_changed(dsn: str, statements: list[str]) -> list[str]:
    """Return the status tag of each statement run as ``dsn``'s role (e.g. ``UPDATE 0``)."""
    conn = await asyncpg.connect(dsn)
    try:
        return [await conn.execute(sql) for sql in statements]
    finally:
        await conn.close()


def test_a_daemon_role_moves_only_its_own_streams(
    db_dsn: str, tmp_path: Path, make_role: Callable[[str], str]
) -> None:
    web1, web2 = make_role("puppylog_writer"), make_role("puppylog_writer")
    role1, role2 = urlsplit(web1).username, urlsplit(web2).username
    log, other = tmp_path / "access.log", tmp_path / "other.log"
    append(log, clf_lines(0, 5, recent(60)))
    append(other, clf_lines(100, 3, recent(60)))
    run_once(web1, log)
    run_once(web2, other)  # a stream of its own: fine
    owners = {
        r["path"]: r["owner"]
        for r in query_rows(db_dsn, "SELECT path, owner FROM puppylog.log_streams")
    }
    assert owners == {str(log): role1, str(other): role2}

    # The same file and host under another role: one clear line, exit 1, nothing stored.
    append(log, clf_lines(5, 2, recent(30)))
    result = run_once(web2, log, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"was registered by database role '{role1}'" in output, output
    assert "Traceback" not in output
    with start_daemon(web2, log, poll_interval=0.05) as daemon:  # live: the same refusal
        assert daemon.wait(30) == 1, daemon.output()
        assert f"was registered by database role '{role1}'" in daemon.output()
    assert counts(db_dsn).rows == 8

    # Nor through SQL: web1's stream is invisible to web2's updates, and cannot be forged.
    sid = query_val(db_dsn, "SELECT id FROM puppylog.log_streams WHERE path = $1", str(log))
    tags = run_async(
        lambda: rows_changed(
            web2,
            [
                f"UPDATE puppylog.log_streams SET byte_offset = 0 WHERE id = {sid}",
                f"UPDATE puppylog.log_streams SET owner = current_user WHERE id = {sid}",
                "UPDATE puppylog.log_streams SET byte_offset = 0",  # only its own stream
            ],
        )
    )
    assert tags == ["UPDATE 0", "UPDATE 0", "UPDATE 1"]
    forged = [
        "INSERT INTO puppylog.log_streams (group_id, host, path, owner) "
        f"SELECT group_id, 'h', '/forged', '{role1}' FROM puppylog.log_streams WHERE id = {sid}",
        f"UPDATE puppylog.log_streams SET owner = '{role1}' WHERE path = '{other}'",
    ]
    assert run_async(lambda: denied(web2, forged)) == []
    assert query_val(db_dsn, "SELECT byte_offset FROM puppylog.log_streams WHERE id = $1", sid)

    # The schema owner hands the stream over; web2 then resumes at web1's checkpoint.
    query_val(db_dsn, f"UPDATE puppylog.log_streams SET owner = '{role2}' WHERE id = {sid}")
    run_once(web2, log)
    c = counts(db_dsn)
    assert (c.rows, c.duplicates) == (10, 0)


READER_DENIED = [
    "INSERT INTO puppylog.log_groups (name) VALUES ('evil')",
    "UPDATE puppylog.log_streams SET byte_offset = 0",
    "UPDATE puppylog.log_groups SET threshold = 0",
    "DELETE FROM puppylog.log_records",
    "DELETE FROM puppylog.rejected_lines",
    "DELETE FROM puppylog.stats_buckets",
    "INSERT INTO puppylog.rejected_lines (stream_id, reason, detail, line) "
    "VALUES (1, 'x', 'x', 'x')",
    "SELECT puppylog.ensure_partitions('2030-01-01', '2030-01-02')",
    "SELECT puppylog.drop_partitions_before(now() + interval '100 years')",
    "SELECT puppylog.advance_group(1)",
    *NO_DDL,
]


async def listen_once(dsn: str, channel: str, trigger: Callable[[], object]) -> list[str]:
    """LISTEN on ``channel`` as ``dsn``'s role, run ``trigger`` in a thread, return payloads."""
    got: list[str] = []
    conn = await asyncpg.connect(dsn)
    try:
        await conn.add_listener(channel, lambda *a: got.append(str(a[3])))
        await asyncio.to_thread(trigger)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    return got


def test_reader_role_can_select_and_listen_but_not_write(
    db_dsn: str, tmp_path: Path, make_role: Callable[[str], str]
) -> None:
    reader = make_role("puppylog_reader")
    log = tmp_path / "access.log"
    start = recent(100)
    append(log, clf_lines(0, 5, start))
    run_once(db_dsn, log)

    assert int(query_val(reader, "SELECT count(*) FROM puppylog.log_records")) == 5
    assert query_val(reader, "SELECT count(*) FROM puppylog.alert_events") == 0
    assert query_val(reader, "SELECT count(*) FROM puppylog.alert_intervals(1)") == 0
    assert run_async(lambda: denied(reader, READER_DENIED)) == []

    # LISTEN needs no grant: the owner's daemon closes a bucket, the reader hears it.
    append(log, clf_line(5, start + timedelta(seconds=20)))
    payloads = run_async(
        lambda: listen_once(reader, "puppylog_stats", lambda: run_once(db_dsn, log))
    )
    assert payloads and all('"type": "stats"' in p for p in payloads)

    lines = plain_watch_lines(reader, "20")  # any stats line: ISO bucket first
    assert any(" stats group=default " in line for line in lines)

    # The reader cannot be a daemon: it exits with an error and stores nothing.
    append(log, clf_line(6, start + timedelta(seconds=21)))
    result = run_once(reader, log, check=False, timeout=60)
    assert result.returncode != 0
    assert "permission denied" in result.stdout + result.stderr
    assert counts(db_dsn).rows == 6


# -- passwords -----------------------------------------------------------------------------


@pytest.fixture
def password_cluster(make_cluster: ClusterFactory) -> tuple[str, str]:
    """Return (owner DSN, DSN of role ``pwrole`` without password) on a cluster where
    ``pwrole`` must give its password (scram-sha-256) over the socket."""
    cluster = make_cluster()
    hba = cluster.data_dir / "pg_hba.conf"
    with open(hba, "r+", encoding="utf-8") as f:  # in place: keep the server's ownership
        text = f.read()
        f.seek(0)
        f.write("local all pwrole scram-sha-256\n" + text)
    owner = cluster.dsn()
    query_val(owner, "SET password_encryption = 'scram-sha-256'")
    query_val(owner, f"CREATE ROLE pwrole LOGIN PASSWORD '{PASSWORD}' IN ROLE puppylog_writer")
    assert query_val(owner, "SELECT pg_reload_conf()")
    return owner, with_user(owner, "pwrole")


def run_env(
    env: dict[str, str], log: Path, *flags: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``puppylogd --once`` with no ``--dsn`` flag: the DSN comes from ``env``."""
    return subprocess.run(
        [*daemon_cmd(None, log), "--once", *flags],
        env=daemon_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_passwords_come_from_pgpass_or_dsn_file_and_never_show(
    password_cluster: tuple[str, str], tmp_path: Path
) -> None:
    owner, pw_dsn = password_cluster
    log = tmp_path / "access.log"
    append(log, clf_lines(0, 3, recent(60)))
    nopass = tmp_path / "none.pgpass"

    # The role really needs its password here.
    with pytest.raises(asyncpg.InvalidPasswordError):
        query_val(with_user(pw_dsn, "pwrole", WRONG), "SELECT 1")

    # ~/.pgpass (PGPASSFILE): the DSN holds no secret at all.
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"*:*:*:pwrole:{PASSWORD}\n", encoding="utf-8")
    pgpass.chmod(0o600)
    result = run_env({"PUPPYLOG_DSN": pw_dsn, "PGPASSFILE": str(pgpass)}, log)
    assert result.returncode == 0, result.stderr + result.stdout
    assert counts(owner).rows == 3

    # --dsn-file / PUPPYLOG_DSN_FILE with the password in the URL.
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(with_user(pw_dsn, "pwrole", PASSWORD) + "\n", encoding="utf-8")
    dsn_file.chmod(0o600)
    append(log, clf_line(3, recent(50)))
    result = run_env(
        {"PUPPYLOG_DSN_FILE": str(dsn_file), "PGPASSFILE": str(nopass)}, log, "--log-level", "debug"
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert counts(owner).rows == 4
    assert PASSWORD not in result.stdout + result.stderr
    assert PASSWORD_ON_COMMAND_LINE not in result.stdout + result.stderr

    # A failing connection: its log lines never carry the password.
    bad_file = tmp_path / "bad-dsn"
    bad_file.write_text(with_user(pw_dsn, "pwrole", WRONG), encoding="utf-8")
    out_path = tmp_path / "daemon.out"
    with (
        open(out_path, "wb") as out_file,
        subprocess.Popen(
            [*daemon_cmd(None, log), "--log-level", "debug"],
            env=daemon_env({"PUPPYLOG_DSN_FILE": str(bad_file), "PGPASSFILE": str(nopass)}),
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=subprocess.STDOUT,
        ) as daemon,
    ):
        try:
            wait_for(
                lambda: daemon.poll() is not None or "password" in out_path.read_text(),
                20,
                message=out_path.read_text,
            )
            time.sleep(0.5)
        finally:
            daemon.kill()
    out = out_path.read_text()
    assert "password authentication failed" in out, out
    assert WRONG not in out, out

    # --dsn with a password on the command line works, with a warning to move it.
    append(log, clf_line(4, recent(40)))
    result = run_once(with_user(pw_dsn, "pwrole", PASSWORD), log, env={"PGPASSFILE": str(nopass)})
    assert PASSWORD_ON_COMMAND_LINE in result.stdout + result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert counts(owner).rows == 5


def _start_refused(dsn: str, log: Path) -> str:
    """Run the one-shot and the live daemon as ``dsn``'s role; return their one error line."""
    errors = set()
    for args in (["--once"], []):
        result = run_cli(*args, "--log-file", str(log), env={"PUPPYLOG_DSN": dsn}, timeout=60)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        (line,) = [json.loads(x) for x in result.stderr.splitlines() if '"level": "error"' in x]
        assert line["event"] == "cannot start"
        errors.add(line["error"])
    (error,) = errors
    return str(error)


@pytest.mark.parametrize(
    ("grant", "says"),
    [
        # A login role never given a puppylog role may not even read what is migrated.
        ("", "may not read schema puppylog (permission denied for schema puppylog): GRANT "),
        # A reader's role reads, and cannot register its group.
        ("puppylog_reader", "may not write to schema puppylog (permission denied for "),
    ],
)
def test_a_role_without_the_writers_rights_is_told_the_grant(
    db_dsn: str, tmp_path: Path, make_role: RoleFactory, grant: str, says: str
) -> None:
    """Not a traceback from the start: one line naming the role and the GRANT, exit 1."""
    dsn = make_role("puppylog_reader")
    role = urlsplit(dsn).username
    if not grant:
        query_val(db_dsn, f"REVOKE puppylog_reader FROM {role}")
    log = tmp_path / "access.log"
    log.write_bytes(clf_lines(0, 1, recent(60)))
    line = _start_refused(dsn, log)
    assert f"role {role} {says}" in line
    assert f"GRANT puppylog_writer TO {role}" in line


def test_a_role_that_may_not_create_the_schema_is_told_to_migrate_as_the_owner(
    pg_server: pg.PgServer, tmp_path: Path, make_role: RoleFactory
) -> None:
    """A writer's role on a database not migrated yet: the owner must run migrate first."""
    name = pg.unique_name("e")
    run_async(lambda: pg.create_database(pg_server.admin_dsn, name))
    try:
        parts = urlsplit(make_role("puppylog_writer"))
        dsn = urlunsplit(parts._replace(path=f"/{name}"))
        log = tmp_path / "access.log"
        log.write_bytes(clf_lines(0, 1, recent(60)))
        line = _start_refused(dsn, log)
        assert (
            f"role {parts.username} may not create the puppylog schema in database {name} "
            "(permission denied for database " in line
        )
        assert "run `puppylogd migrate` as the database's owner first" in line
        migrate = run_cli("migrate", env={"PUPPYLOG_DSN": dsn, "PUPPYLOG_LOG_FORMAT": "json"})
        assert migrate.returncode == 1
        assert "run `puppylogd migrate` as the database's owner first" in migrate.stderr
    finally:
        run_async(lambda: pg.drop_database(pg_server.admin_dsn, name))
