"""Tests for puppylogd.tailer on real files: appearance, partial lines, rotation, truncation."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from puppylogd.tailer import NO_FILE, NOT_REGULAR, TOO_LONG_KEEP, Chunk, NotRegularFileError, Tailer


def make(path: Path, *, rotate_grace: float = 0.3, **kwargs: int) -> Tailer:
    """Return a tailer with a short poll interval so tests stay fast."""
    return Tailer(path, poll_interval=0.01, rotate_grace=rotate_grace, **kwargs)


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


def drain(t: Tailer, max_lines: int = 1000) -> list[Chunk]:
    """Return every chunk readable now (the ``--once`` loop)."""
    chunks: list[Chunk] = []
    while (chunk := t.read_available(max_lines)) is not None:
        chunks.append(chunk)
    assert t.at_eof()
    return chunks


async def collect(t: Tailer, n_lines: int, *, max_lines: int = 100) -> list[Chunk]:
    """Return chunks from next_chunk until ``n_lines`` lines arrived (5 s limit)."""
    chunks: list[Chunk] = []
    async with asyncio.timeout(5):
        while len(lines_of(chunks)) < n_lines:
            chunks.append(await t.next_chunk(max_lines, 0.02))
    return chunks


def lines_of(chunks: Iterable[Chunk]) -> list[bytes]:
    return [line for c in chunks for line in c.lines]


def assert_contiguous(chunks: list[Chunk]) -> None:
    """Each chunk starts exactly where the previous one ended."""
    for a, b in itertools.pairwise(chunks):
        assert b.start == a.end


async def test_waits_for_file_then_reports_appeared(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    t = make(p)
    assert t.open(None) == "waiting for file"
    assert t.read_available(10) is None
    assert t.at_eof()
    assert t.file_size() is None
    task = asyncio.create_task(t.next_chunk(10, 0.02))
    await asyncio.sleep(0.1)
    assert not task.done()
    p.write_bytes(b"a\nb\n")
    chunk = await asyncio.wait_for(task, 2)
    assert chunk.event == "appeared"
    assert chunk.lines == [b"a", b"b"]
    assert chunk.start == NO_FILE
    st = p.stat()
    assert (chunk.end.dev, chunk.end.inode, chunk.end.offset) == (st.st_dev, st.st_ino, 4)
    assert t.file_size() == 4
    t.close()


async def test_partial_line_held_until_newline(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"one\ntw")
    t = make(p)
    assert t.open(None) == "new file"
    chunk = t.read_available(10)
    assert chunk is not None
    assert chunk.lines == [b"one"]
    assert chunk.end.offset == 4
    assert t.read_available(10) is None
    assert t.at_eof()
    append(p, b"o\nthr")
    chunk = t.read_available(10)
    assert chunk is not None
    assert chunk.lines == [b"two"]
    assert chunk.end.offset == 8
    task = asyncio.create_task(t.next_chunk(10, 0.02))
    await asyncio.sleep(0.1)
    assert not task.done()  # "thr" is never emitted early
    append(p, b"ee\n")
    chunk = await asyncio.wait_for(task, 2)
    assert chunk.lines == [b"three"]
    assert chunk.event is None
    t.close()


async def test_crlf_and_empty_lines_kept(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"a\r\nb\r\n\r\n\nc\n")
    t = make(p)
    t.open(None)
    assert lines_of(drain(t)) == [b"a\r", b"b\r", b"\r", b"", b"c"]
    t.close()


async def test_next_chunk_returns_when_max_lines_ready(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"".join(b"l%d\n" % i for i in range(10)))
    t = make(p)
    t.open(None)
    began = time.monotonic()
    chunk = await t.next_chunk(4, 10.0)  # must not wait for max_wait
    assert time.monotonic() - began < 1.0
    assert chunk.lines == [b"l0", b"l1", b"l2", b"l3"]
    rest = await t.next_chunk(100, 0.05)
    assert rest.lines == [b"l%d" % i for i in range(4, 10)]
    assert rest.start == chunk.end
    t.close()


async def test_rename_rotation_keeps_late_writes_to_old_file(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    with p.open("ab", buffering=0) as writer:  # the server's descriptor survives the rename
        writer.write(b"old1\nold2\n")
        t = make(p, rotate_grace=0.5)
        t.open(None)
        first = await collect(t, 2)
        os.rename(p, tmp_path / "access.log.1")
        p.write_bytes(b"new1\nnew2\n")
        writer.write(b"old3\n")
        task = asyncio.create_task(collect(t, 5))
        await asyncio.sleep(0.15)
        writer.write(b"old4\nold-tail")  # still within the grace period; tail has no newline
    chunks = await task
    t.close()
    assert lines_of(first) == [b"old1", b"old2"]
    assert lines_of(chunks) == [b"old3", b"old4", b"old-tail", b"new1", b"new2"]
    assert_contiguous(first + chunks)
    rotated = [c for c in chunks if c.event is not None]
    assert len(rotated) == 1
    switch = rotated[0]
    assert switch.event == "rotated"
    assert switch.lines[0] == b"new1"
    old_st = (tmp_path / "access.log.1").stat()
    new_st = p.stat()
    assert (switch.start.inode, switch.start.offset) == (old_st.st_ino, old_st.st_size)
    assert (switch.end.inode, switch.end.offset) == (new_st.st_ino, 10)
    # Lines before the switch all came from the old file.
    assert all(c.end.inode == old_st.st_ino for c in chunks[: chunks.index(switch)])


async def test_read_available_switches_rotated_file_without_grace(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\n")
    t = make(p, rotate_grace=30.0)
    t.open(None)
    drain(t)
    append(p, b"a2\n")
    os.rename(p, tmp_path / "access.log.1")
    p.write_bytes(b"b1\n")
    chunks = drain(t)
    assert lines_of(chunks) == [b"a2", b"b1"]
    assert [c.event for c in chunks] == [None, "rotated"]
    t.close()


async def test_copytruncate_when_caught_up_goes_on_at_zero(tmp_path: Path) -> None:
    """Nothing left to read in the copy: on to the truncated file, from 0."""
    p = tmp_path / "access.log"
    p.write_bytes(b"aaaa\n" * 10)
    t = make(p)
    t.open(None)
    before = drain(t)
    assert len(lines_of(before)) == 10
    shutil.copy(p, tmp_path / "access.log.1")
    os.truncate(p, 0)
    append(p, b"n1\nn2\n")
    chunks = await collect(t, 2)
    assert lines_of(chunks) == [b"n1", b"n2"]
    # Through the copy (nothing after offset 50 there), then back to the path.
    assert [c.event for c in chunks if c.event] == ["truncated", "rotated"]
    assert chunks[0].event == "truncated"
    assert chunks[0].start == before[-1].end
    assert chunks[0].start.offset == 50
    assert chunks[0].end.inode == (tmp_path / "access.log.1").stat().st_ino
    assert chunks[-1].end.offset == 6
    assert chunks[-1].end.inode == p.stat().st_ino
    assert t.take_warning() is None
    t.close()


async def test_copytruncate_regrown_past_offset_detected_by_fingerprint(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"first-generation line\n")
    t = make(p)
    t.open(None)
    drain(t)
    os.truncate(p, 0)
    append(p, b"second generation, a longer first line\n")  # bigger than the old offset
    chunks = drain(t)
    assert lines_of(chunks) == [b"second generation, a longer first line"]
    assert chunks[0].event == "truncated"
    t.close()


def test_truncated_and_regrown_to_the_same_size_is_read_from_0_at_once(tmp_path: Path) -> None:
    """Regrown between two polls to exactly the size read: no new byte past the offset.

    The first bytes differ (and the mtime changed): noticed at the next poll, not at the
    next write; its lines are read once, from 0.
    """
    p = tmp_path / "access.log"
    p.write_bytes(b"first-generation 1\nfirst-generation 2\n")
    t = make(p)
    t.open(None)
    drain(t)
    mtime = p.stat().st_mtime_ns
    with p.open("r+b") as fh:  # truncate and regrow to the same size in one step
        fh.truncate(0)
        fh.write(b"second generation 1\nsecond gen 222222\n")
    os.utime(p, ns=(mtime + 1_000_000_000, mtime + 1_000_000_000))  # even on coarse clocks
    assert p.stat().st_size == len(b"first-generation 1\nfirst-generation 2\n")
    chunks = drain(t)
    assert lines_of(chunks) == [b"second generation 1", b"second gen 222222"]
    assert chunks[0].event == "truncated"
    append(p, b"n3\n")
    chunks += drain(t)
    assert lines_of(chunks) == [b"second generation 1", b"second gen 222222", b"n3"]
    assert_contiguous(chunks)
    t.close()


async def test_delete_and_recreate_drains_old_descriptor_first(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    with p.open("ab", buffering=0) as writer:
        writer.write(b"a1\n")
        t = make(p, rotate_grace=0.4)
        t.open(None)
        assert lines_of(await collect(t, 1)) == [b"a1"]
        os.unlink(p)
        writer.write(b"a2\n")  # written to the deleted file: still followed
        assert lines_of(await collect(t, 1)) == [b"a2"]
        p.write_bytes(b"b1\n")
        writer.write(b"a3\n")
    chunks = await collect(t, 2)
    t.close()
    assert lines_of(chunks) == [b"a3", b"b1"]
    assert [c.event for c in chunks if c.lines[0] == b"b1"] == ["replaced"]


async def test_deleted_and_never_recreated_waits_without_spinning(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    with p.open("ab", buffering=0) as writer:
        writer.write(b"a1\n")
        t = make(p)
        t.open(None)
        drain(t)
        os.unlink(p)
        cpu = time.process_time()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(t.next_chunk(10, 0.02), 0.5)
        assert time.process_time() - cpu < 0.2
        assert t.at_eof()
        writer.write(b"a2\n")  # the cancelled wait lost nothing and the fd is still followed
        chunk = await asyncio.wait_for(t.next_chunk(10, 0.02), 2)
    assert chunk.lines == [b"a2"]
    t.close()


async def test_idle_wait_does_not_busy_loop(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"x\n")
    t = make(p)
    t.open(None)
    drain(t)
    missing = make(tmp_path / "absent.log")
    assert missing.open(None) == "waiting for file"
    cpu = time.process_time()
    began = time.monotonic()
    for tailer in (t, missing):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(tailer.next_chunk(10, 0.02), 0.5)
    assert time.monotonic() - began >= 1.0
    # A busy loop would burn about a second of CPU; polling every 10 ms costs a few ms.
    assert time.process_time() - cpu < 0.25
    t.close()
    missing.close()


async def test_oversize_lines_skipped_with_sync_kept(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    long_line = b"x" * 3000 + b"y" * 3000
    p.write_bytes(b"ok1\n" + long_line[:2000])
    t = make(p, max_line_bytes=100, read_size=64)
    t.open(None)
    first = drain(t)
    assert lines_of(first) == [b"ok1"]
    cur = t._cur
    assert cur is not None
    assert len(cur.buf) - cur.bi <= 100 + 64  # the long line is not buffered
    append(p, long_line[2000:] + b"\nok2\n" + b"z" * 101 + b"\n" + b"m" * 100 + b"\nok3\n")
    chunks = drain(t)
    assert lines_of(chunks) == [b"ok2", b"m" * 100, b"ok3"]
    assert [x for c in chunks for x in c.too_long] == [long_line[:TOO_LONG_KEEP], b"z" * 101]
    assert chunks[-1].end.offset == p.stat().st_size
    # Rewinding to the start of the long line skips it again the same way.
    t.rewind(first[-1].end)
    again = drain(t)
    assert lines_of(again) == lines_of(chunks)
    assert [x for c in again for x in c.too_long] == [long_line[:TOO_LONG_KEEP], b"z" * 101]
    t.close()


async def test_oversize_unterminated_line_keeps_memory_bounded(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"")
    t = make(p, max_line_bytes=1000, read_size=4096)
    t.open(None)
    piece = b"q" * 100_000
    for _ in range(30):  # 3 MB without a newline
        append(p, piece)
        assert t.read_available(10) is None
        cur = t._cur
        assert cur is not None
        assert len(cur.buf) <= 1000 + 4096
    append(p, b"\nafter\n")
    chunk = t.read_available(10)
    assert chunk is not None
    assert chunk.too_long == [b"q" * TOO_LONG_KEEP]
    assert chunk.lines == [b"after"]
    t.close()


async def test_resume_from_checkpoint(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\na2\na3\n")
    t1 = make(p)
    t1.open(None)
    cp = drain(t1)[-1].end
    t1.close()
    append(p, b"a4\n")
    t2 = make(p)
    assert t2.open(cp) == "resumed"
    assert t2.take_warning() is None
    chunks = drain(t2)
    assert lines_of(chunks) == [b"a4"]
    assert chunks[0].start == cp
    t2.close()


async def test_resume_short_fingerprint_grows_and_stays_valid(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"a\n")
    t = make(p)
    t.open(None)
    first = drain(t)[-1].end
    assert first.fp_len == 2
    append(p, b"b" * 300 + b"\n")
    second = drain(t)[-1].end
    assert second.fp_len == 256  # lengthened once the file grew
    t.close()
    for cp in (first, second):
        again = make(p)
        assert again.open(cp) == "resumed"
        again.close()


async def test_open_checkpoint_on_truncated_file_starts_at_zero(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\na2\na3\n")
    t1 = make(p)
    t1.open(None)
    cp = drain(t1)[-1].end
    t1.close()
    os.truncate(p, 0)
    append(p, b"b1\n")
    t2 = make(p)
    assert t2.open(cp) == "truncated"
    warning = t2.take_warning()
    assert warning is not None
    assert f"{p} was truncated since the checkpoint (offset 9)" in warning
    assert "may be lost" in warning
    assert t2.take_warning() is None  # said once
    assert lines_of(drain(t2)) == [b"b1"]
    t2.close()


async def test_open_checkpoint_on_replaced_file_starts_at_zero(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\na2\n")
    t1 = make(p)
    t1.open(None)
    cp = drain(t1)[-1].end
    t1.close()
    os.unlink(p)
    p.write_bytes(b"other content, longer than before\n")  # even a reused inode differs
    t2 = make(p)
    assert t2.open(cp) == "checkpoint file replaced: starting at 0"
    warning = t2.take_warning()
    assert warning is not None
    # The new file may reuse the inode (then it was "rewritten in place").
    assert "(offset 6)" in warning
    assert "may be lost" in warning
    chunks = drain(t2)
    assert lines_of(chunks) == [b"other content, longer than before"]
    assert chunks[0].start == cp
    t2.close()


async def test_open_checkpoint_on_deleted_file_warns_and_waits(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\n")
    t1 = make(p)
    t1.open(None)
    cp = drain(t1)[-1].end
    t1.close()
    os.unlink(p)
    t2 = make(p)
    assert t2.open(cp) == "waiting for file"
    warning = t2.take_warning()
    assert warning is not None
    assert f"not found (looked for inode {cp.inode} in {tmp_path})" in warning
    assert "lines after the checkpoint (offset 3) may be lost" in warning
    t2.close()


@pytest.mark.parametrize("kind", ["directory", "fifo"])
async def test_open_path_that_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    """Said as such (not "waiting for file"), then followed once a regular file is there."""
    p = tmp_path / "access.log"
    if kind == "directory":
        p.mkdir()
    else:
        os.mkfifo(p)
    t = make(p)
    assert t.open(None) == NOT_REGULAR
    assert t.read_available(10) is None
    if kind == "directory":
        p.rmdir()
    else:
        p.unlink()
    p.write_bytes(b"a1\n")
    assert t.open(None) == "new file"
    assert lines_of(drain(t)) == [b"a1"]
    t.close()
    assert str(NotRegularFileError(p)) == f"{p} is not a regular file (any more)"


async def test_open_from_end(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"a\nb\npart")
    t = make(p)
    assert t.open(None, from_end=True) == "from end"
    assert t.read_available(10) is None
    append(p, b"ial\nc\n")
    assert lines_of(drain(t)) == [b"partial", b"c"]
    t.close()


async def test_checkpoint_file_rotated_while_stopped_is_drained_first(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\na2\n")
    t1 = make(p)
    t1.open(None)
    cp = drain(t1)[-1].end
    t1.close()
    append(p, b"a3\na4\n")  # written after the checkpoint, before the rotation
    (tmp_path / "access.log.2").write_bytes(b"decoy\n")
    os.rename(p, tmp_path / "access.log.1")
    p.write_bytes(b"b1\n")
    t2 = make(p, rotate_grace=0.2)
    assert t2.open(cp) == "resumed from rotated file access.log.1"
    chunks = await collect(t2, 3)
    assert lines_of(chunks) == [b"a3", b"a4", b"b1"]
    assert chunks[0].start == cp
    assert [c.event for c in chunks if c.event] == ["rotated"]
    assert_contiguous(chunks)
    t2.close()


async def test_rewind_reproduces_the_same_chunks(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"".join(b"line %d\r\n" % i for i in range(20)) + b"part")
    t = make(p)
    t.open(None)
    chunks = drain(t, max_lines=3)
    assert len(chunks) == 7
    t.rewind(chunks[2].start)
    again = drain(t, max_lines=3)
    assert again == chunks[2:]
    t.close()


async def test_rewind_across_a_truncation_in_place_reads_the_file_from_0(tmp_path: Path) -> None:
    """A position from before the truncation is not in the file any more: not a seek."""
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\na2\n")
    t = make(p)
    t.open(None)
    before = drain(t, max_lines=1)
    os.truncate(p, 0)
    append(p, b"second generation 1\nsecond generation 2\n")  # past the old offset
    chunks = drain(t)
    assert lines_of(chunks) == [b"second generation 1", b"second generation 2"]
    assert chunks[0].start == before[-1].end
    assert t.take_warning() is not None  # no copy: a2 may have been followed by lost lines
    # The same inode, read from 0 again: a rewind to before the truncation reads all of it.
    t.rewind(before[-1].start)
    assert lines_of(drain(t)) == lines_of(chunks)
    t.close()


async def test_rewind_across_rotation_replays_it(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\na2\na3\n")
    t = make(p, rotate_grace=30.0)
    t.open(None)
    head = drain(t, max_lines=2)
    append(p, b"a4\ntail")
    os.rename(p, tmp_path / "access.log.1")
    p.write_bytes(b"b1\nb2\nb3\n")
    chunks = drain(t, max_lines=2)
    assert lines_of(chunks) == [b"a4", b"tail", b"b1", b"b2", b"b3"]
    switch = next(c for c in chunks if c.event == "rotated")
    # Rewind to the rotation chunk's start (on the old file): the same chunks again.
    t.rewind(switch.start)
    assert drain(t, max_lines=2) == chunks[chunks.index(switch) :]
    # Rewind to an earlier position on the old file: the same lines and the same rotation.
    t.rewind(head[-1].start)
    replay = drain(t, max_lines=2)
    assert lines_of(replay) == [b"a3", b"a4", b"tail", b"b1", b"b2", b"b3"]
    assert [c.event for c in replay] == [None, None, "rotated", None]
    assert replay[-2:] == chunks[-2:]
    t.rewind(chunks[-1].start)  # a committed position on the new file releases the old one
    assert t._prev is None
    assert drain(t, max_lines=2) == [chunks[-1]]
    t.close()


async def test_rewind_to_before_appearance_replays_it(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    t = make(p)
    t.open(None)
    p.write_bytes(b"a\n")
    chunks = drain(t)
    assert chunks[0].event == "appeared"
    t.rewind(chunks[0].start)
    assert drain(t) == chunks
    t.close()


async def test_committed_position_on_new_file_releases_old_file(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    p.write_bytes(b"a1\n")
    t = make(p)
    t.open(None)
    drain(t)
    os.rename(p, tmp_path / "access.log.1")
    p.write_bytes(b"b1\n")
    chunks = drain(t)
    assert t._prev is not None  # kept so that a rewind could replay the rotation
    t.committed(chunks[0].start)  # still on the old file: nothing released
    assert t._prev is not None
    t.committed(chunks[-1].end)
    assert t._prev is None
    t.close()
