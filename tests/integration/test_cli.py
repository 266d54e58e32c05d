"""The ``puppylogd`` command line, run as a real subprocess."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from puppylogd.cli import EXIT_SCHEMA
from tests import pg
from tests.integration.helpers import (
    append,
    clf_lines,
    count_rows,
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

MIGRATIONS = sorted(p.stem for p in (Path(__file__).parents[2] / "migrations").glob("*.sql"))


@pytest.mark.parametrize(
    ("args", "env", "setting"),
    [
        (["--threshold", "abc"], {}, "threshold"),
        ([], {"PUPPYLOG_BATCH_LINES": "0"}, "batch_lines"),
        (["--log-format", "xml"], {}, "log_format"),
        (["run", "--batch-ms", "-5"], {}, "batch_ms"),
        ([], {"PUPPYLOG_LOG_FORMAT": "xml"}, "log_format"),
        (["migrate", "--log-level", "loud"], {}, "log_level"),
        # Waited for forever, and with --once too, before: asyncpg refuses it on every try.
        (["--once", "--dsn", "host=db dbname=puppylog"], {}, "dsn"),
        (["migrate"], {"PUPPYLOG_DSN": "postgresql://u:pw@localhost:abc/x"}, "dsn"),
        (["--state-dir", ""], {}, "state_dir"),
        (["--threshold", "nan"], {}, "threshold"),
    ],
)
def test_bad_setting_exits_2_with_one_line(
    args: list[str], env: dict[str, str], setting: str
) -> None:
    """A bad value: exit 2, one stderr line naming the setting, no traceback, no usage."""
    result = run_cli(*args, env=env, timeout=30)
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("puppylogd: error: invalid setting "), lines[0]
    assert setting in lines[0]
    flag = "--" + setting.replace("_", "-")
    assert flag in lines[0]
    assert f"PUPPYLOG_{setting.upper()}" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""


def test_a_mistyped_variable_is_named_and_a_broken_env_file_line_is_an_error(
    db_dsn: str, tmp_path: Path
) -> None:
    """Ignored in silence before: the setting stayed at its default."""
    log = tmp_path / "access.log"
    log.write_bytes(clf_lines(0, 5, recent(60)))
    result = run_once(db_dsn, log, env={"PUPPYLOG_THRESHHOLD": "3"})
    (warning,) = [json.loads(line) for line in result.stderr.splitlines() if "THRESHHOLD" in line]
    assert warning["level"] == "warning"
    assert warning["event"] == (
        "PUPPYLOG_THRESHHOLD is not a setting and is ignored (did you mean PUPPYLOG_THRESHOLD?)"
    )
    env_file = tmp_path / "puppylogd.env"
    env_file.write_text('PUPPYLOG_THRESHOLD="5\n', encoding="utf-8")
    result = run_cli("--once", env={"PUPPYLOG_ENV_FILE": str(env_file)}, timeout=30)
    assert result.returncode == 2, result
    assert result.stderr == (
        f"puppylogd: error: environment file {env_file}, line 1: cannot parse "
        "'PUPPYLOG_THRESHOLD=\"5'\n"
    )


def test_once_says_so_when_the_last_line_has_no_newline_and_stores_it_later(
    db_dsn: str, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    complete, last = clf_lines(0, 2, recent(60)).splitlines(keepends=True)
    log.write_bytes(complete + last.rstrip(b"\n"))
    result = run_once(db_dsn, log)
    (warning,) = [json.loads(x) for x in result.stderr.splitlines() if "without a newline" in x]
    assert (warning["level"], warning["path"], warning["bytes"]) == (
        "warning",
        str(log),
        len(last) - 1,
    )
    assert count_rows(db_dsn) == 1
    with log.open("ab") as f:
        f.write(b"\n")
    result = run_once(db_dsn, log)
    assert "without a newline" not in result.stderr
    assert count_rows(db_dsn) == 2


def test_a_state_directory_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    result = run_cli("--once", "--state-dir", str(blocker / "state"), timeout=60)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    (line,) = [json.loads(x) for x in result.stderr.splitlines() if '"level": "error"' in x]
    assert line["event"] == "cannot start"
    assert line["error"].startswith(f"cannot use the state directory {blocker / 'state'}: ")


@pytest.fixture
def empty_dsn(pg_server: pg.PgServer) -> Iterator[str]:
    """Yield the DSN of a new database without puppylog's schema; dropped afterwards."""
    name = pg.unique_name("e")
    pg.run_async(lambda: pg.create_database(pg_server.admin_dsn, name))
    try:
        yield pg_server.dsn(name)
    finally:
        pg.run_async(lambda: pg.drop_database(pg_server.admin_dsn, name))


def test_migrate_applies_then_is_a_no_op(empty_dsn: str) -> None:
    """``puppylogd migrate`` creates the schema; running it again changes nothing."""
    assert query_val(empty_dsn, "SELECT to_regnamespace('puppylog') IS NULL") is True

    first = run_cli("migrate", "--dsn", empty_dsn, env={"PUPPYLOG_LOG_FORMAT": "json"})
    assert first.returncode == 0, first.stderr
    assert "migrations applied" in first.stdout + first.stderr
    recorded = query_rows(empty_dsn, "SELECT * FROM puppylog.schema_migrations")
    assert len(recorded) == len(MIGRATIONS) >= 2
    tables = query_val(
        empty_dsn,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'puppylog' "
        "AND tablename IN ('log_groups', 'log_streams', 'log_records', 'rejected_lines')",
    )
    assert tables == 4

    second = run_cli("migrate", "--dsn", empty_dsn, env={"PUPPYLOG_LOG_FORMAT": "json"})
    assert second.returncode == 0, second.stderr
    assert "schema is up to date" in second.stdout + second.stderr
    again = query_rows(empty_dsn, "SELECT * FROM puppylog.schema_migrations")
    assert [tuple(r) for r in again] == [tuple(r) for r in recorded]


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            "UPDATE puppylog.schema_migrations SET checksum = md5(checksum) WHERE version = 2",
            "applied to this database differs from the one this puppylogd ships",
        ),
        (
            "ALTER TABLE puppylog.schema_migrations DROP COLUMN checksum",  # an older build's
            "migration 0001_schema applied to this database was recorded without a checksum",
        ),
        (
            "INSERT INTO puppylog.schema_migrations (version, name, checksum) "
            "VALUES (999, 'future', 'x')",
            "the database has migration 0999, newer than this puppylogd knows",
        ),
    ],
)
def test_a_schema_from_another_build_is_refused(
    empty_dsn: str, tmp_path: Path, tamper: str, message: str
) -> None:
    """Edited or unknown applied migrations: one clear line and exit 3, from both commands.

    3, not 1: the unit does not retry it (RestartPreventExitStatus), no restart can help.
    """
    env = {"PUPPYLOG_LOG_FORMAT": "json"}
    assert run_cli("migrate", "--dsn", empty_dsn, env=env).returncode == 0
    query_val(empty_dsn, tamper)
    log = tmp_path / "access.log"
    log.write_text("")
    for args in (["migrate"], ["--once", "--log-file", str(log)]):
        result = run_cli(*args, "--dsn", empty_dsn, env=env)
        output = result.stdout + result.stderr
        assert result.returncode == EXIT_SCHEMA == 3, output
        assert message in output
        assert "Traceback" not in output
        assert len(output.strip().splitlines()) == 1, output


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["migrate", "--help"]])
def test_help(args: list[str]) -> None:
    """--help prints usage and exits 0, naming the main flags."""
    result = run_cli(*args, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: puppylogd")
    assert "--dsn" in result.stdout or "COMMAND" in result.stdout
    assert result.stderr == ""


def test_run_help_lists_every_setting() -> None:
    """Every setting is a flag of ``puppylogd run``, with its environment variable."""
    result = run_cli("run", "--help", timeout=30)
    text = " ".join(result.stdout.split())
    for flag in ("--log-file", "--once", "--from-end", "--threshold", "--batch-lines"):
        assert flag in text
    assert "PUPPYLOG_BATCH_LINES" in text
    assert "{auto,pretty,json}" in text


def test_once_with_a_missing_file_stores_the_others_and_exits_1(
    db_dsn: str, tmp_path: Path
) -> None:
    """A wrong path must not pass for an empty log: one error line naming it, exit 1."""
    present = tmp_path / "access.log"
    missing = tmp_path / "acess.log"
    errors = once_failing(db_dsn, present, missing, present)
    assert [(e["event"], e.get("path")) for e in errors[:1]] == [("no such log file", str(missing))]
    assert errors[-1]["event"] == "once: done, but some files could not be read"
    assert errors[-1]["unread"] == [str(missing)]
    assert (errors[-1]["stored"], count_rows(db_dsn)) == (5, 5)
    # No stream is left in the database (and in the console's list) for the wrong path.
    assert query_val(db_dsn, "SELECT array_agg(path) FROM puppylog.log_streams") == [str(present)]


def test_once_reads_a_known_file_rotated_away_from_its_path(db_dsn: str, tmp_path: Path) -> None:
    """A path gone since the last run is no typo when its stream is known: its lines are read."""
    path = tmp_path / "access.log"
    path.write_bytes(clf_lines(0, 5, recent(60)))
    run_once(db_dsn, path)
    append(path, clf_lines(5, 3, recent(50)))
    path.rename(tmp_path / "access.log.1")
    result = run_once(db_dsn, path, check=False)
    assert (result.returncode, count_rows(db_dsn)) == (0, 8), result.stderr


def test_a_daemon_changing_the_groups_alert_settings_says_so(db_dsn: str, tmp_path: Path) -> None:
    """Daemons of one group set its alert rule in turn: one that changes it warns, naming it."""
    path = tmp_path / "access.log"
    path.write_bytes(clf_lines(0, 1, recent(60)))

    def warned(result: Any) -> list[dict[str, Any]]:
        events = [json.loads(line) for line in result.stderr.splitlines()]
        return [e for e in events if e["event"].startswith("this daemon changed the group's")]

    assert warned(run_once(db_dsn, path, host="a", threshold=20)) == []  # a new group
    assert warned(run_once(db_dsn, path, host="a", threshold=20)) == []  # the same rule
    [warning] = warned(run_once(db_dsn, path, host="b", threshold=10, window_seconds=60))
    assert (warning["level"], warning["group"], warning["host"]) == ("warning", "default", "b")
    assert warning["changed"] == {"threshold": "20.0 -> 10.0", "window_s": "120 -> 60"}


def test_lines_stored_after_their_second_closed_are_counted_and_said(
    db_dsn: str, tmp_path: Path
) -> None:
    """A second host's file loaded after the first's: its lines of closed seconds come late."""
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    first.write_bytes(clf_lines(0, 5, recent(120)) + clf_lines(5, 5, recent(60)))
    second.write_bytes(clf_lines(10, 3, recent(90)) + clf_lines(13, 2, recent(30)))

    def run(path: Path, host: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        result = run_once(db_dsn, path, host=host)
        events = [json.loads(line) for line in result.stderr.splitlines()]
        said = [e for e in events if e["event"].startswith("lines arrived after the group")]
        return said, next(e for e in events if e["event"] == "once: done")

    said, done = run(first, "a")
    assert (said, "late" in done) == ([], False)
    said, done = run(second, "b")  # its 3 lines 90 s ago are before a's last second
    assert [(e["level"], e["path"], e["lines"]) for e in said] == [("warning", str(second), 3)]
    assert (done["stored"], done["late"], count_rows(db_dsn)) == (5, 3, 15)
    # Counted on the stream too, for the console, by each batch's late rows.
    late = (
        "SELECT host, lines_late, late_at > now() - interval '1 minute'"
        " FROM puppylog.log_streams ORDER BY host"
    )
    assert [tuple(r) for r in query_rows(db_dsn, late)] == [("a", 0, None), ("b", 3, True)]
    append(second, clf_lines(15, 2, recent(100)) + clf_lines(17, 1, recent(10)))
    said, done = run(second, "b")
    assert (done["stored"], done["late"]) == (3, 2)
    assert [tuple(r) for r in query_rows(db_dsn, late)] == [("a", 0, None), ("b", 5, True)]


def test_once_with_a_directory_for_a_file_stores_the_others_and_exits_1(
    db_dsn: str, tmp_path: Path
) -> None:
    """A directory at a log path is what --once already said: not a regular file, exit 1."""
    present = tmp_path / "access.log"
    a_dir = tmp_path / "logs"
    a_dir.mkdir()
    errors = once_failing(db_dsn, present, a_dir, present)
    assert [(e["event"], e.get("path")) for e in errors[:1]] == [
        ("no such log file (or not a regular file)", str(a_dir))
    ]
    assert errors[-1]["unread"] == [str(a_dir)]
    assert (errors[-1]["stored"], count_rows(db_dsn)) == (5, 5)


def once_failing(db_dsn: str, present: Path, *files: Path) -> list[dict[str, Any]]:
    """Write 5 lines to ``present``, run --once over ``files`` (in order), expect exit 1.

    Return its error events. No traceback, and every stream it registered is marked stopped
    (none holds the group's time back).
    """
    present.write_bytes(clf_lines(0, 5, recent(60)))
    result = run_once(db_dsn, *files, check=False)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert query_val(db_dsn, "SELECT bool_and(stopped) FROM puppylog.log_streams") is True
    events = [json.loads(line) for line in result.stderr.splitlines()]
    return [e for e in events if e["level"] == "error"]


def test_once_with_a_path_that_cannot_be_opened_stores_the_others_and_exits_1(
    db_dsn: str, tmp_path: Path
) -> None:
    """Like a missing file: one error line naming it, the other files stored, exit 1."""
    present = tmp_path / "access.log"
    bad = present / "not-a-directory.log"  # a regular file on the way: ENOTDIR
    line, done = once_failing(db_dsn, present, bad, present)
    assert (line["event"], line["path"]) == ("cannot open log file", str(bad))
    assert "Not a directory" in line["error"]
    assert done["event"] == "once: done, but some files could not be read"
    assert (done["unread"], done["stored"], count_rows(db_dsn)) == ([str(bad)], 5, 5)


def test_run_warns_about_a_missing_file_and_follows_it_once_it_appears(
    db_dsn: str, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    with start_daemon(db_dsn, path, poll_interval=0.05) as daemon:
        wait_for(lambda: '"event": "ready"' in daemon.output(), 30, message=daemon.output)
        events = [json.loads(line) for line in daemon.output().splitlines()]
        warned = [e for e in events if e["event"] == "log file does not exist yet; waiting for it"]
        assert [(e["level"], e["path"]) for e in warned] == [("warning", str(path))]
        append(path, clf_lines(0, 5, recent(5)))
        wait_for(lambda: count_rows(db_dsn) == 5, 30, message=daemon.output)
        assert daemon.stop() == 0, daemon.output()


def test_once_over_an_old_log_says_which_setting_keeps_it(db_dsn: str, tmp_path: Path) -> None:
    """The default retention rejects a log older than 7 days: the run says how to load it."""
    log = tmp_path / "access.log"
    log.write_bytes(clf_lines(0, 3, recent(30 * 86400)) + clf_lines(3, 2, recent(60)) + b"junk\n")
    result = run_once(db_dsn, log)
    events = [json.loads(line) for line in result.stderr.splitlines()]
    (hint,) = [e for e in events if e["event"].startswith("lines older than the retention")]
    assert "--retention-days (0 keeps everything)" in hint["event"]
    assert (hint["level"], hint["lines"], hint["retention_days"]) == ("warning", 3, 7)
    (done,) = [e for e in events if e["event"] == "once: done"]
    assert done["rejected_reasons"] == {"timestamp too old": 3, "malformed": 1}
    assert (done["stored"], done["rejected"]) == (2, 4)
    # Without the bound everything old is stored.
    everything = tmp_path / "again.log"
    everything.write_bytes(clf_lines(10, 3, recent(30 * 86400)))
    again = run_once(db_dsn, everything, retention_days=0)
    assert "lines older than the retention" not in again.stderr
    assert count_rows(db_dsn) == 5


@pytest.mark.parametrize("wrong", ["database", "role"])
def test_a_dsn_the_server_refuses_is_one_clear_line(
    db_dsn: str, tmp_path: Path, wrong: str
) -> None:
    """No such database or role: retrying cannot help, so one line naming it, exit 1."""
    parts = urlsplit(db_dsn)
    if wrong == "database":
        dsn = urlunsplit(parts._replace(path="/no_such_db"))
    else:
        host = parts.netloc.rsplit("@", 1)[-1]
        dsn = urlunsplit(parts._replace(netloc=f"no_such_role:S3cret@{host}"))
    log = tmp_path / "access.log"
    log.write_bytes(clf_lines(0, 1, recent(60)))
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(dsn + "\n")
    for args, env, check in (
        # the one-shot run and the daemon alike
        (["--once"], {"PUPPYLOG_DSN": dsn}, "check --dsn / PUPPYLOG_DSN"),
        ([], {"PUPPYLOG_DSN": dsn}, "check --dsn / PUPPYLOG_DSN"),
        # the line points at where the DSN came from
        (["--once"], {"PUPPYLOG_DSN_FILE": str(dsn_file)}, f"check the DSN file {dsn_file}, "),
    ):
        result = run_cli(*args, "--log-file", str(log), env=env, timeout=30)
        assert result.returncode == 1, result.stderr
        (line,) = [json.loads(x) for x in result.stderr.splitlines()]
        assert line["event"] == "cannot start"
        name = "no_such_db" if wrong == "database" else "no_such_role"
        assert f'{wrong} "{name}" does not exist' in line["error"]
        assert check in line["error"]
        assert "S3cret" not in result.stderr + result.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_once_stopped_midway_exits_128_plus_the_signal_and_a_rerun_stores_the_rest_once(
    db_dsn: str, tmp_path: Path, sig: signal.Signals
) -> None:
    """Ctrl-C ends a long --once at once, committing what is in flight; not a silent 0."""
    total = 60_000
    log = tmp_path / "big.log"
    log.write_bytes(clf_lines(0, total, recent(120)))
    stored = "SELECT coalesce(sum(lines_stored), 0) FROM puppylog.log_streams"
    proc = subprocess.Popen(
        daemon_cmd(db_dsn, log, once=True, batch_lines=500),
        env=daemon_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: query_val(db_dsn, stored) > 0, 30)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + sig, err
    events = [json.loads(line) for line in err.splitlines()]
    (summary,) = [e for e in events if e["event"].startswith("once: stopped before the end")]
    assert (summary["level"], summary["signal"]) == ("warning", sig.name)
    assert 0 < summary["stored"] < total
    assert not [e for e in events if e["event"].startswith("once: done")]
    assert summary["stored"] == query_val(db_dsn, stored) == count_rows(db_dsn)
    done = [json.loads(line) for line in run_once(db_dsn, log).stderr.splitlines()][-1]
    assert done["event"] == "once: done" and done["stored"] == total - summary["stored"]
    assert count_rows(db_dsn) == total
    distinct = "SELECT count(DISTINCT path) FROM puppylog.log_records"
    assert query_val(db_dsn, distinct) == total  # each line once (clf_lines: one path per id)
