"""The real daemon (a subprocess) tailing real files into real PostgreSQL, exactly once.

Every line written carries a unique id in its path, so ``count(*) = count(DISTINCT path)``
proves there are no duplicates and the exact row count proves there are no gaps.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import os
import shutil
import signal
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog

from puppylogd.config import Settings
from puppylogd.db import COPY_SEND_BUFFER
from puppylogd.ingest import StreamIngest
from tests import pg
from tests.conftest import ClusterFactory
from tests.integration.helpers import (
    Counts,
    DaemonProcess,
    append,
    clf_line,
    clf_lines,
    clf_time,
    count_rows,
    counts,
    end_backend,
    journal_noise,
    query_rows,
    query_val,
    recent,
    reject_reasons,
    run_once,
    signal_at,
    start_daemon,
    wait_for,
)
from tests.integration.test_db import loop_reports

# Fast commits and polling keep the live tests short.
LIVE: dict[str, Any] = {"batch_ms": 20, "poll_interval": 0.02}
KILL9_COUNTS_FILE = Path("/tmp/puppylog-kill9-counts.txt")


def wait_rows(
    dsn: str, expected: int, timeout: float = 20.0, daemon: DaemonProcess | None = None
) -> None:
    """Wait until exactly ``expected`` records are stored (fail on more, or on timeout)."""

    def message() -> str:
        text = f"{expected} records stored (have {count_rows(dsn)})"
        if daemon is not None:
            text += "\n" + daemon.output()[-6000:]
        return text

    def done() -> bool:
        n = count_rows(dsn)
        assert n <= expected, f"{n} records stored, only {expected} lines were written"
        return n == expected

    wait_for(done, timeout, interval=0.05, message=message)


def assert_exactly(dsn: str, rows: int, rejected: int = 0) -> Counts:
    """Assert the database holds exactly ``rows`` distinct records and ``rejected`` rejects."""
    c = counts(dsn)
    assert c.duplicates == 0, c
    assert c == Counts(rows, rows, rejected, rows, rejected)
    return c


def invalid_lines(long_line_bytes: int) -> dict[str, list[bytes]]:
    """Return invalid lines by the reason they must be rejected with."""
    now = recent(30)
    req = '"GET /bad HTTP/1.1"'
    good_ts = clf_time(now)
    return {
        "malformed": [b"garbage\n", b"\n", b"1.2.3.4 - -\n"],
        "bad date": [f"1.2.3.4 - - [31/Feb/2026:10:00:00 +0000] {req} 200 1\n".encode()],
        "bad status": [f"1.2.3.4 - - [{good_ts}] {req} abc 1\n".encode()],
        "empty request": [f'1.2.3.4 - - [{good_ts}] "-" 400 1\n'.encode()],
        "invalid utf-8": [f"1.2.3.4 - - [{good_ts}] ".encode() + b'"GET /\xff HTTP/1.1" 200 1\n'],
        "control bytes": [f"1.2.3.4 - - [{good_ts}] ".encode() + b'"GET /\x01 HTTP/1.1" 200 1\n'],
        "timestamp too old": [clf_line(-1, now - timedelta(days=10))],
        "timestamp in the future": [clf_line(-2, now + timedelta(days=3))],
        "line too long": [clf_line(-3, now, section="x" * long_line_bytes)],
    }


def test_exact_counts_valid_and_invalid(db_dsn: str, tmp_path: Path) -> None:
    """Every valid line is one record; every invalid one is one rejected line with its reason."""
    log = tmp_path / "access.log"
    bad = invalid_lines(400)
    ts = recent(60)
    data = bytearray()
    valid = 0
    for i, lines in enumerate(bad.values()):
        data += clf_lines(valid, 50 + i, ts)
        valid += 50 + i
        data += b"".join(lines)
    data += clf_line(valid, ts, user="james", size=None)  # "-" size stored as NULL
    valid += 1
    data += clf_line(valid, ts).replace(b"\n", b"\r\n")  # trailing \r is accepted
    valid += 1
    append(log, bytes(data))
    invalid = sum(len(v) for v in bad.values())

    run_once(db_dsn, log, max_line_bytes=256)

    assert_exactly(db_dsn, valid, invalid)
    assert reject_reasons(db_dsn) == {reason: len(lines) for reason, lines in bad.items()}
    (row,) = query_rows(
        db_dsn,
        "SELECT auth_user, bytes, ident, section FROM puppylog.log_records WHERE path = $1",
        f"/pages/id-{valid - 2}",
    )
    assert dict(row) == {"auth_user": "james", "bytes": None, "ident": None, "section": "/pages"}
    stream = query_rows(
        db_dsn, "SELECT byte_offset, lines_stored, lines_rejected FROM puppylog.log_streams"
    )
    assert [tuple(r) for r in stream] == [(len(data), valid, invalid)]


def test_once_is_idempotent_and_appends_exactly(db_dsn: str, tmp_path: Path) -> None:
    """Re-running --once adds nothing; after an append it adds exactly the new lines."""
    log = tmp_path / "access.log"
    append(log, clf_lines(0, 1000, recent(120)) + b"junk\n")
    run_once(db_dsn, log)
    assert_exactly(db_dsn, 1000, 1)

    run_once(db_dsn, log)
    assert_exactly(db_dsn, 1000, 1)

    append(log, clf_lines(1000, 234, recent(60)) + b"more junk\n")
    run_once(db_dsn, log)
    assert_exactly(db_dsn, 1234, 2)

    run_once(db_dsn, log)
    assert_exactly(db_dsn, 1234, 2)


KILL9_LINES = 300_000
KILL9_BAD_EVERY = 1000  # one invalid line per this many


def big_file(path: Path) -> tuple[int, int]:
    """Write the kill -9 test's file; return (valid, invalid) line counts."""
    base = recent(600)
    valid = invalid = 0
    with open(path, "wb") as f:
        for block in range(KILL9_LINES // KILL9_BAD_EVERY):
            # Timestamps step one second per block: 300 s of history ending near now.
            start = block * (KILL9_BAD_EVERY - 1)
            f.write(clf_lines(start, KILL9_BAD_EVERY - 1, base + timedelta(seconds=block)))
            f.write(b"not a log line %d\n" % block)
            valid += KILL9_BAD_EVERY - 1
            invalid += 1
    return valid, invalid


def test_kill9_during_large_ingest_then_restart(db_dsn: str, tmp_path: Path) -> None:
    """kill -9 mid-ingest, restart: every valid line stored exactly once, nothing lost."""
    log = tmp_path / "big.log"
    valid, invalid = big_file(log)
    assert valid + invalid == KILL9_LINES

    settings: dict[str, Any] = {**LIVE, "batch_lines": 5000}
    with start_daemon(db_dsn, log, **settings) as daemon:
        wait_for(
            lambda: count_rows(db_dsn) >= 100_000,
            30,
            interval=0.01,
            message=lambda: f"first rows committed\n{daemon.output()[-3000:]}",
        )
        daemon.kill9()
    at_kill = counts(db_dsn)
    assert at_kill.duplicates == 0, at_kill
    # The kill must have landed mid-ingest, or this test proves nothing.
    assert 0 < at_kill.rows < valid, at_kill

    with start_daemon(db_dsn, log, **settings) as daemon:
        wait_rows(db_dsn, valid, timeout=60)
        wait_for(lambda: counts(db_dsn).lines_rejected == invalid, 10, message="rejects")
        assert daemon.stop() == 0, daemon.output()[-3000:]
    final = assert_exactly(db_dsn, valid, invalid)
    distinct = int(query_val(db_dsn, "SELECT count(DISTINCT path) FROM puppylog.log_records"))

    report = (
        f"kill -9 test: {KILL9_LINES} lines written ({valid} valid, {invalid} invalid); "
        f"at kill -9: {at_kill.rows} records committed; after restart: {final.rows} records, "
        f"{distinct} distinct paths, {final.duplicates} duplicates, "
        f"{final.rejected_lines} rejected lines (lines_rejected {final.lines_rejected})"
    )
    print(report)
    KILL9_COUNTS_FILE.write_text(report + "\n", encoding="utf-8")


def test_once_reads_compressed_rotations_exactly_once(db_dsn: str, tmp_path: Path) -> None:
    """logrotate compress + delaycompress, 3 rotations between two --once runs: all stored once.

    The checkpoint's file is then access.log.3.gz, read on from the checkpoint's offset in
    its decompressed content; access.log.2.gz is read whole, then access.log.1 and the path.
    """
    log = tmp_path / "access.log"
    n = 0

    def write(count: int) -> None:
        nonlocal n
        append(log, clf_lines(n, count, recent(300 - n // 100)))
        n += count

    write(1000)
    run_once(db_dsn, log)
    assert_exactly(db_dsn, 1000)
    write(700)  # after the checkpoint: only in access.log.3.gz by the next run
    for _ in range(3):
        for k in (2, 1):
            for ending in ("", ".gz"):
                older = tmp_path / f"access.log.{k}{ending}"
                if older.exists():
                    older.rename(tmp_path / f"access.log.{k + 1}{ending}")
        log.rename(tmp_path / "access.log.1")
        two = tmp_path / "access.log.2"
        if two.exists():
            (tmp_path / "access.log.2.gz").write_bytes(gzip.compress(two.read_bytes()))
            two.unlink()
        write(800)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("access.log"))
    assert names == ["access.log", "access.log.1", "access.log.2.gz", "access.log.3.gz"]
    result = run_once(db_dsn, log)
    assert n == 4100
    assert_exactly(db_dsn, n)
    logged = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    assert [e["how"] for e in logged if e["event"] == "stream opened"] == [
        "resumed from compressed file access.log.3.gz"
    ]
    assert not [e for e in logged if "may be lost" in e["event"]]
    run_once(db_dsn, log)  # nothing new: nothing read again
    assert_exactly(db_dsn, n)


def test_compress_rotations_while_running(db_dsn: str, tmp_path: Path) -> None:
    """logrotate compress without delaycompress under a live daemon: every line stored once.

    The file being read is compressed and deleted right after its rotation: the daemon
    drains it through its descriptor and must not read its .gz again; two rotations in a
    row leave a file it never opened only as access.log.1.gz, read from there.
    """
    log = tmp_path / "access.log"
    n = 0

    def write(count: int) -> None:
        nonlocal n
        append(log, clf_lines(n, count, recent(60)))
        n += count

    def rotate() -> None:
        for k in range(8, 0, -1):
            older = tmp_path / f"access.log.{k}.gz"
            if older.exists():
                older.rename(tmp_path / f"access.log.{k + 1}.gz")
        one = tmp_path / "access.log.1"
        log.rename(one)
        (tmp_path / "access.log.1.gz").write_bytes(gzip.compress(one.read_bytes()))
        one.unlink()

    write(500)
    with start_daemon(db_dsn, log, **LIVE) as daemon:
        wait_rows(db_dsn, n, daemon=daemon)
        for _ in range(2):
            write(300)
            rotate()
            write(200)
            wait_rows(db_dsn, n, daemon=daemon)
        write(100)
        rotate()
        write(100)  # only ever in access.log.1.gz, once the next rotation is done
        rotate()
        write(100)
        wait_rows(db_dsn, n, daemon=daemon)
        assert daemon.stop() == 0
        logged = [json.loads(x) for x in daemon.output().splitlines() if x.startswith("{")]
    assert n == 1800
    assert_exactly(db_dsn, n)
    assert not [e for e in logged if "may be lost" in e["event"]]


def test_rename_rotation_and_copytruncate_while_running(db_dsn: str, tmp_path: Path) -> None:
    """Lines before, during and after a rename rotation and a copytruncate: each stored once."""
    log = tmp_path / "access.log"
    n = 0

    def write(count: int, path: Path = log) -> None:
        nonlocal n
        append(path, clf_lines(n, count, recent(30)))
        n += count

    write(500)
    with start_daemon(db_dsn, log, **LIVE) as daemon:
        wait_rows(db_dsn, 500)
        write(100)

        # Rename rotation: the writer keeps writing to the renamed file for a moment.
        os.rename(log, tmp_path / "access.log.1")
        write(300, tmp_path / "access.log.1")
        write(200)  # the new file at the path
        time.sleep(0.2)
        write(50, tmp_path / "access.log.1")  # a late write to the old file, within the grace
        write(150)
        wait_rows(db_dsn, n)

        # copytruncate: copy, then truncate in place; the writer goes on appending.
        shutil.copyfile(log, tmp_path / "access.log.2")
        os.truncate(log, 0)
        write(10)  # shorter than before: size shrinks below the offset
        wait_rows(db_dsn, n)
        write(40)

        # copytruncate again, now growing past the old offset before the daemon looks.
        wait_rows(db_dsn, n)
        os.truncate(log, 0)
        write(2000)
        wait_rows(db_dsn, n)
        daemon.assert_running()
        assert daemon.stop() == 0
        logged = [json.loads(x) for x in daemon.output().splitlines() if x.startswith("{")]
        events = [entry.get("event_") for entry in logged]
    assert_exactly(db_dsn, n)
    assert n == 3350
    # The daemon saw each change for what it was (not, say, a replaced file read from 0):
    # after the first copytruncate it went on in the copy, then back to the path ("rotated").
    assert events.count("rotated") == 2, events
    assert events.count("truncated") == 2, events
    # The second truncation had no copy: lines written just before it may be lost.
    (warning,) = [e["event"] for e in logged if "may be lost" in e["event"]]
    assert warning.startswith(f"{log} was truncated or rewritten while being read"), warning
    assert f"no copy of it found in {tmp_path}" in warning, warning


def test_partial_line_is_stored_once_completed(db_dsn: str, tmp_path: Path) -> None:
    """A last line without its newline waits; once completed it is stored exactly once."""
    log = tmp_path / "access.log"
    append(log, clf_lines(0, 10, recent(30)))
    line = clf_line(10, recent(30))
    with start_daemon(db_dsn, log, **LIVE) as daemon:
        wait_rows(db_dsn, 10)
        append(log, line[:25])
        time.sleep(0.5)  # many batch_ms and poll intervals
        append(log, line[25:-1])
        time.sleep(0.5)
        assert count_rows(db_dsn) == 10
        append(log, b"\n")
        wait_rows(db_dsn, 11)
        append(log, clf_lines(11, 5, recent(30)))
        wait_rows(db_dsn, 16)
        assert daemon.stop() == 0
    assert_exactly(db_dsn, 16)
    paths = query_val(
        db_dsn, "SELECT count(*) FROM puppylog.log_records WHERE path = $1", "/pages/id-10"
    )
    assert paths == 1


def terminate_daemon_backends(dsn: str) -> int:
    """pg_terminate_backend every connection of a puppylogd; return how many."""
    return int(
        query_val(
            dsn,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'puppylogd'",
        )
    )


def test_database_restart_and_terminated_backends(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    """The server stops and comes back, its backends are killed: the daemon carries on."""
    cluster = make_cluster()
    dsn = cluster.dsn()
    log = tmp_path / "access.log"
    n = 0

    def write(count: int) -> None:
        nonlocal n
        append(log, clf_lines(n, count, recent(30)))
        n += count

    write(1000)
    with start_daemon(dsn, log, **LIVE) as daemon:
        wait_rows(dsn, 1000)

        cluster.stop()
        write(700)
        time.sleep(1.0)
        write(300)
        daemon.assert_running()
        cluster.start()
        write(500)
        wait_rows(dsn, n, timeout=30, daemon=daemon)
        daemon.assert_running()

        # Kill the daemon's backends: once while idle, then repeatedly during a backlog so
        # that some kills land inside a batch's transaction (COPY or COMMIT).
        assert terminate_daemon_backends(dsn) >= 1
        write(100_000)
        for _ in range(15):
            time.sleep(0.04)
            terminate_daemon_backends(dsn)
        wait_rows(dsn, n, timeout=30, daemon=daemon)
        daemon.assert_running()
        assert daemon.stop() == 0, daemon.output()[-3000:]
        out = daemon.output()
    assert_exactly(dsn, n)
    assert n == 102_500
    assert "waiting for database" in out
    assert "database connection lost" in out


# A backend of the daemon's that has begun a batch's transaction and waits for its COPY.
BEGUN_BATCH = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name = 'puppylogd' AND state = 'idle in transaction' "
    "AND query LIKE 'BEGIN%' LIMIT 1"
)


def test_backends_killed_as_a_batch_begins_are_one_warning_each_and_nothing_else(
    db_dsn: str, tmp_path: Path
) -> None:
    """--once loses a backend just after a batch's BEGIN, five times: each is one warning,
    the journal has nothing else, and every line is stored once.

    The daemon is stopped (SIGSTOP) while that backend is terminated and gone, so the
    server's goodbye is on the socket when the daemon goes on to the COPY: asyncpg's COPY
    then left a future behind ("Future exception was never retrieved", with a traceback).
    """
    log = tmp_path / "big.log"
    valid, invalid = big_file(log)
    kills = 0
    with start_daemon(db_dsn, log, once=True, batch_lines=500) as daemon:
        while kills < 5 and daemon.poll() is None:
            os.kill(daemon.pid, signal.SIGSTOP)
            try:
                pid = query_val(db_dsn, BEGUN_BATCH)
                if pid is not None and end_backend(db_dsn, pid):
                    kills += 1
            finally:
                os.kill(daemon.pid, signal.SIGCONT)
            time.sleep(0.01)
        assert daemon.wait(120) == 0, daemon.output()[-4000:]
        out = daemon.output()
    assert kills == 5, f"only {kills} kills landed mid-batch before the end\n{out[-4000:]}"
    assert journal_noise(out) == []
    # One warning per fault (a kill may land while the batch beside it is still being
    # abandoned: then one for both), saying why: not what asyncpg was doing when it noticed.
    lost = [e for e in map(json.loads, out.splitlines()) if "connection lost" in e["event"]]
    assert 1 <= len(lost) <= kills, out[-4000:]
    assert all(e["error"] and "__aexit__" not in e["error"] for e in lost), lost
    assert_exactly(db_dsn, valid, invalid)


# The daemon's newest backend while nothing is stored yet: it is starting (its own
# connection, then the stream's).
STARTING = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name = 'puppylogd' "
    "AND NOT EXISTS (SELECT FROM puppylog.log_streams WHERE lines_stored > 0) "
    "ORDER BY backend_start DESC LIMIT 1"
)
# ... and not its oldest: the stream's connection, registering the stream.
REGISTERING = STARTING.replace(
    "ORDER BY",
    "AND backend_start > (SELECT min(backend_start) FROM pg_stat_activity "
    "WHERE datname = current_database() AND application_name = 'puppylogd') ORDER BY",
)


def test_backends_killed_while_once_starts_are_one_warning_each(
    db_dsn: str, tmp_path: Path
) -> None:
    """--once whose connections are terminated while it starts (the migrations, the group,
    the stream's registration...) reconnects with a warning each, not a traceback and exit 1,
    and stores every line once."""
    log = tmp_path / "access.log"
    append(log, clf_lines(0, 1000, recent(60)) + b"junk\n")
    kills = 0
    with start_daemon(db_dsn, log, once=True) as daemon:
        while kills < 4 and daemon.poll() is None:
            os.kill(daemon.pid, signal.SIGSTOP)
            try:
                pid = query_val(db_dsn, STARTING if kills < 2 else REGISTERING)
                if pid is not None and end_backend(db_dsn, pid):
                    kills += 1
            finally:
                os.kill(daemon.pid, signal.SIGCONT)
            time.sleep(0.005)
        code = daemon.wait(60)
        out = daemon.output()
    assert code == 0, out[-4000:]
    assert kills == 4, out[-4000:]
    assert journal_noise(out) == []
    assert_exactly(db_dsn, 1000, 1)


def test_copytruncate_during_a_database_outage(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    """The reader is behind (the database is down) when the file is copied and truncated:
    the lines it had not read yet are read from the copy, each stored once."""
    cluster = make_cluster()
    dsn = cluster.dsn()
    log = tmp_path / "access.log"
    n = 0

    def write(count: int) -> None:
        nonlocal n
        append(log, clf_lines(n, count, recent(30)))
        n += count

    write(1000)
    with start_daemon(dsn, log, batch_lines=1000, **LIVE) as daemon:
        wait_rows(dsn, 1000)
        cluster.stop()
        wait_for(
            lambda: "waiting for database" in daemon.output(),
            20,
            message=lambda: "the daemon noticed the outage\n" + daemon.output()[-3000:],
        )
        # More than the reader holds while it cannot store (a few batches, one read of
        # 1 MiB): the rest is only in the copy once the file is truncated.
        write(30_000)
        assert log.stat().st_size > 2 << 20
        time.sleep(0.5)
        shutil.copyfile(log, tmp_path / "access.log.1")
        os.truncate(log, 0)
        write(300)  # shorter than what was read: a truncation by size
        cluster.start()
        write(200)
        wait_rows(dsn, n, timeout=60, daemon=daemon)
        daemon.assert_running()
        assert daemon.stop() == 0, daemon.output()[-3000:]
        out = daemon.output()
    assert_exactly(dsn, n)
    assert n == 31_500
    assert "may be lost" not in out


def test_a_read_only_database_is_said_once_and_retried_ever_more_slowly(
    db_dsn: str, tmp_path: Path
) -> None:
    """A failure that is not the connection's repeats on every batch: one error, no flood."""
    log = tmp_path / "access.log"
    name = query_val(db_dsn, "SELECT current_database()")
    admin = pg.with_database(db_dsn, "postgres")
    append(log, clf_lines(0, 100, recent(30)))
    with start_daemon(db_dsn, log, **LIVE) as daemon:
        wait_rows(db_dsn, 100)
        query_val(admin, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        terminate_daemon_backends(db_dsn)  # sessions from now on are read-only
        append(log, clf_lines(100, 100, recent(30)))
        time.sleep(5)
        query_val(admin, f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        wait_rows(db_dsn, 200, timeout=30, daemon=daemon)
        assert daemon.stop() == 0, daemon.output()[-3000:]
        events = [json.loads(line) for line in daemon.output().splitlines()]
    failed = [e for e in events if e["event"] == "batch failed; will retry"]
    assert len(failed) == 1, len(failed)
    assert "read-only transaction" in failed[0]["error"]
    # Retried after 0.25, 0.5, 1, 2 s...: a handful of attempts in 5 s, not twenty.
    (summary,) = [e for e in events if e["event"] == "batch failures suppressed"]
    assert 1 <= summary["suppressed"] <= 5, summary
    assert_exactly(db_dsn, 200)


def test_from_end_skips_existing_lines_on_first_start(db_dsn: str, tmp_path: Path) -> None:
    """--from-end: what the file holds at first start is skipped, new lines are stored."""
    log = tmp_path / "access.log"
    append(log, clf_lines(0, 100, recent(30)))
    with start_daemon(db_dsn, log, from_end=True, **LIVE) as daemon:
        wait_for(lambda: '"ready"' in daemon.output(), 20, message="daemon ready")
        append(log, clf_lines(1000, 10, recent(20)))
        wait_rows(db_dsn, 10)
        time.sleep(0.3)
        assert daemon.stop() == 0
    assert_exactly(db_dsn, 10)
    paths = {r["path"] for r in query_rows(db_dsn, "SELECT path FROM puppylog.log_records")}
    assert paths == {f"/pages/id-{i}" for i in range(1000, 1010)}


def test_from_end_position_survives_a_kill_before_any_new_line(db_dsn: str, tmp_path: Path) -> None:
    """The --from-end starting point is durable: lines added while the daemon is down count."""
    log = tmp_path / "access.log"
    append(log, clf_lines(0, 100, recent(30)))
    with start_daemon(db_dsn, log, from_end=True, **LIVE) as daemon:
        wait_for(lambda: '"ready"' in daemon.output(), 20, message="daemon ready")
        daemon.kill9()
    append(log, clf_lines(1000, 10, recent(20)))
    with start_daemon(db_dsn, log, from_end=True, **LIVE) as daemon:
        wait_rows(db_dsn, 10, daemon=daemon)
        append(log, clf_lines(2000, 5, recent(10)))
        wait_rows(db_dsn, 15, daemon=daemon)
        assert daemon.stop() == 0
    assert_exactly(db_dsn, 15)


# The daemon's COPYs of a batch, running on the server.
COPYING = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'puppylogd' "
    "AND state = 'active' AND query LIKE 'COPY%'"
)


async def copying(dsn: str, log: Path, *, once: bool) -> tuple[StreamIngest, asyncio.Task[None]]:
    """Start a stream on ``log`` (``run`` or ``run_once``) and return once its COPY is on."""
    admin = await asyncpg.connect(dsn)
    try:
        group = await admin.fetchval(
            "INSERT INTO puppylog.log_groups (name) VALUES ('hung') RETURNING id"
        )
        settings = Settings(dsn=dsn, log_files=[log], once=once, batch_lines=5000)
        ingest = StreamIngest(settings, dsn, log, group)
        await ingest.register()
        stream = asyncio.create_task(ingest.run_once() if once else ingest.run(asyncio.Event()))
        async with asyncio.timeout(30):
            while not await admin.fetchval(COPYING):
                await asyncio.sleep(0.001)
    finally:
        await admin.close()
    return ingest, stream


@pytest.mark.parametrize("once", [False, True])
async def test_a_stream_cancelled_on_a_hung_server_leaves_no_task_behind(
    once: bool, make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    # SIGTERM while the server hangs mid-COPY: after its grace time the daemon cancels the
    # stream (run, or --once's run_once), then, closing timing out, terminates its
    # connections. Nothing the stream started may fail afterwards with no one to hear it
    # ("Task exception was never retrieved" for a commit, or its transaction's ROLLBACK).
    cluster = make_cluster()
    dsn = cluster.dsn()
    log = tmp_path / "big.log"
    big_file(log)
    reports = loop_reports()
    ingest, stream = await copying(dsn, log, once=once)
    cluster.pause()
    try:
        await asyncio.sleep(0.3)  # the COPY cannot go on
        stream.cancel()
        await asyncio.gather(stream, return_exceptions=True)
        ingest.terminate()
    finally:
        cluster.resume()
    await asyncio.sleep(1.0)  # what was left running ends
    del stream  # its traceback holds the frames that held what it started
    gc.collect()
    assert [r["message"] for r in reports] == []


async def test_a_batch_abandoned_on_a_hung_server_does_not_hold_its_connection(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    # --once stopped while the server hangs mid-COPY: once its batches are cancelled, the
    # stream is marked stopped. Should the server answer again meanwhile, that must not find
    # the connection still busy with the abandoned transaction ("could not mark stream
    # stopped: cannot perform operation: another operation is in progress").
    cluster = make_cluster()
    dsn = cluster.dsn()
    log = tmp_path / "big.log"
    big_file(log)
    ingest, stream = await copying(dsn, log, once=True)
    cluster.pause()
    try:
        await asyncio.sleep(0.3)  # the COPY cannot go on
        stream.cancel()
        await asyncio.gather(stream, return_exceptions=True)
    finally:
        cluster.resume()
    try:
        with structlog.testing.capture_logs() as logs:
            await asyncio.wait_for(ingest.mark_stopped(), timeout=10)
    finally:
        await ingest.close()
    assert [e for e in logs if e["log_level"] != "info"] == []


def test_once_stopped_while_the_server_hangs_exits_without_waiting_for_it(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    """SIGTERM to --once with the server hung mid-COPY: it exits 143 while the server still
    hangs (the batches in flight get STOP_ONCE_SECONDS, each connection CLOSE_SECONDS to
    close, well within systemd's TimeoutStopSec of 30 s), with no traceback."""
    cluster = make_cluster()
    dsn = cluster.dsn()
    log = tmp_path / "big.log"
    big_file(log)
    with start_daemon(dsn, log, once=True, batch_lines=5000) as daemon:
        wait_for(lambda: query_val(dsn, COPYING), 30, interval=0.002, message="a COPY")
        cluster.pause()
        try:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(30)
        finally:
            cluster.resume()
        out = daemon.output()
    assert code == 128 + signal.SIGTERM, out[-4000:]
    assert journal_noise(out) == []
    assert "stopped before the end of the files" in out


def test_a_batch_lost_with_its_connection_after_a_stop_is_said_with_the_reason(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    """SIGTERM to --once, then its COPY connections die: one warning naming the reason.

    Not asyncpg's account of what it was doing (``cannot call Transaction.__aexit__()``).
    The server hangs while the stop arrives, so the batch fails only after it.
    """
    cluster = make_cluster()
    dsn = cluster.dsn()
    log = tmp_path / "big.log"
    valid, invalid = big_file(log)
    backends = (
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'puppylogd' "
        "AND state = 'active' AND query LIKE 'COPY%'"
    )
    with start_daemon(dsn, log, once=True, batch_lines=5000) as daemon:
        pids = wait_for(lambda: [r[0] for r in query_rows(dsn, backends)], 30, interval=0.002)
        cluster.pause()
        try:
            daemon.send_signal(signal.SIGTERM)
            wait_for(lambda: '"stopping"' in daemon.output(), 10)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)  # the server restarts its backends on resume
        finally:
            cluster.resume()
        code = daemon.wait(30)
        out = daemon.output()
    assert code == 128 + signal.SIGTERM, out[-4000:]
    assert "stopped with a batch not stored" in out, out[-4000:]
    assert journal_noise(out) == []
    wait_for(lambda: run_once(dsn, log).returncode == 0, 60)
    assert_exactly(dsn, valid, invalid)


def test_once_stopped_while_registering_on_a_hung_server_exits_without_waiting_for_it(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    """SIGTERM to --once while it registers its stream with the server hung: exit 143.

    Before any line is read there is nothing to commit; the stop must not wait for a server
    that may never answer (it did, for ever: registering has no timeout of its own).
    """
    cluster = make_cluster()
    dsn = cluster.dsn()
    log = tmp_path / "access.log"
    log.write_bytes(clf_lines(0, 100, recent(60)))
    daemon_conns = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'puppylogd'"
    paused = False

    def registering(pid: int) -> bool:
        # Stopped: its control connection and the stream's are open, no stream registered.
        nonlocal paused
        if query_val(dsn, daemon_conns) < 2 or not query_val(
            dsn, "SELECT to_regclass('puppylog.log_streams') IS NOT NULL"
        ):
            return False
        if query_val(dsn, "SELECT count(*) FROM puppylog.log_streams"):
            raise AssertionError("registered before the moment was seen: retry the test")
        cluster.pause()
        paused = True
        return True

    with start_daemon(dsn, log, once=True) as daemon:
        try:
            signal_at(daemon.pid, registering, signal.SIGTERM)
            code = daemon.wait(30)
        finally:
            if paused:
                cluster.resume()
        out = daemon.output()
    assert code == 128 + signal.SIGTERM, out[-4000:]
    assert journal_noise(out) == []
    assert "stopped before the end of the files" in out
    assert count_rows(dsn) == 0
    assert run_once(dsn, log).returncode == 0
    assert count_rows(dsn) == 100


async def test_the_copy_connection_gets_a_wide_send_buffer(db_dsn: str, tmp_path: Path) -> None:
    # The daemon's ingest connection asks for a send buffer that holds most of a batch, so
    # PostgreSQL keeps reading the COPY while the daemon parses (see db.widen_send_buffer).
    settings = Settings(dsn=db_dsn, log_files=[tmp_path / "access.log"])
    ingest = StreamIngest(settings, db_dsn, tmp_path / "access.log", group_id=1)
    try:
        conn = await ingest._connection()
        sock = conn._transport.get_extra_info("socket")  # type: ignore[attr-defined]
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    finally:
        await ingest.close()
    wmem_max = int(Path("/proc/sys/net/core/wmem_max").read_text(encoding="ascii"))
    # Linux reports twice the size asked for (bookkeeping), capped at twice wmem_max.
    assert granted >= 2 * min(COPY_SEND_BUFFER, wmem_max)


async def test_once_pipeline_recovers_from_backends_killed_mid_batch(
    db_dsn: str, tmp_path: Path
) -> None:
    # --once copies a batch on one connection while the batch before finishes on the
    # other, parses the next and has read the one after: a connection killed at any point
    # of that pipeline (both, or just one of the two) rewinds to the checkpoint, and every
    # line still ends up stored exactly once.
    log = tmp_path / "access.log"
    lines = 4000
    append(log, clf_lines(0, lines, recent(120)))
    settings = Settings(dsn=db_dsn, log_files=[log], once=True, batch_lines=100)
    admin = await asyncpg.connect(db_dsn)
    others = "datname = current_database() AND pid <> pg_backend_pid()"
    victims = {
        3: f"SELECT pid FROM pg_stat_activity WHERE {others}",
        11: f"SELECT pid FROM pg_stat_activity WHERE {others} ORDER BY backend_start LIMIT 1",
        19: f"SELECT pid FROM pg_stat_activity WHERE {others} ORDER BY backend_start DESC LIMIT 1",
        27: f"SELECT pid FROM pg_stat_activity WHERE {others}",
    }
    kills: list[asyncio.Task[Any]] = []

    def kill_during_the_next_batch() -> None:
        # Called as a batch commits: the next one is already being copied (or about to be).
        which = victims.pop(ingest.stats.batches, None)
        if which is not None:
            kills.append(
                asyncio.get_running_loop().create_task(
                    admin.fetchval(f"SELECT count(pg_terminate_backend(pid)) FROM ({which}) v")
                )
            )

    try:
        group = await admin.fetchval(
            "INSERT INTO puppylog.log_groups (name) VALUES ('once') RETURNING id"
        )
        ingest = StreamIngest(settings, db_dsn, log, group, on_progress=kill_during_the_next_batch)
        await ingest.register()
        try:
            await asyncio.wait_for(ingest.run_once(), timeout=60)
        finally:
            await ingest.close()
        killed = await asyncio.gather(*kills)
        row = await admin.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT path) AS d, "
            "(SELECT sum(lines_stored) FROM puppylog.log_streams) AS stored "
            "FROM puppylog.log_records"
        )
    finally:
        await admin.close()
    assert row is not None
    assert not victims, f"not all kills happened: {victims}"
    assert all(n >= 1 for n in killed), killed  # each ended at least one ingest connection
    assert (row["n"], row["d"], row["stored"]) == (lines, lines, lines)


def test_once_history_is_the_same_in_one_batch_or_many(
    pg_server: pg.PgServer, pg_template: str, tmp_path: Path
) -> None:
    # Small batches overlap (one copies while the one before commits on the other
    # connection); the history must not depend on it: rollups, published buckets and
    # alerts equal those of the whole file stored as one batch.
    t0 = recent(900)
    log = tmp_path / "access.log"
    sections = ["pages", "api", "img", "login", "report"]
    users = ["-", "-", "james", "jill", "bob"]
    methods = ["GET", "GET", "POST", "PUT"]
    statuses = [200, 200, 304, 404, 500]
    out = bytearray()
    i = 0
    for second in range(420):
        # 16 lines/s for 200 s (the alert fires), then 3 lines/s (it recovers).
        for k in range(16 if second < 200 else 3):
            out += clf_line(
                i,
                t0 + timedelta(seconds=second),
                host=f"10.0.{k % 7}.{i % 11}",
                user=users[i % 5],
                method=methods[i % 4],
                section=sections[(i // 3) % 5],
                status=statuses[i % 5],
                size=None if i % 13 == 0 else i % 997,
            )
            i += 1
        if second % 50 == 0:
            out += b"a malformed line\n"
    append(log, bytes(out))

    def history(batch_lines: int) -> list[list[dict[str, Any]]]:
        name = pg.unique_name("t")
        pg.run_async(lambda: pg.create_database(pg_server.admin_dsn, name, template=pg_template))
        dsn = pg_server.dsn(name)
        try:
            run_once(dsn, log, batch_lines=batch_lines, lateness_seconds=0)
            return [
                [dict(r) for r in query_rows(dsn, sql)]
                for sql in (
                    "SELECT ts, hits, bytes, s2xx, s3xx, s4xx, s5xx, s_other "
                    "FROM puppylog.stats_seconds ORDER BY ts",
                    "SELECT bucket, dim, key, hits FROM puppylog.bucket_counts "
                    "ORDER BY bucket, dim, key",
                    # Rejected lines are reported in the first bucket closed after them,
                    # which depends on the batches: left out.
                    "SELECT bucket, payload - 'rejected' AS payload FROM puppylog.stats_buckets "
                    "ORDER BY bucket",
                    "SELECT triggered_at, hits_at_trigger, recovered_at, hits_at_recovery "
                    "FROM puppylog.alert_history ORDER BY id",
                    "SELECT count(*) AS n, count(DISTINCT path) AS d FROM puppylog.log_records",
                )
            ]
        finally:
            pg.run_async(lambda: pg.drop_database(pg_server.admin_dsn, name))

    many = history(97)
    one = history(1_000_000)
    assert many[4] == one[4] == [{"n": i, "d": i}]
    assert len(many[3]) == 1 and many[3][0]["recovered_at"] is not None, many[3]
    assert len(many[2]) >= 40
    assert many == one


async def test_heartbeat_waits_for_lines_read_but_not_yet_stored(
    db_dsn: str, tmp_path: Path
) -> None:
    # After an outage the reader catches up a backlog: it may have read to the end of the
    # file a chunk that is still being parsed when the idle heartbeat is due. The wall clock
    # must not close the seconds of those lines before they are stored (a CI run once judged
    # a busy second from the lines stored before a crash, and missed its alert).
    log = tmp_path / "access.log"
    old = recent(20)
    append(log, clf_lines(0, 50, old))
    lateness = 2
    settings = Settings(dsn=db_dsn, log_files=[log], lateness_seconds=lateness)
    admin = await asyncpg.connect(db_dsn)
    watermark = "SELECT watermark FROM puppylog.log_streams WHERE id = $1"
    try:
        group = await admin.fetchval(
            "INSERT INTO puppylog.log_groups (name) VALUES ('live') RETURNING id"
        )
        ingest = StreamIngest(settings, db_dsn, log, group)
        try:
            await ingest.register()
            chunk = ingest._tailer.read_available(1000)
            assert chunk is not None and ingest._tailer.at_eof()
            await ingest._heartbeat()  # the whole file is read, none of it stored
            in_flight = await admin.fetchval(watermark, ingest.stream_id)
            await ingest._commit(await ingest._prepare(chunk))
            await ingest._heartbeat()  # read and stored: quiet time now counts as zero traffic
            after = await admin.fetchval(watermark, ingest.stream_id)
        finally:
            await ingest.close()
    finally:
        await admin.close()
    # The stream's time must not pass the lines in flight: their seconds stay open.
    assert in_flight is None or in_flight <= old, in_flight
    assert after is not None and after >= recent(lateness + 2)


def test_two_daemons_on_one_stream_store_each_line_once_and_say_so_once(
    db_dsn: str, tmp_path: Path
) -> None:
    """The same file, group and host twice (a copy-pasted unit): no duplicate, one warning."""
    path = tmp_path / "access.log"
    written = 0
    with (
        start_daemon(db_dsn, path, poll_interval=0.02, batch_ms=20) as first,
        start_daemon(db_dsn, path, poll_interval=0.02, batch_ms=20) as second,
    ):
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            append(path, clf_lines(written, 50, recent(30)))
            written += 50
            time.sleep(0.02)
        wait_for(lambda: count_rows(db_dsn) == written, 30, message=first.output)
        assert first.stop() == 0 and second.stop() == 0
        outputs = [first.output(), second.output()]
    c = counts(db_dsn)
    assert (c.rows, c.duplicates) == (written, 0)
    events = [json.loads(line) for out in outputs for line in out.splitlines()]
    conflicts = [e for e in events if e["event"].startswith("checkpoint moved by someone")]
    summaries = [e for e in events if e["event"] == "checkpoint conflicts suppressed"]
    assert 1 <= len(conflicts) <= 2, len(conflicts)  # one per daemon and minute at most
    assert len(summaries) <= 2
