"""Compressed rotated files are read, decompressed, in their place: nothing lost, nothing twice.

logrotate's ``compress`` (with or without ``delaycompress``) leaves ``access.log.2.gz``
(or ``access.log-20261128.gz``) where the tailer used to find ``access.log.2``. A daemon
stopped, or behind the writer, across such rotations must read them like the others, from
the checkpoint's offset in the decompressed content when the checkpoint's file is one.
"""

from __future__ import annotations

import asyncio
import bz2
import gzip
import lzma
import sys
import time
from collections.abc import Callable
from pathlib import Path

from puppylogd.tailer import Chunk, Position, Tailer
from tests.unit.test_tailer import append, assert_contiguous, drain, lines_of
from tests.unit.test_tailer import make as make_tailer

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": zstd.compress,
}


def make(path: Path, **kwargs: int) -> Tailer:
    return make_tailer(path, rotate_grace=0.05, **kwargs)


def compress(path: Path, ending: str = ".gz") -> Path:
    """Replace ``path`` by its compressed copy (as logrotate does); return the copy's path."""
    packed = path.with_name(path.name + ending)
    packed.write_bytes(COMPRESSORS[ending](path.read_bytes()))
    path.unlink()
    return packed


def logrotate(p: Path, *, delay: bool = True, ending: str = ".gz", keep: int = 9) -> None:
    """Rotate like logrotate ``compress`` (``delaycompress`` if ``delay``): numbered names."""
    for n in range(keep - 1, 0, -1):
        for suffix in ("", *COMPRESSORS):
            older = p.with_name(f"{p.name}.{n}{suffix}")
            if older.exists():
                older.rename(p.with_name(f"{p.name}.{n + 1}{suffix}"))
    p.rename(p.with_name(p.name + ".1"))
    to_pack = p.with_name(p.name + (".2" if delay else ".1"))
    if to_pack.exists():
        compress(to_pack, ending)
    time.sleep(0.01)  # distinct mtimes even on coarse clocks


def day(n: int, lines: int = 3) -> bytes:
    """Return ``lines`` distinct log lines of day ``n`` (distinct heads: distinct files)."""
    return b"".join(b"10.0.0.%d day %d line %d\n" % (n, n, i) for i in range(lines))


def checkpoint_after(p: Path, data: bytes) -> Position:
    """Write ``data`` to a new ``p``, read it all and return the end position."""
    p.write_bytes(data)
    t = make(p)
    t.open(None)
    cp = drain(t)[-1].end
    t.close()
    time.sleep(0.01)
    return cp


def three_days_down(tmp_path: Path, *, delay: bool = True) -> tuple[Path, Position, list[bytes]]:
    """Stop after reading day 0's first lines; rotate daily 3 times; return the lines unread."""
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, day(0, 2))
    append(p, b"10.0.0.0 day 0 after the checkpoint\n")
    unread = [b"10.0.0.0 day 0 after the checkpoint"]
    for n in (1, 2, 3):
        logrotate(p, delay=delay)
        p.write_bytes(day(n))
        unread += day(n).splitlines()
    return p, cp, unread


def test_delaycompress_three_rotations_read_every_file_once(tmp_path: Path) -> None:
    """access.log.3.gz (the checkpoint's) from the offset, .2.gz whole, .1, the path."""
    p, cp, unread = three_days_down(tmp_path)
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "access.log",
        "access.log.1",
        "access.log.2.gz",
        "access.log.3.gz",
    ]
    t = make(p)
    assert t.open(cp) == "resumed from compressed file access.log.3.gz"
    assert t.take_warning() is None
    chunks = drain(t, max_lines=2)
    assert lines_of(chunks) == unread
    assert chunks[0].start == cp
    assert_contiguous(chunks)
    assert t.take_warning() is None
    t.close()


def test_compress_without_delay_two_rotations(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, day(0))
    append(p, b"after\n")
    logrotate(p, delay=False)
    p.write_bytes(day(1))
    logrotate(p, delay=False)
    p.write_bytes(day(2))
    t = make(p)
    assert t.open(cp) == "resumed from compressed file access.log.2.gz"
    assert lines_of(drain(t)) == [b"after", *day(1).splitlines(), *day(2).splitlines()]
    assert t.take_warning() is None
    t.close()


def test_dateext_compressed_successors_in_date_order(tmp_path: Path) -> None:
    """Dates compare without the compression ending; older archives are not read."""
    p = tmp_path / "access.log"
    (tmp_path / "access.log-20261101.gz").write_bytes(gzip.compress(b"an older rotation\n"))
    time.sleep(0.01)
    cp = checkpoint_after(p, day(0))
    append(p, b"after\n")
    p.rename(tmp_path / "access.log-20261126")
    p.write_bytes(day(1))
    p.rename(tmp_path / "access.log-20261127")
    p.write_bytes(day(2))
    p.rename(tmp_path / "access.log-20261128")
    p.write_bytes(day(3))
    # Compressed in an order unlike the dates', with mtimes to match: names decide.
    compress(tmp_path / "access.log-20261127", ".xz")
    time.sleep(0.01)
    compress(tmp_path / "access.log-20261126")
    t = make(p)
    assert t.open(cp) == "resumed from compressed file access.log-20261126.gz"
    chunks = drain(t)
    assert lines_of(chunks) == [
        b"after",
        *day(1).splitlines(),
        *day(2).splitlines(),
        *day(3).splitlines(),
    ]
    assert_contiguous(chunks)
    t.close()


def test_every_compression_is_read_in_counter_order(tmp_path: Path) -> None:
    """.gz, .bz2, .xz and .zst siblings are read, oldest (highest counter) first."""
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, day(0))
    append(p, b"after\n")
    expected = [b"after"]
    rotations = [".zst", ".xz", ".bz2", ".gz", ".zst"]
    for n, ending in enumerate(rotations, start=1):
        logrotate(p, delay=False, ending=ending)
        p.write_bytes(day(n))
        expected += day(n).splitlines()
    names = sorted(f.name for f in tmp_path.iterdir())
    assert names == [
        "access.log",
        "access.log.1.zst",
        "access.log.2.gz",
        "access.log.3.bz2",
        "access.log.4.xz",
        "access.log.5.zst",
    ]
    t = make(p)
    assert t.open(cp) == "resumed from compressed file access.log.5.zst"
    chunks = drain(t)
    assert lines_of(chunks) == expected
    assert [c.event for c in chunks if c.event] == ["rotated"] * 5
    assert_contiguous(chunks)
    t.close()


def end_on(chunks: list[Chunk], path: Path) -> Chunk:
    """Return the first chunk ending inside ``path`` (not at its start or end)."""
    st = path.stat()
    return next(
        c for c in chunks if (c.end.dev, c.end.inode) == (st.st_dev, st.st_ino) and c.end.offset
    )


def test_restart_in_the_middle_of_a_compressed_successor(tmp_path: Path) -> None:
    """A checkpoint inside access.log.2.gz resumes at its line, found again by inode."""
    p, cp, unread = three_days_down(tmp_path)
    t = make(p)
    t.open(cp)
    chunks = drain(t, max_lines=1)
    t.close()
    assert lines_of(chunks) == unread
    middle = end_on(chunks, tmp_path / "access.log.2.gz")
    done = lines_of(chunks[: chunks.index(middle) + 1])
    t = make(p)
    assert t.open(middle.end) == "resumed from rotated file access.log.2.gz"
    assert t.take_warning() is None
    rest = drain(t, max_lines=1)
    assert rest[0].start == middle.end
    assert done + lines_of(rest) == unread
    t.close()


def test_restart_in_a_file_compressed_meanwhile_and_in_an_archive_renamed(
    tmp_path: Path,
) -> None:
    """Stopped in .1, which another rotation compressed to .2.gz: found by fingerprint."""
    p, cp, unread = three_days_down(tmp_path)
    t = make(p)
    t.open(cp)
    chunks = drain(t, max_lines=1)
    t.close()
    in_plain = end_on(chunks, tmp_path / "access.log.1")
    in_packed = end_on(chunks, tmp_path / "access.log.2.gz")
    logrotate(p)  # .1 -> .2.gz (new inode), .2.gz -> .3.gz (same inode)
    p.write_bytes(day(4))
    for stop in (in_plain, in_packed):
        t = make(p)
        t.open(stop.end)
        assert t.take_warning() is None
        done = lines_of(chunks[: chunks.index(stop) + 1])
        assert done + lines_of(drain(t, max_lines=2)) == unread + day(4).splitlines()
        t.close()


def test_rewind_onto_compressed_files_replays_exactly(tmp_path: Path) -> None:
    """Rewinds to positions in archives (current, previous, further back) replay exactly."""
    p, cp, unread = three_days_down(tmp_path)
    t = make(p)
    t.open(cp)
    chunks = drain(t, max_lines=1)
    assert lines_of(chunks) == unread
    for i, chunk in reversed(list(enumerate(chunks))):
        t.rewind(chunk.start)
        assert t.take_warning() is None
        again = drain(t, max_lines=1)
        assert lines_of(again) == lines_of(chunks[i:]), i
        assert again[0].start == chunk.start
    # Inside an archive being read: stop in .2.gz, rewind to its start and to cp.
    for target in (cp, end_on(chunks, tmp_path / "access.log.2.gz").end):
        t.rewind(target)
        first = t.read_available(1)
        assert first is not None
        t.rewind(target)
        assert lines_of(drain(t, max_lines=1)) == unread[unread.index(first.lines[0]) :]
    t.close()


def test_corrupt_archive_warns_and_reads_on(tmp_path: Path) -> None:
    """A truncated archive: its lines up to the damage, a warning naming it, then the rest."""
    p, cp, unread = three_days_down(tmp_path)
    packed = tmp_path / "access.log.2.gz"
    data = gzip.compress(day(1, 2000))
    packed.write_bytes(data[: len(data) // 2])
    t = make(p)
    t.open(cp)
    got = lines_of(drain(t))
    warning = t.take_warning()
    assert warning is not None
    assert "access.log.2.gz" in warning
    assert "may be lost" in warning
    assert got[:1] == unread[:1]  # day 0's last line
    assert got[-6:] == unread[-6:]  # days 2 (access.log.1) and 3 (the path)
    in_archive = got[1:-6]  # day 1's, in access.log.2.gz
    assert len(in_archive) > 500  # what could be decompressed
    assert in_archive[:-1] == day(1, 2000).splitlines()[: len(in_archive) - 1]
    t.close()


def test_garbage_archive_warns_and_reads_on(tmp_path: Path) -> None:
    p, cp, unread = three_days_down(tmp_path)
    (tmp_path / "access.log.2.gz").write_bytes(b"not gzip at all\n")
    t = make(p)
    t.open(cp)
    assert lines_of(drain(t)) == unread[:1] + unread[-6:]
    warning = t.take_warning()
    assert warning is not None
    assert "access.log.2.gz" in warning
    t.close()


def test_running_tailer_does_not_read_the_archive_of_a_file_it_read(tmp_path: Path) -> None:
    """compress without delaycompress: the file just read reappears as .1.gz; not read again."""
    p = tmp_path / "access.log"
    p.write_bytes(day(0))
    t = make(p)
    t.open(None)
    chunks = drain(t)
    for n in (1, 2):
        logrotate(p, delay=False)
        p.write_bytes(day(n))
        chunks += drain(t)
    assert lines_of(chunks) == day(0).splitlines() + day(1).splitlines() + day(2).splitlines()
    t.close()


def test_compression_in_progress_reads_the_file_once(tmp_path: Path) -> None:
    """Both access.log.2 and a partial access.log.2.gz: the plain file is read, once."""
    p, cp, unread = three_days_down(tmp_path)
    packed = tmp_path / "access.log.2.gz"
    (tmp_path / "access.log.2").write_bytes(gzip.decompress(packed.read_bytes()))
    packed.write_bytes(packed.read_bytes()[:20])
    t = make(p)
    t.open(cp)
    assert lines_of(drain(t)) == unread
    assert t.take_warning() is None
    t.close()


async def test_next_chunk_resumes_deep_in_a_large_archive(tmp_path: Path) -> None:
    """Reaching the offset is done a read at a time between polls, and lands exactly."""
    p = tmp_path / "access.log"
    big = day(0, 3000)
    cp = checkpoint_after(p, big)
    deep = Position(cp.dev, cp.inode, len(day(0, 2500)), cp.fp_len, cp.fingerprint)
    logrotate(p, delay=False)
    p.write_bytes(day(1))
    t = make(p, read_size=512)
    assert t.open(deep) == "resumed from compressed file access.log.1.gz"
    chunks: list[Chunk] = []
    async with asyncio.timeout(5):
        while len(lines_of(chunks)) < 503:
            chunks.append(await t.next_chunk(1000, 0.02))
    assert lines_of(chunks) == big.splitlines()[2500:] + day(1).splitlines()
    t.close()


def copytruncate_compressed(p: Path) -> None:
    """Rotate like logrotate ``copytruncate`` + ``compress``: copy, truncate, compress."""
    copy = p.with_name(p.name + ".1")
    copy.write_bytes(p.read_bytes())
    with p.open("r+b") as fh:
        fh.truncate(0)
    compress(copy)


def test_copytruncate_compressed_while_reading(tmp_path: Path) -> None:
    """The truncated file's lines after the position are read from its compressed copy."""
    p = tmp_path / "access.log"
    p.write_bytes(day(0))
    t = make(p)
    t.open(None)
    chunks = drain(t)
    append(p, b"10.0.0.0 written before the copy\n")
    copytruncate_compressed(p)
    append(p, b"new\n")
    chunks += drain(t)
    assert lines_of(chunks) == [*day(0).splitlines(), b"10.0.0.0 written before the copy", b"new"]
    assert t.take_warning() is None
    t.close()


def test_copytruncate_compressed_while_stopped(tmp_path: Path) -> None:
    p = tmp_path / "access.log"
    cp = checkpoint_after(p, day(0))
    append(p, b"10.0.0.0 written before the copy\n")
    copytruncate_compressed(p)
    append(p, b"new\n")
    t = make(p)
    assert t.open(cp) == "resumed from compressed file access.log.1.gz"
    assert t.take_warning() is None
    assert lines_of(drain(t)) == [b"10.0.0.0 written before the copy", b"new"]
    t.close()


def checkpoint_on_empty_file(p: Path, rotate: Callable[[Path], None]) -> Position:
    """Read day 0, ``rotate`` (leaving an empty file at ``p``), read on: the checkpoint then.

    A quiet log after its rotation: the reader has switched to the new, still empty file. A
    checkpoint there (offset 0, empty fingerprint) would match any file.
    """
    p.write_bytes(day(0))
    t = make(p)
    t.open(None)
    drain(t)
    rotate(p)
    if not p.exists():
        p.write_bytes(b"")
    time.sleep(0.06)  # past rotate_grace
    drain(t)
    cp = t.position  # the end of the last chunk handed out: what the daemon has committed
    t.close()
    return cp


def test_restart_on_an_empty_file_compressed_since(tmp_path: Path) -> None:
    """The empty file's lines, written while stopped, are in access.log.1.gz: read them."""
    p = tmp_path / "access.log"
    cp = checkpoint_on_empty_file(p, lambda p: logrotate(p, delay=False))
    append(p, day(1))
    logrotate(p, delay=False)
    p.write_bytes(day(2))
    t = make(p)
    t.open(cp)
    assert lines_of(drain(t)) == [*day(1).splitlines(), *day(2).splitlines()]
    assert t.take_warning() is None
    t.close()


def test_restart_on_an_empty_file_delaycompressed_twice_since(tmp_path: Path) -> None:
    """Two rotations: the empty file's lines are in access.log.2.gz, then .1, the path."""
    p = tmp_path / "access.log"
    cp = checkpoint_on_empty_file(p, logrotate)
    append(p, day(1))
    logrotate(p)
    p.write_bytes(day(2))
    logrotate(p)
    p.write_bytes(day(3))
    t = make(p)
    t.open(cp)
    assert lines_of(drain(t)) == [line for n in (1, 2, 3) for line in day(n).splitlines()]
    assert t.take_warning() is None
    t.close()


def test_restart_on_an_empty_file_copytruncated_since(tmp_path: Path) -> None:
    """copytruncate: the checkpoint's (empty) file is the one at the path, truncated again."""
    p = tmp_path / "access.log"
    cp = checkpoint_on_empty_file(p, copytruncate_compressed)
    append(p, day(1))
    p.with_name("access.log.1.gz").rename(p.with_name("access.log.2.gz"))
    copytruncate_compressed(p)
    append(p, day(2))
    t = make(p)
    t.open(cp)
    assert lines_of(drain(t)) == [*day(1).splitlines(), *day(2).splitlines()]
    assert t.take_warning() is None
    t.close()
