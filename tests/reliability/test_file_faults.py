"""File faults: rotations while stopped, replaced and shrinking files, deletion, bad dirs.

Every line carries a unique id; each test ends with the exact counts (records = valid lines
written, no duplicate, rejected = invalid lines) and a clean SIGTERM (exit 0).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import DaemonProcess, append, start_daemon
from tests.reliability.support import LIVE, Lines, assert_exact, record, rotate, wait_stored

INVALID_EVERY = 40


def events(daemon: DaemonProcess) -> list[dict[str, Any]]:
    """Return the daemon's JSON log lines."""
    out = []
    for line in daemon.output().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def loss_warnings(daemon: DaemonProcess) -> list[dict[str, Any]]:
    """Return the daemon's warnings that lines may have been lost."""
    return [
        e for e in events(daemon) if e.get("level") == "warning" and "may be lost" in e["event"]
    ]


def overwrite_in_place(path: Path, data: bytes) -> None:
    """Rewrite ``path`` from offset 0 without changing its inode (nor, here, its size)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_two_rotations_while_stopped(db_dsn: str, tmp_path: Path) -> None:
    """The checkpoint's file is access.log.2 at restart: it, .1 and the path are all read."""
    started = time.monotonic()
    path = tmp_path / "access.log"
    lines = Lines(invalid_every=INVALID_EVERY)
    append(path, lines.make(5000))
    with start_daemon(db_dsn, path, log_path=tmp_path / "d1.log", **LIVE) as daemon:
        wait_stored(db_dsn, lines.valid, lines.invalid, 30, [daemon])
        assert daemon.stop() == 0
    append(path, lines.make(1000))  # unread, in the checkpoint's file
    rotate(path)
    append(path, lines.make(2000))  # unread, in a file the daemon never saw
    rotate(path)
    append(path, lines.make(1500))
    with start_daemon(db_dsn, path, log_path=tmp_path / "d2.log", **LIVE) as daemon:
        wait_stored(db_dsn, lines.valid, lines.invalid, 30, [daemon])
        assert daemon.stop() == 0
        how = [e["how"] for e in events(daemon) if e.get("event") == "stream opened"]
        assert how == ["resumed from rotated file access.log.2"]
    c = assert_exact(db_dsn, lines.valid, lines.invalid)
    record("two rotations while stopped", lines.written, c, time.monotonic() - started)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_copytruncate_while_stopped(db_dsn: str, tmp_path: Path) -> None:
    """The lines between the checkpoint and the copy are read from the copy, then the file."""
    started = time.monotonic()
    path = tmp_path / "access.log"
    lines = Lines(invalid_every=INVALID_EVERY)
    append(path, lines.make(3000))
    with start_daemon(db_dsn, path, log_path=tmp_path / "d1.log", **LIVE) as daemon:
        wait_stored(db_dsn, lines.valid, lines.invalid, 30, [daemon])
        assert daemon.stop() == 0
    append(path, lines.make(1000))  # unread, only in the copy once truncated
    shutil.copyfile(path, tmp_path / "access.log.1")
    os.truncate(path, 0)
    append(path, lines.make(5000))  # past the checkpoint again
    with start_daemon(db_dsn, path, log_path=tmp_path / "d2.log", **LIVE) as daemon:
        wait_stored(db_dsn, lines.valid, lines.invalid, 30, [daemon])
        assert daemon.stop() == 0
        how = [e["how"] for e in events(daemon) if e.get("event") == "stream opened"]
        assert how == ["resumed from copy access.log.1"]
        assert not loss_warnings(daemon)
    c = assert_exact(db_dsn, lines.valid, lines.invalid)
    record("copytruncate while stopped", lines.written, c, time.monotonic() - started)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_file_replaced_by_different_file_of_same_size(db_dsn: str, tmp_path: Path) -> None:
    """Same size, other content: a new inode, or the same inode rewritten, is read from 0."""
    started = time.monotonic()
    path = tmp_path / "access.log"
    n = 3000
    # Ids of equal width give files of equal size.
    gens = [Lines(next_id=k * 1_000_000) for k in range(1, 5)]
    append(path, gens[0].make(n))
    size = path.stat().st_size

    def total() -> tuple[int, int]:
        return sum(g.valid for g in gens), sum(g.invalid for g in gens)

    with start_daemon(db_dsn, path, log_path=tmp_path / "d1.log", **LIVE) as daemon:
        wait_stored(db_dsn, gens[0].valid, 0, 30, [daemon])
        # 1. Replaced by rename while running (new inode, same size).
        other = tmp_path / "access.log.new"
        other.write_bytes(gens[1].make(n))
        assert other.stat().st_size == size
        other.replace(path)
        wait_stored(db_dsn, *total(), 30, [daemon])
        # 2. Rewritten in place while running (same inode, same size), then grown.
        overwrite_in_place(path, gens[2].make(n))
        assert path.stat().st_size == size
        append(path, gens[2].make(10))
        wait_stored(db_dsn, *total(), 30, [daemon])
        assert daemon.stop() == 0
    # 3. Rewritten in place while stopped (same inode, same size as the checkpoint's file).
    append(path, gens[3].make(0))
    checkpoint = path.stat().st_size  # everything was read before the stop
    data = gens[3].make(n + 10)
    assert len(data) == path.stat().st_size
    overwrite_in_place(path, data)
    with start_daemon(db_dsn, path, log_path=tmp_path / "d2.log", **LIVE) as daemon:
        wait_stored(db_dsn, *total(), 30, [daemon])
        assert daemon.stop() == 0
        how = [e["how"] for e in events(daemon) if e.get("event") == "stream opened"]
        assert how == ["checkpoint file replaced: starting at 0"]
        assert [e["event"] for e in loss_warnings(daemon)] == [
            f"{path} was rewritten in place since the checkpoint (offset {checkpoint}) and no "
            f"copy of it found in {tmp_path}: lines written after the checkpoint and before "
            "that may be lost; reading it from 0"
        ]
    valid, invalid = total()
    c = assert_exact(db_dsn, valid, invalid)
    record(
        "file replaced by same-size file (rename; in place running; in place stopped)",
        valid + invalid,
        c,
        time.monotonic() - started,
    )


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_file_that_shrinks(db_dsn: str, tmp_path: Path) -> None:
    """A file cut shorter than the checkpoint (and rewritten) is read again from 0."""
    started = time.monotonic()
    path = tmp_path / "access.log"
    lines = Lines(invalid_every=INVALID_EVERY)
    append(path, lines.make(4000))
    with start_daemon(db_dsn, path, log_path=tmp_path / "d1.log", **LIVE) as daemon:
        wait_stored(db_dsn, lines.valid, lines.invalid, 30, [daemon])
        # While running: truncated, then fewer lines than before.
        os.truncate(path, 0)
        append(path, lines.make(1000))
        wait_stored(db_dsn, lines.valid, lines.invalid, 30, [daemon])
        # While running: truncated and quickly grown past the old offset again.
        old = path.stat().st_size
        os.truncate(path, 0)
        append(path, lines.make(1500))
        assert path.stat().st_size > old
        wait_stored(db_dsn, lines.valid, lines.invalid, 30, [daemon])
        assert daemon.stop() == 0
    # While stopped: shrunk below the checkpoint.
    os.truncate(path, 0)
    append(path, lines.make(300))
    with start_daemon(db_dsn, path, log_path=tmp_path / "d2.log", **LIVE) as daemon:
        wait_stored(db_dsn, lines.valid, lines.invalid, 30, [daemon])
        assert daemon.stop() == 0
        how = [e["how"] for e in events(daemon) if e.get("event") == "stream opened"]
        assert how == ["truncated"]
        (warning,) = loss_warnings(daemon)
        assert warning["event"].startswith(f"{path} was truncated since the checkpoint"), warning
    c = assert_exact(db_dsn, lines.valid, lines.invalid)
    elapsed = time.monotonic() - started
    record("file that shrinks (x2 running, x1 stopped)", lines.written, c, elapsed)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_file_deleted_and_never_recreated(db_dsn: str, tmp_path: Path) -> None:
    """Lines appended to the deleted file by its writer are read; the other file carries on."""
    started = time.monotonic()
    gone, other = tmp_path / "gone.log", tmp_path / "other.log"
    a = Lines(invalid_every=INVALID_EVERY, section="gone")
    b = Lines(invalid_every=INVALID_EVERY, section="other")
    append(gone, a.make(2000))
    append(other, b.make(2000))
    with start_daemon(db_dsn, gone, other, log_path=tmp_path / "d.log", **LIVE) as daemon:
        wait_stored(db_dsn, a.valid + b.valid, a.invalid + b.invalid, 30, [daemon])
        with gone.open("ab") as writer:  # the web server keeps its descriptor
            gone.unlink()
            writer.write(a.make(500))
            writer.flush()
            wait_stored(db_dsn, a.valid + b.valid, a.invalid + b.invalid, 30, [daemon])
        for _ in range(20):  # the other file carries on for a while
            append(other, b.make(100))
            time.sleep(0.1)
        daemon.assert_running()
        wait_stored(db_dsn, a.valid + b.valid, a.invalid + b.invalid, 30, [daemon])
        assert not gone.exists()
        assert daemon.stop() == 0
        assert not [e for e in events(daemon) if e.get("level") == "error"]
    c = assert_exact(db_dsn, a.valid + b.valid, a.invalid + b.invalid)
    record(
        "file deleted and never recreated (+500 lines via the writer's open fd)",
        a.written + b.written,
        c,
        time.monotonic() - started,
    )


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_unreadable_log_directory(db_dsn: str, tmp_path: Path) -> None:
    """A log directory that cannot be entered is one clear error; the other file carries on.

    As root, permissions stop nothing, so the directories are a symlink loop (ELOOP) and a
    regular file (ENOTDIR). Each is one error line, retried until repaired.
    """
    started = time.monotonic()
    good = tmp_path / "good" / "access.log"
    good.parent.mkdir()
    loop = tmp_path / "loopdir"
    loop.symlink_to(loop)
    looped = loop / "access.log"
    not_dir = tmp_path / "plainfile"
    not_dir.write_bytes(b"")
    under_file = not_dir / "access.log"
    g = Lines(invalid_every=INVALID_EVERY, section="good")
    fixed = Lines(invalid_every=INVALID_EVERY, section="fixed")
    append(good, g.make(1000))
    with start_daemon(
        db_dsn, good, looped, under_file, log_path=tmp_path / "d.log", **LIVE
    ) as daemon:
        wait_stored(db_dsn, g.valid, g.invalid, 30, [daemon])
        for _ in range(10):
            append(good, g.make(100))
            time.sleep(0.05)
        wait_stored(db_dsn, g.valid, g.invalid, 30, [daemon])
        errors = {e["path"]: e for e in events(daemon) if e.get("level") == "error"}
        assert sorted(errors) == sorted([str(looped), str(under_file)]), errors
        assert "symbolic links" in errors[str(looped)]["error"], errors
        assert "Not a directory" in errors[str(under_file)]["error"], errors
        for e in errors.values():
            assert e["event"].startswith("cannot open log file"), e
        # Repaired: real directories with the files; picked up without a restart.
        loop.unlink()
        loop.mkdir()
        append(looped, fixed.make(700))
        not_dir.unlink()
        not_dir.mkdir()
        append(under_file, fixed.make(300))
        valid, invalid = g.valid + fixed.valid, g.invalid + fixed.invalid
        wait_stored(db_dsn, valid, invalid, 30, [daemon])
        daemon.assert_running()
        assert daemon.stop() == 0
    c = assert_exact(db_dsn, valid, invalid)
    record(
        "log directory not readable (symlink loop; a file), then repaired",
        g.written + fixed.written,
        c,
        time.monotonic() - started,
    )


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_log_path_that_is_not_a_regular_file(db_dsn: str, tmp_path: Path) -> None:
    """A directory or FIFO at the path is an error naming it, retried until repaired."""
    started = time.monotonic()
    good = tmp_path / "good.log"
    a_dir = tmp_path / "dir.log"
    a_dir.mkdir()
    a_fifo = tmp_path / "fifo.log"
    os.mkfifo(a_fifo)
    g = Lines(invalid_every=INVALID_EVERY, section="good")
    fixed = Lines(invalid_every=INVALID_EVERY, section="fixed")
    append(good, g.make(1000))
    with start_daemon(db_dsn, good, a_dir, a_fifo, log_path=tmp_path / "d.log", **LIVE) as daemon:
        wait_stored(db_dsn, g.valid, g.invalid, 30, [daemon])
        errors = {e["path"]: e for e in events(daemon) if e.get("level") == "error"}
        assert sorted(errors) == sorted([str(a_dir), str(a_fifo)]), errors
        assert errors[str(a_dir)]["error"] == f"{a_dir} is not a regular file (a directory)"
        assert errors[str(a_fifo)]["error"] == f"{a_fifo} is not a regular file (a FIFO)"
        assert not [e for e in events(daemon) if "does not exist" in e.get("event", "")]
        # Repaired: regular files at both paths; picked up without a restart.
        a_dir.rmdir()
        append(a_dir, fixed.make(700))
        a_fifo.unlink()
        append(a_fifo, fixed.make(300))
        valid, invalid = g.valid + fixed.valid, g.invalid + fixed.invalid
        wait_stored(db_dsn, valid, invalid, 30, [daemon])
        daemon.assert_running()
        assert daemon.stop() == 0
    c = assert_exact(db_dsn, valid, invalid)
    record(
        "log path a directory and a FIFO, then repaired",
        g.written + fixed.written,
        c,
        time.monotonic() - started,
    )
