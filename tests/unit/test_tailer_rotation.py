"""Rotations while the tailer was stopped: every rotated file after the checkpoint is read.

With two (or more) rotations while the daemon is down, the checkpoint's file is now
``access.log.2`` and ``access.log.1`` holds lines never read. After draining the
checkpoint's file the tailer drains the newer rotated siblings, oldest first, then follows
the path.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import os
import shutil
import time
from pathlib import Path

import pytest

from puppylogd.tailer import TOO_LONG_KEEP, Chunk, Tailer
from tests.unit.test_tailer import append, drain
from tests.unit.test_tailer import make as make_tailer
from tests.unit.test_tailer_compressed import COMPRESSORS, checkpoint_after


def make(path: Path) -> Tailer:
    return make_tailer(path, rotate_grace=0.05)


def lines_of(chunks: list[Chunk]) -> list[bytes]:
    return [line for c in chunks for line in c.lines]


def assert_contiguous(chunks: list[Chunk]) -> None:
    for a, b in itertools.pairwise(chunks):
        assert b.start == a.end


def rotate(p: Path, keep: int = 5) -> None:
    """Rotate like logrotate (numbered, no compression): .N-1 -> .N ... path -> .1."""
    for n in range(keep - 1, 0, -1):
        older = p.with_name(f"{p.name}.{n}")
        if older.exists():
            older.rename(p.with_name(f"{p.name}.{n + 1}"))
    p.rename(p.with_name(p.name + ".1"))
    time.sleep(0.01)  # distinct mtimes even on coarse clocks


async def test_two_rotations_while_stopped_read_the_middle_file(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, b"a1\na2\n")
    append(p, b"a3\n")  # after the checkpoint, before the first rotation
    rotate(p)
    p.write_bytes(b"b1\nb2\npartial")  # a writer that moved on leaves no newline
    rotate(p)
    p.write_bytes(b"c1\n")
    t = make(p)
    assert t.open(cp) == "resumed from rotated file access.log.2"
    chunks: list[Chunk] = []
    async with asyncio.timeout(5):
        while len(lines_of(chunks)) < 5:
            chunks.append(await t.next_chunk(100, 0.02))
    assert lines_of(chunks) == [b"a3", b"b1", b"b2", b"partial", b"c1"]
    assert chunks[0].start == cp
    assert [c.event for c in chunks if c.event] == ["rotated", "rotated"]
    assert_contiguous(chunks)
    t.close()


def test_three_rotations_read_available_drains_all_in_order(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, b"a1\n")
    append(p, b"a2\n")
    for name in (b"b", b"c", b"d"):
        rotate(p)
        p.write_bytes(name + b"1\n" + name + b"2\n")
    t = make(p)
    assert t.open(cp) == "resumed from rotated file access.log.3"
    chunks = drain(t, max_lines=2)
    assert lines_of(chunks) == [b"a2", b"b1", b"b2", b"c1", b"c2", b"d1", b"d2"]
    assert_contiguous(chunks)
    t.close()


def test_older_odd_and_being_compressed_siblings_are_not_read(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    (tmp_path / "access.log.4").write_bytes(b"older rotation\n")
    (tmp_path / "access.log.5.gz").write_bytes(gzip.compress(b"older, compressed\n"))
    time.sleep(0.01)
    cp = checkpoint_after(p, b"a1\n")
    append(p, b"a2\n")
    rotate(p, keep=2)  # .1 -> .2, path -> .1 (.4 untouched)
    p.write_bytes(b"b1\n")
    rotate(p, keep=2)  # the checkpoint's file is now .2
    p.write_bytes(b"c1\n")
    # Newer than the checkpoint's file, but not rotated copies of it to read (.1.gz: .1
    # being compressed, half written; .zst: no rotation suffix):
    (tmp_path / "access.log.1.gz").write_bytes(gzip.compress(b"b1\n")[:12])
    (tmp_path / "access.log.zst").write_bytes(b"compressed\n")
    (tmp_path / "access.log.3").write_bytes(b"higher counter: older rotation\n")
    (tmp_path / "access.log.9").mkdir()
    (tmp_path / "access.log.7").symlink_to(p)
    (tmp_path / "other.log.1").write_bytes(b"another log\n")
    t = make(p)
    assert t.open(cp) == "resumed from rotated file access.log.2"
    assert lines_of(drain(t)) == [b"a2", b"b1", b"c1"]
    t.close()


def test_checkpoint_on_the_path_ignores_siblings(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, b"a1\n")
    (tmp_path / "access.log.1").write_bytes(b"not ours\n")
    append(p, b"a2\n")
    t = make(p)
    assert t.open(cp) == "resumed"
    assert lines_of(drain(t)) == [b"a2"]
    t.close()


def test_date_suffixes_are_read_oldest_first(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, b"a1\n")
    append(p, b"a2\n")
    p.rename(tmp_path / "access.log.20261127")
    time.sleep(0.01)
    p.write_bytes(b"b1\n")
    p.rename(tmp_path / "access.log.20261128")
    time.sleep(0.01)
    p.write_bytes(b"c1\n")
    t = make(p)
    assert t.open(cp) == "resumed from rotated file access.log.20261127"
    assert lines_of(drain(t)) == [b"a2", b"b1", b"c1"]
    t.close()


def test_rewind_anywhere_in_the_chain_replays_the_same_chunks(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, b"a1\n")
    append(p, b"a2\na3\n")
    rotate(p)
    p.write_bytes(b"b1\nb2\nb3\n")
    rotate(p)
    p.write_bytes(b"c1\nc2\n")
    t = make(p)
    t.open(cp)
    chunks = drain(t, max_lines=2)
    assert lines_of(chunks) == [b"a2", b"a3", b"b1", b"b2", b"b3", b"c1", b"c2"]
    assert_contiguous(chunks)
    for i in range(len(chunks)):
        t.rewind(chunks[i].start)
        assert drain(t, max_lines=2) == chunks[i:], i
    t.close()


def test_restart_at_a_checkpoint_in_the_middle_file(tmp_path: Path) -> None:
    """A checkpoint committed on access.log.1 (then rotated to .2) resumes there."""
    p = tmp_path / "access.log"
    cp0 = checkpoint_after(p, b"a1\n")
    rotate(p)
    p.write_bytes(b"b1\nb2\n")
    t = make(p)
    t.open(cp0)
    first = t.read_available(100)
    assert first is not None
    assert first.lines == [b"b1", b"b2"]  # switched to the new file (nothing left in .1)
    cp = first.end
    t.close()
    append(p, b"b3\n")
    rotate(p)
    p.write_bytes(b"c1\n")
    rotate(p)
    p.write_bytes(b"d1\n")
    t = make(p)
    assert t.open(cp) == "resumed from rotated file access.log.2"
    assert lines_of(drain(t)) == [b"b3", b"c1", b"d1"]
    t.close()


def test_reader_behind_two_rotations_reads_the_middle_file(tmp_path: Path) -> None:
    """The reader still in A when the path rotates twice reads B (now .1) before C."""
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\na2\n")
    t = make(p)
    t.open(None)
    first = t.read_available(1)
    assert first is not None
    assert first.lines == [b"a1"]  # behind: a2 is not read yet
    append(p, b"a3\n")
    rotate(p)
    p.write_bytes(b"b1\nb2\n")
    rotate(p)
    p.write_bytes(b"c1\n")
    chunks = [first, *drain(t, max_lines=2)]
    assert lines_of(chunks) == [b"a1", b"a2", b"a3", b"b1", b"b2", b"c1"]
    assert [c.event for c in chunks if c.event] == ["rotated", "rotated"]
    assert_contiguous(chunks)
    append(p, b"c2\n")
    assert lines_of(drain(t)) == [b"c2"]
    t.close()


async def test_reader_behind_with_grace_reads_every_rotated_file(tmp_path: Path) -> None:
    """The live loop (next_chunk, rotate grace) reads all of A, B and C, in that order."""
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\n")
    t = make(p)
    t.open(None)
    chunks = [await t.next_chunk(100, 0.02)]
    append(p, b"a2\n")
    for name in (b"b", b"c", b"d"):
        rotate(p)
        p.write_bytes(name + b"1\n")
    async with asyncio.timeout(5):
        while len(lines_of(chunks)) < 5:
            chunks.append(await t.next_chunk(100, 0.02))
    assert lines_of(chunks) == [b"a1", b"a2", b"b1", b"c1", b"d1"]
    assert_contiguous(chunks)
    t.close()


def test_rotation_while_draining_the_files_found_at_start(tmp_path: Path) -> None:
    """A rotation while the start-up chain is drained: the file that was at the path is read."""
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, b"a1\n")
    append(p, b"a2\n")
    rotate(p)
    p.write_bytes(b"b1\nb2\n")
    rotate(p)
    p.write_bytes(b"c1\n")
    t = make(p)
    assert t.open(cp) == "resumed from rotated file access.log.2"
    chunks = [t.read_available(1), t.read_available(1)]  # a2, then b1 after the switch
    assert lines_of([c for c in chunks if c is not None]) == [b"a2", b"b1"]
    # Rotated again: A is .3, B .2, C .1 and D is at the path.
    rotate(p)
    p.write_bytes(b"d1\n")
    read = [c for c in chunks if c is not None] + drain(t, max_lines=1)
    assert lines_of(read) == [b"a2", b"b1", b"b2", b"c1", b"d1"]
    assert_contiguous(read)
    t.close()


def test_a_file_already_read_is_not_read_again(tmp_path: Path) -> None:
    """A late write to a finished file makes it newer than its successor: still read once."""
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\n")
    t = make(p)
    t.open(None)
    p.rename(tmp_path / "access.log.20261127")
    p.write_bytes(b"")  # B, never written to
    time.sleep(0.01)
    append(tmp_path / "access.log.20261127", b"a2\n")  # a late write to A: newer than B
    chunks = drain(t)
    time.sleep(0.01)
    p.rename(tmp_path / "access.log.20261128")
    p.write_bytes(b"c1\n")
    chunks += drain(t)
    assert lines_of(chunks) == [b"a1", b"a2", b"c1"]
    assert_contiguous(chunks)
    t.close()


def test_live_rotation_reads_no_backup_or_editor_file(tmp_path: Path) -> None:
    """Files named like the log but not rotations (``.bak``, ``.swp``) are never read."""
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\n")
    t = make(p)
    t.open(None)
    chunks = drain(t)
    rotate(p)
    (tmp_path / "access.log.bak").write_bytes(b"a backup\n")
    (tmp_path / "access.log.swp").write_bytes(b"an editor\n")
    p.write_bytes(b"b1\n")
    chunks += drain(t)
    assert lines_of(chunks) == [b"a1", b"b1"]
    t.close()


def rotate_dateext(p: Path, day: int, *, compress: bool = False) -> Path:
    """Rotate like logrotate ``dateext``: path -> ``access.log-202611DD`` (gzipped if asked)."""
    rotated = p.with_name(f"{p.name}-202611{day:02d}")
    p.rename(rotated)
    if compress:
        with rotated.open("rb") as src, gzip.open(f"{rotated}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        rotated.unlink()
        rotated = rotated.with_name(rotated.name + ".gz")
    time.sleep(0.01)
    return rotated


def test_dateext_rotations_while_stopped_read_every_file(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    (tmp_path / "access.log-20261101").write_bytes(b"an older rotation\n")
    time.sleep(0.01)
    cp = checkpoint_after(p, b"a1\n")
    append(p, b"a2\n")
    rotate_dateext(p, 26)
    p.write_bytes(b"b1\n")
    rotate_dateext(p, 27)
    p.write_bytes(b"c1\n")
    rotate_dateext(p, 28)
    p.write_bytes(b"d1\n")
    t = make(p)
    assert t.open(cp) == "resumed from rotated file access.log-20261126"
    assert t.take_warning() is None
    chunks = drain(t)
    assert lines_of(chunks) == [b"a2", b"b1", b"c1", b"d1"]
    assert_contiguous(chunks)
    t.close()


def test_dateext_checkpoint_file_compressed_is_read_from_the_checkpoint(
    tmp_path: Path,
) -> None:
    """The checkpoint's file was gzipped: read on in it from the offset, then the newer ones."""
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, b"a1\n")
    append(p, b"a2: only in the compressed file\n")
    packed = rotate_dateext(p, 26, compress=True)
    p.write_bytes(b"b1\n")
    rotate_dateext(p, 27)
    p.write_bytes(b"c1\n")
    t = make(p)
    assert t.open(cp) == f"resumed from compressed file {packed.name}"
    assert t.take_warning() is None
    assert lines_of(drain(t)) == [b"a2: only in the compressed file", b"b1", b"c1"]
    t.close()


def test_symlinked_path_looks_for_rotated_files_next_to_the_target(tmp_path: Path) -> None:
    """The path is a symlink into another directory, where the log is rotated."""
    logs = tmp_path / "data"
    logs.mkdir()
    target = logs / "access.log"
    link = tmp_path / "link" / "access.log"
    link.parent.mkdir()
    link.symlink_to(target)
    target.write_bytes(b"a1\n")
    t = make(link)
    t.open(None)
    cp = drain(t)[-1].end
    t.close()
    time.sleep(0.01)
    append(target, b"a2\n")  # appended while stopped
    rotate(target)
    target.write_bytes(b"b1\n")
    rotate(target)
    target.write_bytes(b"c1\n")
    t = make(link)
    assert t.open(cp) == "resumed from rotated file access.log.2"
    chunks = drain(t)
    assert lines_of(chunks) == [b"a2", b"b1", b"c1"]
    assert_contiguous(chunks)
    t.close()


def copytruncate(p: Path, copy_name: str) -> Path:
    """Rotate like logrotate ``copytruncate``: copy the file, then empty it in place."""
    copy = p.with_name(copy_name)
    shutil.copyfile(p, copy)
    os.truncate(p, 0)
    time.sleep(0.01)
    return copy


def test_copytruncate_while_stopped_drains_the_copy_from_the_checkpoint(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, b"a1\na2\n")
    append(p, b"a3\na4\n")  # after the checkpoint, before the copy
    copytruncate(p, "access.log.5")
    append(p, b"b1\n")
    t = make(p)
    assert t.open(cp) == "resumed from copy access.log.5"
    assert t.take_warning() is None
    chunks = drain(t)
    assert lines_of(chunks) == [b"a3", b"a4", b"b1"]
    assert chunks[0].start == cp
    assert_contiguous(chunks)
    append(p, b"b2\n")
    assert lines_of(drain(t)) == [b"b2"]
    t.close()


def test_copytruncate_regrown_past_the_checkpoint_while_stopped(tmp_path: Path) -> None:
    """The truncated file grew past the checkpoint again: still found by its copy."""
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, b"a1\n")
    append(p, b"a2\n")
    copytruncate(p, "access.log.1")
    append(p, b"b1 longer than the checkpoint\n")
    t = make(p)
    assert t.open(cp) == "resumed from copy access.log.1"
    assert lines_of(drain(t)) == [b"a2", b"b1 longer than the checkpoint"]
    t.close()


def test_two_copytruncates_while_stopped_read_both_copies(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, b"a1\n")
    append(p, b"a2\n")
    copytruncate(p, "access.log.1")
    append(p, b"b1\n")
    (tmp_path / "access.log.1").rename(tmp_path / "access.log.2")
    copytruncate(p, "access.log.1")
    append(p, b"c1\n")
    t = make(p)
    assert t.open(cp) == "resumed from copy access.log.2"
    assert lines_of(drain(t)) == [b"a2", b"b1", b"c1"]
    t.close()


def test_truncated_while_stopped_without_a_copy_warns(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, b"a1\na2\n")
    (tmp_path / "access.log.1").write_bytes(b"a1\n")  # same start, shorter: not a copy
    os.truncate(p, 0)
    append(p, b"b1\n")
    t = make(p)
    assert t.open(cp) == "truncated"
    warning = t.take_warning()
    assert warning is not None
    assert f"{p} was truncated since the checkpoint (offset 6)" in warning
    assert "may be lost" in warning
    assert "no copy of it found" in warning
    assert lines_of(drain(t)) == [b"b1"]
    t.close()


def test_copytruncate_then_a_rename_rotation_while_stopped_reads_every_file(
    tmp_path: Path,
) -> None:
    """The checkpoint's file, truncated by a copytruncate, was then renamed by a rotation.

    Its inode is found under the rotated name but with other first bytes: the lines after
    the checkpoint are in the copy, the lines after the truncation in the renamed file.
    """
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, b"a1\na2\n")
    append(p, b"a3\n")  # after the checkpoint, before the copy
    copytruncate(p, "access.log.1")
    append(p, b"b1\nb2\n")
    rotate(p)  # the copy becomes .2, the truncated file .1
    append(p, b"c1\n")
    t = make(p)
    assert t.open(cp) == "resumed from copy access.log.2"
    assert t.take_warning() is None
    chunks = drain(t)
    assert lines_of(chunks) == [b"a3", b"b1", b"b2", b"c1"]
    assert chunks[0].start == cp
    assert_contiguous(chunks)
    t.close()


def test_truncated_then_renamed_while_stopped_without_a_copy_is_read_from_0(
    tmp_path: Path,
) -> None:
    """No copy of the lines after the checkpoint: the renamed file is still read, with a warning."""
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, b"a1\na2\n")
    os.truncate(p, 0)
    append(p, b"b1\n")
    rotate(p)
    append(p, b"c1\n")
    t = make(p)
    assert t.open(cp) == "truncated"
    warning = t.take_warning()
    assert warning is not None and "now access.log.1, was truncated" in warning, warning
    assert lines_of(drain(t)) == [b"b1", b"c1"]
    t.close()


def behind(p: Path, data: bytes) -> tuple[Tailer, Chunk]:
    """Write ``data`` to a new ``p`` and return a tailer that took only its first line.

    The tailer has read all of ``data`` (one read) but split off one line: the rest is
    buffered, read but not yet handed out.
    """
    p.write_bytes(data)
    t = make(p)
    t.open(None)
    first = t.read_available(1)
    assert first is not None
    assert len(first.lines) == 1
    return t, first


def test_copytruncate_while_running_behind_reads_the_rest_from_the_copy(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    t, first = behind(p, b"a1\na2\na3\n")
    append(p, b"a4\na5\n")  # never read before the copy
    copytruncate(p, "access.log.1")
    append(p, b"b1\n")  # shorter than the offset read: a truncation by size
    chunks = [first, *drain(t, max_lines=2)]
    assert lines_of(chunks) == [b"a1", b"a2", b"a3", b"a4", b"a5", b"b1"]
    assert [c.event for c in chunks if c.event] == ["truncated", "rotated"]
    assert_contiguous(chunks)
    assert t.take_warning() is None
    event = next(c for c in chunks if c.event == "truncated")
    copy_ino = (tmp_path / "access.log.1").stat().st_ino
    assert (event.start.inode, event.end.inode) == (p.stat().st_ino, copy_ino)
    append(p, b"b2\n")
    assert lines_of(drain(t)) == [b"b2"]
    t.close()


def test_copytruncate_while_running_regrown_past_the_offset(tmp_path: Path) -> None:
    """The truncated file grew past the offset read before the tailer looked: the copy."""
    p = tmp_path / "access.log"
    t, first = behind(p, b"a1\na2\n")
    append(p, b"a3\n")
    copytruncate(p, "access.log.1")
    append(p, b"b1 longer than all that was read before\n")
    chunks = [first, *drain(t)]
    assert lines_of(chunks) == [b"a1", b"a2", b"a3", b"b1 longer than all that was read before"]
    assert_contiguous(chunks)
    t.close()


async def test_copytruncate_while_running_behind_with_grace(tmp_path: Path) -> None:
    """The live loop (next_chunk, rotate grace) reads the copy, then the truncated file."""
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\n")
    t = make(p)
    t.open(None)
    chunks = [await t.next_chunk(100, 0.02)]
    append(p, b"a2\na3\n")
    copytruncate(p, "access.log.1")
    append(p, b"b1 b1\n")
    async with asyncio.timeout(5):
        while len(lines_of(chunks)) < 4:
            chunks.append(await t.next_chunk(100, 0.02))
    assert lines_of(chunks) == [b"a1", b"a2", b"a3", b"b1 b1"]
    assert_contiguous(chunks)
    t.close()


def test_two_copytruncates_while_running_behind_read_both_copies(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    t, first = behind(p, b"a1\na2\n")
    copytruncate(p, "access.log.1")
    append(p, b"b1\nb2\n")
    (tmp_path / "access.log.1").rename(tmp_path / "access.log.2")
    copytruncate(p, "access.log.1")
    append(p, b"c1\n")
    chunks = [first, *drain(t)]
    assert lines_of(chunks) == [b"a1", b"a2", b"b1", b"b2", b"c1"]
    assert_contiguous(chunks)
    t.close()


def test_copytruncate_while_running_inside_a_line_too_long(tmp_path: Path) -> None:
    """Behind inside a line too long: it is reported once, from the copy, whole."""
    p = tmp_path / "access.log"
    long = b"L" * 300
    p.write_bytes(b"a1\n" + long[:150])
    t = make_tailer(p, rotate_grace=0.05, max_line_bytes=100, read_size=64)
    t.open(None)
    chunks = drain(t)
    assert lines_of(chunks) == [b"a1"]
    append(p, long[150:] + b"\na2\n")
    copytruncate(p, "access.log.1")
    append(p, b"b1\n")
    chunks += drain(t)
    assert lines_of(chunks) == [b"a1", b"a2", b"b1"]
    assert [x for c in chunks for x in c.too_long] == [long[:TOO_LONG_KEEP]]
    assert_contiguous(chunks)
    t.close()


def test_copytruncate_while_running_from_end_inside_a_line_too_long(tmp_path: Path) -> None:
    """Started from the end inside a line too long: its rest is still dropped, from the copy."""
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\n" + b"L" * 70_000)  # its start is too far back to be looked for
    t = make_tailer(p, rotate_grace=0.05, max_line_bytes=100)
    assert t.open(None, from_end=True) == "from end"
    assert drain(t) == []
    append(p, b"rest of it\na2\n")
    copytruncate(p, "access.log.1")
    append(p, b"b1\n")
    chunks = drain(t)
    assert lines_of(chunks) == [b"a2", b"b1"]
    assert [x for c in chunks for x in c.too_long] == []
    t.close()


def test_copytruncate_while_running_rewind_and_restart_anywhere(tmp_path: Path) -> None:
    """Every position handed out across the copy gives the same lines after, by rewind
    (the ingest after a failed commit) or by a new tailer (a restart after a crash)."""
    p = tmp_path / "access.log"
    t, first = behind(p, b"a1\na2\na3\n")
    append(p, b"a4\n")
    copytruncate(p, "access.log.1")
    append(p, b"b1\nb2\n")
    chunks = [first, *drain(t, max_lines=1)]
    want = [b"a1", b"a2", b"a3", b"a4", b"b1", b"b2"]
    assert lines_of(chunks) == want
    assert_contiguous(chunks)
    # Newest first: rewinds to the current file, the copy, then the truncated file.
    for i in reversed(range(len(chunks))):
        t.rewind(chunks[i].start)
        again = drain(t, max_lines=1)
        assert lines_of(again) == lines_of(chunks[i:]), i
        assert again[0].start == chunks[i].start, i
        assert_contiguous(again)
    for i in range(len(chunks)):
        t.rewind(chunks[i].start)
        assert lines_of(drain(t, max_lines=1)) == lines_of(chunks[i:]), i
    t.close()
    for c in chunks:
        restarted = make(p)
        restarted.open(c.start)
        assert restarted.take_warning() is None
        assert lines_of(drain(restarted)) == lines_of([c, *chunks[chunks.index(c) + 1 :]])
        restarted.close()


def test_rewind_into_the_truncated_file_replays_the_switch_to_the_copy(tmp_path: Path) -> None:
    """A rewind to the truncated file while in the copy finds the copy again."""
    p = tmp_path / "access.log"
    t, first = behind(p, b"a1\na2\na3\n")
    append(p, b"a4\na5\n")
    copytruncate(p, "access.log.1")
    append(p, b"b1\n")
    chunks = [first]
    for _ in range(4):  # a2 and a3 (read before the truncation), a4 and a5 (in the copy)
        chunk = t.read_available(1)
        assert chunk is not None
        chunks.append(chunk)
    assert lines_of(chunks) == [b"a1", b"a2", b"a3", b"a4", b"a5"]
    assert chunks[3].event == "truncated"
    # Still in the copy: the truncated file is the previous one.
    t.rewind(chunks[3].start)
    assert [t.read_available(1), t.read_available(1)] == chunks[3:]
    t.rewind(chunks[1].start)  # the lines before the event are now read from the copy
    rest = drain(t, max_lines=1)
    assert lines_of(rest) == [b"a2", b"a3", b"a4", b"a5", b"b1"]
    assert rest[0].start == chunks[1].start
    assert_contiguous(rest)
    t.close()


def test_truncated_while_running_without_a_copy_warns(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    t, _ = behind(p, b"a1\na2\n")
    append(p, b"a3\n")
    (tmp_path / "access.log.1").write_bytes(b"a1\n")  # same start, shorter: not a copy
    os.truncate(p, 0)
    append(p, b"b1\n")
    chunks = drain(t)
    assert lines_of(chunks) == [b"a2", b"b1"]  # a3 is lost: it was nowhere else
    assert [c.event for c in chunks] == [None, "truncated"]
    warning = t.take_warning()
    assert warning is not None
    assert f"{p} was truncated or rewritten while being read (at offset 6)" in warning
    assert f"no copy of it found in {tmp_path}" in warning
    assert "may be lost" in warning
    assert t.take_warning() is None
    t.close()


def set_mtime(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.mark.parametrize("later_ns", [0, -2_000_000_000], ids=["same mtime", "older mtime"])
def test_dateext_siblings_are_ordered_by_name_not_mtime(tmp_path: Path, later_ns: int) -> None:
    """Coarse timestamps (or a late write to the older file): the date in the name decides."""
    p = tmp_path / "access.log"
    (tmp_path / "access.log-20261101").write_bytes(b"an older rotation\n")
    cp = checkpoint_after(p, b"a1\n")
    append(p, b"a2\n")
    old = rotate_dateext(p, 26)
    p.write_bytes(b"b1\n")
    middle = rotate_dateext(p, 27)
    p.write_bytes(b"c1\n")
    last = rotate_dateext(p, 28)
    p.write_bytes(b"d1\n")
    mtime = old.stat().st_mtime_ns
    set_mtime(tmp_path / "access.log-20261101", mtime)
    set_mtime(middle, mtime + later_ns)
    set_mtime(last, mtime + later_ns)
    t = make(p)
    assert t.open(cp) == "resumed from rotated file access.log-20261126"
    chunks = drain(t)
    assert lines_of(chunks) == [b"a2", b"b1", b"c1", b"d1"]
    assert_contiguous(chunks)
    t.close()


def test_same_mtime_as_a_deleted_file_is_read(tmp_path: Path) -> None:
    """The old file was deleted, so only mtimes tell: an equal one is no proof of older."""
    p = tmp_path / "access.log"
    t, first = behind(p, b"a1\na2\n")
    mtime = p.stat().st_mtime_ns
    p.unlink()  # the tailer still reads it through its descriptor
    p.write_bytes(b"b1\n")
    rotate(p)  # B is access.log.1
    set_mtime(tmp_path / "access.log.1", mtime)
    p.write_bytes(b"c1\n")
    chunks = [first, *drain(t)]
    assert lines_of(chunks) == [b"a1", b"a2", b"b1", b"c1"]
    assert [c.event for c in chunks if c.event] == ["replaced", "rotated"]
    assert_contiguous(chunks)
    t.close()


def test_same_mtime_as_a_deleted_file_but_already_read_is_not_read_again(
    tmp_path: Path,
) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\n")
    t = make(p)
    t.open(None)
    chunks = drain(t)
    rotate(p)  # A is access.log.1, read to its end
    p.write_bytes(b"b1\n")
    chunks += drain(t)
    mtime = p.stat().st_mtime_ns
    p.unlink()
    set_mtime(tmp_path / "access.log.1", mtime)
    p.write_bytes(b"c1\n")
    chunks += drain(t)
    assert lines_of(chunks) == [b"a1", b"b1", b"c1"]
    assert_contiguous(chunks)
    t.close()


def test_reader_behind_dateext_rotations_within_one_tick(tmp_path: Path) -> None:
    """Rotated twice within one timestamp tick while the reader is behind: B is read."""
    p = tmp_path / "access.log"
    t, first = behind(p, b"a1\na2\n")
    old = rotate_dateext(p, 27)
    p.write_bytes(b"b1\n")
    middle = rotate_dateext(p, 28)
    p.write_bytes(b"c1\n")
    set_mtime(middle, old.stat().st_mtime_ns)
    chunks = [first, *drain(t)]
    assert lines_of(chunks) == [b"a1", b"a2", b"b1", b"c1"]
    assert_contiguous(chunks)
    t.close()


def test_same_mtime_as_a_deleted_file_but_older_than_it_is_not_read(tmp_path: Path) -> None:
    """A sibling there while the deleted file was at the path is older: never its successor.

    Here it was read before the checkpoint (before ``open``), so only that tells it apart
    from a file rotated after it within one timestamp tick.
    """
    p = tmp_path / "access.log"
    older = tmp_path / "access.log.1"
    older.write_bytes(b"a1\n")  # stored before the checkpoint
    cp = checkpoint_after(p, b"b1\n")
    append(p, b"b2\n")
    set_mtime(older, p.stat().st_mtime_ns)  # last written within B's last tick
    t = make(p)
    assert t.open(cp) == "resumed"
    chunks = drain(t)
    p.unlink()  # the tailer still reads B through its descriptor
    p.write_bytes(b"c1\n")
    chunks += drain(t)
    assert lines_of(chunks) == [b"b2", b"c1"]
    assert [c.event for c in chunks if c.event] == ["replaced"]
    assert_contiguous(chunks)
    t.close()


def test_rewind_to_a_closed_file_does_not_read_a_file_finished_before_it(
    tmp_path: Path,
) -> None:
    """A rewind that opens again remembers the files read before the position's file.

    A (dateext name) was finished before B; B is now ``access.log.2`` (a counter: mixed
    names, mtimes decide) and A looks as new as B. Its lines are committed (the position
    is after them): reading A again would store them twice.
    """
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\n")
    t = make(p)
    t.open(None)
    chunks = drain(t)
    a = tmp_path / "access.log-20261127"
    p.rename(a)
    p.write_bytes(b"b1\nb2\n")
    chunks += drain(t, max_lines=1)  # A finished; B read
    set_mtime(a, p.stat().st_mtime_ns)  # within B's last tick (or a late write to A)
    on_b = next(c for c in chunks if c.lines == [b"b2"])
    rotate(p)  # B is access.log.1
    p.write_bytes(b"c1\n")
    chunks += drain(t)
    rotate(p)  # B is access.log.2, C access.log.1
    p.write_bytes(b"d1\n")
    chunks += drain(t)  # B closed: a rewind to it opens again
    assert lines_of(chunks) == [b"a1", b"b1", b"b2", b"c1", b"d1"]
    t.rewind(on_b.start)
    assert t.take_warning() is None
    assert lines_of(drain(t)) == [b"b2", b"c1", b"d1"]
    t.close()


def test_checkpoint_file_compressed_with_zstd_is_read_from_the_checkpoint(
    tmp_path: Path,
) -> None:
    """A ``.zst`` is read like the others: the checkpoint's file in it, then ``access.log.1``."""
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, b"a1\n")
    append(p, b"a2\n")
    rotate(p)
    p.write_bytes(b"b1\n")
    rotate(p)
    p.write_bytes(b"c1\n")
    plain = tmp_path / "access.log.2"
    (tmp_path / "access.log.2.zst").write_bytes(COMPRESSORS[".zst"](plain.read_bytes()))
    plain.unlink()
    t = make(p)
    assert t.open(cp) == "resumed from compressed file access.log.2.zst"
    assert t.take_warning() is None
    assert lines_of(drain(t)) == [b"a2", b"b1", b"c1"]
    t.close()


def test_copytruncate_while_stopped_on_the_emptied_file_reads_the_copy(tmp_path: Path) -> None:
    """A quiet log copy-truncated while running: the checkpoint is not on the empty file.

    From there (offset 0, empty fingerprint) the next copy, made while stopped, could not be
    told from the file: its lines were lost silently.
    """
    p = tmp_path / "access.log"
    p.write_bytes(b"10.0.0.1 first\n")
    t = make(p)
    t.open(None)
    drain(t)
    copytruncate(p, "access.log.1")
    time.sleep(0.06)  # past rotate_grace
    drain(t)
    cp = t.position
    t.close()
    append(p, b"10.0.0.2 written while stopped\n")
    (tmp_path / "access.log.1").rename(tmp_path / "access.log.2")
    copytruncate(p, "access.log.1")
    append(p, b"10.0.0.3 after the copy\n")
    t = make(p)
    t.open(cp)
    assert lines_of(drain(t)) == [b"10.0.0.2 written while stopped", b"10.0.0.3 after the copy"]
    assert t.take_warning() is None
    t.close()


def test_switch_to_an_empty_file_waits_for_its_first_line(tmp_path: Path) -> None:
    """The event comes with the new file's first line; a rewind meanwhile replays it once."""
    p = tmp_path / "access.log"
    p.write_bytes(b"10.0.0.1 old\n")
    t = make(p)
    t.open(None)
    first = drain(t)
    rotate(p)
    p.write_bytes(b"")
    time.sleep(0.06)
    assert t.read_available(10) is None
    assert t.at_eof()
    assert t.position == first[-1].end  # still on the old file
    rotate(p)  # rotated again while empty: one event for both switches
    p.write_bytes(b"")
    time.sleep(0.06)
    assert t.read_available(10) is None
    t.rewind(first[-1].end)
    append(p, b"10.0.0.2 new\n")
    time.sleep(0.06)
    chunks = drain(t)
    assert lines_of(chunks) == [b"10.0.0.2 new"]
    assert [c.event for c in chunks] == ["rotated"]
    assert chunks[0].start == first[-1].end
    t.close()
