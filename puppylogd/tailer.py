"""Follow one access log file and hand out complete lines with exact byte positions.

A ``Tailer`` owns the file descriptors for one log path.  It reads raw bytes with
``os.pread`` (no text mode, no shared file offset; a compressed rotated file through its
decompressor, see below), splits them into complete lines and reports, with every
``Chunk``, the exact ``Position`` before and after it, so the ingest
can store the end position in the same transaction as the rows and, after a failure,
``rewind`` to the committed position and get the very same lines again.

Decisions:

* A line is the bytes before a ``\\n``; the ``\\n`` is removed, a ``\\r`` is kept.  A
  partial last line is held until its ``\\n`` arrives.  The only exception is the tail of
  a file that has been rotated away (the writer moved on, it can never be completed): it
  is emitted as a final line just before switching files.
* A line longer than ``max_line_bytes`` goes to ``Chunk.too_long`` as its first
  ``TOO_LONG_KEEP`` bytes.  While such a line is incomplete its bytes are dropped as they
  are read, so at most ``max_line_bytes + read_size`` bytes are buffered per file whatever
  the file holds; the checkpoint stays at the start of the long line until its ``\\n``.
* Identity of a file is ``(st_dev, st_ino)`` plus a sha256 fingerprint of its first
  ``fp_len`` bytes (``fp_len = min(FP_BYTES, size)`` when computed, lengthened later while
  the file is shorter than ``FP_BYTES``).  The fingerprint catches inode reuse and a
  copy-truncated file that has already grown past the old offset again; at end of file it
  is checked whenever the size or the mtime changed (a file regrown between two polls to
  the very size read has a new mtime).  A file rewritten with the same first ``fp_len``
  bytes cannot be told from one that grew: it is read on from the offset.  Access log
  lines start with the client's address and a timestamp, so only a replay of the same
  lines does that (its lines before the offset are taken as the ones already read).
* Rotation by rename: when the path names another file, the old descriptor is drained
  to end of file and kept until it has not grown for ``rotate_grace`` seconds (writers
  reopen their log a little after the rename), then the tailer switches to the new file
  at offset 0 (event ``"rotated"``; ``"replaced"`` when the old file was deleted rather
  than renamed).  A reader behind the writer (a backlog) may find the path rotated more
  than once: it first reads, each from offset 0, the rotated siblings written after the
  old file (see below), then the path.  While the path is missing the old descriptor is
  simply followed on (a writer may still be appending to the deleted file); it is kept
  open until a new file appears at the path.
* Rotations while stopped: when the checkpoint's file has been renamed (found by inode and
  fingerprint in the path's directory, and for a symlink in its target's too), it is
  drained from the checkpoint, then the rotated siblings rotated after it
  (``<name>.<suffix>`` or logrotate's ``dateext`` ``<name>-<suffix>``, the suffix without
  its compression ending starting with a digit, regular), oldest first, each from offset
  0, and then the file at the path: after two rotations the checkpoint's file is
  ``access.log.2`` and ``access.log.1`` is read too.  "After" is told by the names when
  both tell: a smaller counter (``.1`` after ``.2``, ``.2.gz`` after ``.3.gz``), a greater
  date of the same length (logrotate requires ``dateext`` dates to sort by name); else by
  mtime, an equal one counting as after (timestamps of a second or two give files rotated
  within one tick the same).  A file read to its end since ``open`` is never read again
  that way, nor one that was already a rotated sibling when the file being read was opened
  at the path (it is older), and a ``rewind`` that opens again keeps those noted before
  its position's file: where only mtimes tell, one as new as that file would be read
  twice.  A checkpoint's file not found by inode may have been compressed (or copied, see
  copytruncate): a rotated sibling whose (decompressed) content starts with the
  checkpoint's fingerprinted bytes is read on from the checkpoint's offset instead.  With
  none, ``take_warning`` says lines may be lost and the path is read from 0, none of the
  rotated files (not told from older ones without the checkpoint's).
* Compressed rotated files (``.gz``, ``.bz2``, ``.xz``, ``.zst``: logrotate's
  ``compress``, with or without ``delaycompress``) are read decompressed, in their place
  among the others; a position on one is ``(dev, inode)`` of the compressed file, the
  offset and the fingerprint in its decompressed content, so a restart or a ``rewind`` in
  the middle of one resumes at the exact line (found again by inode, or by its first bytes
  once compressed since).  Decompressing is a stream: at most ``read_size`` bytes per read,
  no temporary file, no decompressor held by a file waiting its turn; reaching an offset
  (a checkpoint, a rewind: backwards from the start again) decompresses and drops at most
  ``read_size`` bytes per step, yielding to the event loop between steps (``next_chunk``;
  ``read_available`` does them all).  A compressed file never grows: its end is its end,
  left at once (no ``rotate_grace``).  A compressed copy of what another file holds is not
  read again: one with the name of an uncompressed sibling plus the ending (being
  compressed from it; the uncompressed one is read), and one whose content starts with the
  bytes of a file read to its end since ``open`` or of the file it follows (compressed
  right after rotation, while that file was being read).  A damaged archive (truncated,
  corrupt) is read up to the damage (less what the last 16 KiB step held); then
  ``take_warning`` says its lines after that may be lost and the next file is read.
* copytruncate: the same file becoming shorter than what was read, or its first bytes
  changing, is a truncation (event ``"truncated"``).  The lines after the position are
  then looked for in a copy among the rotated siblings (starting with the bytes the
  fingerprint records; unless compressed, at least as long as what was read of the file:
  at ``open``, the checkpoint's offset): the copy is read on from the position (bytes read
  past it, not yet split into lines, are read again there), then the siblings rotated
  after it, then the file at the path from 0.  This is the same while running (a reader
  behind the writer, e.g. during a database outage) and at ``open``, also when the
  truncated file has since been renamed by a rotation (its inode found under a rotated
  name with other first bytes: its copy is drained, then it from 0 as a successor; with no
  copy, it is read from 0).  With no copy the
  file is read again from 0 and ``take_warning`` says lines may be lost.
* An event always starts a new chunk, so every chunk's lines come from one file; an event
  chunk's ``start`` is the last position on the old file, its ``end`` is on the new one
  (for a truncation with a copy: the truncated file, then the copy).  While the new file
  is empty the event chunk is not handed out (``position`` stays on the old file; a second
  switch meanwhile replaces the event): a position at offset 0 with an empty fingerprint
  matches any file, so a checkpoint there could not find the new file's lines again once
  it is compressed or copy-truncated while the daemon is stopped (nor tell a reused inode
  number), whereas from the old file's end ``open`` finds them as a rotated successor or
  a copy.
* The previous file of a rotation (or the truncated file whose copy is read) stays open
  so that a rewind to a position on it can replay the switch exactly; it is closed by the
  next switch, by ``rewind``/``committed`` with a position on the current file, or by
  ``close``.  A position is on a file when the inode and the fingerprint match: after a
  truncation the inode holds other lines, so a rewind to a position from before it goes
  through the copy again (or through ``open``), never into the new content.
"""

from __future__ import annotations

import asyncio
import bz2
import collections
import contextlib
import gzip
import hashlib
import io
import itertools
import lzma
import os
import stat
import sys
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

__all__ = [
    "EVENTS",
    "FP_BYTES",
    "NOT_REGULAR",
    "NO_FILE",
    "TOO_LONG_KEEP",
    "Chunk",
    "NotRegularFileError",
    "Position",
    "Tailer",
]

FP_BYTES = 256
"""Number of leading bytes hashed into a file's fingerprint (fewer while the file is shorter)."""

TOO_LONG_KEEP = 1024
"""Bytes kept of a line longer than ``max_line_bytes`` (recorded as rejected)."""

EVENTS: tuple[str, ...] = ("rotated", "truncated", "replaced", "appeared")

_SCAN_BLOCK = 65536  # block size when looking backwards for the last newline (from_end)

_REPLACED = "checkpoint file replaced: starting at 0"
NOT_REGULAR = "not a regular file"
"""``Tailer.open``'s decision when the path is a directory, FIFO, socket or device."""

# Rotated siblings with these endings are compressed: read decompressed (_Archive).
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
# What a damaged archive raises while being decompressed (truncated: EOFError).
_DAMAGED = (OSError, EOFError, zlib.error, lzma.LZMAError, zstd.ZstdError)
_PIECE = 16384  # bytes decompressed per step: at most this much is lost with a damaged one
_COUNTER_DIGITS = 4  # longest suffix read as a rotation counter (access.log.1 .. .9999)
_FINISHED_KEPT = 64  # files remembered as read, or older than one read (Tailer._finished)

# Outcomes of one non-blocking collection step.
_FULL = "full"  # the chunk holds max_lines items
_CLOSED = "closed"  # an event ended the chunk; the event starts the next one
_IDLE = "idle"  # end of file, nothing pending: caught up
_WAITING = "waiting"  # end of file, but a rotation waits for its grace period
_BUSY = "busy"  # a compressed file is being decompressed up to the position: go on at once


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(frozen=True, slots=True)
class Position:
    """A point in a particular file: checkpoint stored with the rows it covers."""

    dev: int
    inode: int
    offset: int
    """Byte offset just after the last consumed line."""
    fp_len: int
    fingerprint: bytes
    """sha256 of the first ``fp_len`` bytes of the file."""


NO_FILE = Position(dev=0, inode=0, offset=0, fp_len=0, fingerprint=_sha256(b""))
"""Position used while no file has ever been open (waiting for the path to appear)."""


@dataclass(slots=True)
class Chunk:
    """Complete lines of one file, with the positions before and after them."""

    start: Position
    end: Position
    lines: list[bytes]
    too_long: list[bytes]
    event: str | None = None


@dataclass(slots=True)
class _Acc:
    """A chunk being collected; kept on the tailer so a cancelled wait loses nothing."""

    start: Position
    event: str | None
    lines: list[bytes] = field(default_factory=list)
    too_long: list[bytes] = field(default_factory=list)
    end: Position | None = None  # frozen end when an event closed the chunk early
    closed: bool = False

    @property
    def count(self) -> int:
        return len(self.lines) + len(self.too_long)

    @property
    def ready(self) -> bool:
        return self.closed or self.event is not None or bool(self.lines) or bool(self.too_long)


class _File:
    """One open file with its read state.

    ``buf[bi:]`` holds the bytes not yet split into lines; ``buf[0]`` is at file offset
    ``base``.  ``pos`` is the consumed offset (always a line boundary).  In skip mode
    (``skip_head`` is not None) the line starting at ``pos`` is known to be too long and
    its bytes up to ``base + bi`` have been dropped.
    """

    grows = True
    """Whether the file can grow or change (an ``_Archive`` cannot)."""

    __slots__ = (
        "base",
        "bi",
        "buf",
        "checked",
        "dev",
        "fd",
        "fingerprint",
        "fp_len",
        "ino",
        "last_growth",
        "name",
        "pos",
        "rot_noticed",
        "skip_emit",
        "skip_head",
        "switch_event",
    )

    def __init__(self, fd: int, st: os.stat_result, name: str) -> None:
        self.fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.name = name
        self.fp_len = 0
        self.fingerprint = NO_FILE.fingerprint
        self.pos = 0
        self.base = 0
        self.buf = b""
        self.bi = 0
        self.skip_head: bytes | None = None
        self.skip_emit = True
        self.checked: tuple[int, int] | None = None
        self.last_growth = time.monotonic()
        self.rot_noticed: float | None = None
        self.switch_event: str | None = None
        self.compute_fp()

    @property
    def ident(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    @property
    def seeking(self) -> bool:
        """Return whether ``read`` is still on its way to ``read_off`` (see ``_Archive``)."""
        return False

    @property
    def read_off(self) -> int:
        """Return the file offset of the next byte to read."""
        return self.base + len(self.buf)

    def position(self) -> Position:
        """Return the consumed position, lengthening a short fingerprint first."""
        self.extend_fp()
        return Position(self.dev, self.ino, self.pos, self.fp_len, self.fingerprint)

    def seek(self, offset: int) -> None:
        """Discard buffered bytes and continue reading at ``offset`` (a line boundary)."""
        self.pos = offset
        self.base = offset
        self.buf = b""
        self.bi = 0
        self.skip_head = None
        self.skip_emit = True
        self.checked = None

    def compute_fp(self) -> None:
        """Fingerprint the file from scratch (after opening or a truncation)."""
        data = os.pread(self.fd, FP_BYTES, 0)
        self.fp_len = len(data)
        self.fingerprint = _sha256(data)

    def prefix_ok(self) -> bool:
        """Return whether the first ``fp_len`` bytes still hash to the fingerprint."""
        if self.fp_len == 0:
            return True
        data = os.pread(self.fd, self.fp_len, 0)
        return len(data) == self.fp_len and _sha256(data) == self.fingerprint

    def extend_fp(self) -> None:
        """Lengthen a fingerprint taken while the file was shorter than ``FP_BYTES``."""
        # Cheap test first: only worth a syscall while short and known to have grown.
        if self.fp_len >= FP_BYTES or self.read_off <= self.fp_len:
            return
        data = os.pread(self.fd, FP_BYTES, 0)
        # Only extend when the old prefix is intact; otherwise the file was truncated and
        # rewritten, which the end-of-file check reports as a truncation.
        if len(data) > self.fp_len and _sha256(data[: self.fp_len]) == self.fingerprint:
            self.fp_len = len(data)
            self.fingerprint = _sha256(data)

    def size(self) -> int:
        """Return the size of the file."""
        return os.fstat(self.fd).st_size

    def verdict(self, cp: Position) -> str:
        """Return "ok", "truncated" or "replaced" for checkpoint ``cp`` on this file's inode."""
        if self.size() < cp.offset:
            return "truncated"
        data = os.pread(self.fd, cp.fp_len, 0) if cp.fp_len else b""
        if len(data) != cp.fp_len or _sha256(data) != cp.fingerprint:
            return "replaced"
        return "ok"

    def has_read(self, pos: Position) -> bool:
        """Return whether ``pos``, a position on a file read to its end, is on this file."""
        return self.ident == (pos.dev, pos.inode) and self.verdict(pos) == "ok"

    def take_error(self) -> str | None:
        """Return (once) why the file ended early (see ``_Archive``); None if it did not."""
        return None

    def read(self, size: int) -> int:
        """Append up to ``size`` new bytes to the buffer; return how many were read."""
        return self._append(os.pread(self.fd, size, self.read_off))

    def _append(self, data: bytes) -> int:
        if data:
            # Drop what was already split off so the buffer stays bounded.
            self.base += self.bi
            self.buf = self.buf[self.bi :] + data if self.bi < len(self.buf) else data
            self.bi = 0
            self.last_growth = time.monotonic()
        return len(data)

    def _grow_head(self, buf: bytes, start: int, stop: int) -> bytes:
        """Extend the kept head of the long line with ``buf[start:stop]``; return it."""
        head = self.skip_head or b""
        need = TOO_LONG_KEEP - len(head)
        if need > 0 and self.skip_emit:
            head += buf[start : min(stop, start + need)]
            self.skip_head = head
        return head

    def _drop_buffer(self) -> None:
        self.base += len(self.buf)
        self.buf = b""
        self.bi = 0

    def take(self, room: int, max_line: int, lines: list[bytes], too_long: list[bytes]) -> int:
        """Move up to ``room`` complete lines out of the buffer; return how many were moved."""
        buf = self.buf
        bi = self.bi
        n = 0
        if self.skip_head is not None:
            j = buf.find(b"\n", bi)
            if j < 0:
                # Still inside the long line: keep its head, forget the rest of its bytes;
                # the checkpoint stays at its start.
                self._grow_head(buf, bi, len(buf))
                self._drop_buffer()
                return 0
            if self.skip_emit:
                too_long.append(self._grow_head(buf, bi, j))
                n = 1
            self.skip_head = None
            self.skip_emit = True
            bi = j + 1
        # The usual case in one C call (reading the 1M-line bench file: 366-389 -> 235-287 ns
        # per line): split the complete lines up to the last newline, unless one of them is
        # too long; the loop below handles the rest (too-long lines, the partial line at the
        # end). The span is capped at 256 bytes per line of room, so taking a batch's last few
        # lines does not split the whole buffer (with no room left, the span is empty).
        last = buf.rfind(b"\n", bi, bi + (room - n) * 256)
        if last >= 0:
            parts = buf[bi:last].split(b"\n")
            del parts[room - n :]
            if max(map(len, parts)) <= max_line:
                lines += parts
                bi += sum(map(len, parts)) + len(parts)
                n += len(parts)
        while n < room:
            j = buf.find(b"\n", bi)
            if j < 0:
                if len(buf) - bi > max_line:
                    # Too long already: keep only its head and stop buffering it.
                    self.skip_head = buf[bi : bi + TOO_LONG_KEEP]
                    self.pos = self.base + bi
                    self._drop_buffer()
                    return n
                break
            if j - bi > max_line:
                too_long.append(buf[bi : min(j, bi + TOO_LONG_KEEP)])
            else:
                lines.append(buf[bi:j])
            bi = j + 1
            n += 1
        self.bi = bi
        self.pos = self.base + bi
        return n

    def flush_tail(self, max_line: int, lines: list[bytes], too_long: list[bytes]) -> None:
        """Emit the unterminated tail as a final line: the file was rotated away."""
        if self.skip_head is not None:
            head = self._grow_head(self.buf, self.bi, len(self.buf))
            if self.skip_emit:
                too_long.append(head)
            self.skip_head = None
            self.skip_emit = True
        else:
            rest = self.buf[self.bi :]
            if not rest:
                return
            if len(rest) > max_line:
                too_long.append(rest[:TOO_LONG_KEEP])
            else:
                lines.append(rest)
        self._drop_buffer()
        self.pos = self.base

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _decompressing(ending: str, raw: io.FileIO) -> io.BufferedIOBase:
    """Return a stream of the decompressed content of ``raw``, compressed as ``ending`` says."""
    if ending == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if ending == ".bz2":
        return bz2.BZ2File(raw)
    if ending == ".xz":
        return lzma.LZMAFile(raw)
    return zstd.ZstdFile(raw)


class _Archive(_File):
    """A compressed rotated file, read decompressed: offsets and fingerprint are its content's.

    The decompressor is a sequential stream, so ``read`` decompresses from where the last
    one stopped; reaching another offset (``seek``, a checkpoint) is done by decompressing
    and dropping at most ``size`` bytes per ``read`` call (``seeking`` meanwhile), from the
    start again when going back. No decompressor is held before the first read (a chain of
    waiting files would hold one each) nor after the end. The file never grows or changes:
    its end is its end. A damaged archive ends where decompressing fails; ``error`` says so.
    """

    grows = False

    __slots__ = ("_at", "_raw", "_stream", "end", "ending", "error", "head")

    def __init__(self, fd: int, st: os.stat_result, name: str) -> None:
        self.ending = next(e for e in _COMPRESSED if name.endswith(e))
        self._raw: io.FileIO | None = None
        self._stream: io.BufferedIOBase | None = None
        self._at = 0  # offset in the content of the next byte the stream gives
        self.end: int | None = None  # size of the content, once decompressed to its end
        self.error: str | None = None  # why the content ended early (damaged), to report
        self.head = b""  # its first FP_BYTES bytes (fewer when shorter)
        super().__init__(fd, st, name)

    @property
    def seeking(self) -> bool:
        return self._stream is not None and self._at < self.read_off

    def compute_fp(self) -> None:
        """Fingerprint the first ``FP_BYTES`` bytes of the content."""
        self._restart()
        self.head = self._decompress(FP_BYTES)
        self._stop()
        self.fp_len = len(self.head)
        self.fingerprint = _sha256(self.head)

    def prefix_ok(self) -> bool:
        return True

    def extend_fp(self) -> None:
        pass  # the head was read whole (or the content is shorter)

    def size(self) -> int:
        """Return the size of the content as far as it is known (all of it once read)."""
        return self.end if self.end is not None else max(self._at, self.read_off)

    def verdict(self, cp: Position) -> str:
        """Return "ok" when the content starts with ``cp``'s bytes, else "replaced"."""
        head = self.head[: cp.fp_len]
        return "ok" if len(head) == cp.fp_len and _sha256(head) == cp.fingerprint else "replaced"

    def has_read(self, pos: Position) -> bool:
        """Also true for a file read elsewhere: this one is its compressed copy."""
        return (pos.fp_len > 0 or self.ident == (pos.dev, pos.inode)) and self.verdict(pos) == "ok"

    def read(self, size: int) -> int:
        off = self.read_off
        if self.end is not None and off >= self.end:
            return 0
        if self._stream is None or off < self._at:
            self._restart()  # the first read, or back (a rewind): from the start again
        if self._at < off:
            self._decompress(min(size, off - self._at))  # dropped: on the way to off
        if self._at < off or self._stream is None:
            return 0  # still on the way (seeking), or the content ended before off
        return self._append(self._decompress(size))

    def take_error(self) -> str | None:
        """Return (once) why the content ended early; None if it did not."""
        error, self.error = self.error, None
        return error

    def _decompress(self, size: int) -> bytes:
        """Return up to ``size`` more bytes of the content, fewer at its end (or damage).

        In pieces: what a piece held when the damage was found is lost with it.
        """
        assert self._stream is not None
        pieces: list[bytes] = []
        got = 0
        ended = False
        while got < size and not ended:
            try:
                piece = self._stream.read1(min(size - got, _PIECE))
            except _DAMAGED as exc:
                piece = b""
                if self.end is None:
                    self.error = f"{type(exc).__name__}: {exc}"
            pieces.append(piece)
            got += len(piece)
            ended = not piece
        self._at += got
        if ended:
            self.end = self._at
            self._stop()
        return b"".join(pieces)

    def _restart(self) -> None:
        self._stop()
        os.lseek(self.fd, 0, os.SEEK_SET)
        self._raw = io.FileIO(self.fd, "rb", closefd=False)
        self._stream = _decompressing(self.ending, self._raw)
        self._at = 0

    def _stop(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(*_DAMAGED):
                self._stream.close()
            self._stream = None
        if self._raw is not None:
            self._raw.close()  # not the descriptor (closefd=False)
            self._raw = None

    def close(self) -> None:
        self._stop()
        super().close()


def _not_regular(path: Path) -> str | None:
    """Return what ``path`` is when it exists but is not a regular file, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


class NotRegularFileError(OSError):
    """The log path names a directory, FIFO, socket or device: nothing to follow there."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} is not a regular file ({_not_regular(path) or 'any more'})")


def _open_file(path: Path, *, rotated: bool = False) -> _File | None:
    """Open ``path`` read-only; return None if it does not exist or is not a regular file.

    A ``rotated`` sibling with a compression ending is opened as an ``_Archive``. A
    directory on the way that is a regular file (``NotADirectoryError``) is raised like any
    other error opening the path: it is a misconfiguration to report, not a file to wait
    for.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not hang the tailer; it is rejected below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        if rotated and path.name.endswith(_COMPRESSED):
            return _Archive(fd, st, path.name)
        return _File(fd, st, path.name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def _try_open(path: str) -> _File | None:
    """Open a rotated sibling like ``_open_file``; None also if it cannot be (it may be gone)."""
    try:
        return _open_file(Path(path), rotated=True)
    except OSError:
        return None


def _is_counter(suffix: str) -> bool:
    """Return whether ``suffix`` is a rotation counter (``access.log.3``), not a date."""
    return len(suffix) <= _COUNTER_DIGITS and suffix.isascii() and suffix.isdigit()


def _is_date(suffix: str) -> bool:
    """Return whether ``suffix`` is a date (``20261128``, ``2026-11-28``), not a counter."""
    return suffix[:1].isdigit() and not _is_counter(suffix)


def _rotated_after(suffix: str, mtime: int, ref_suffix: str | None, ref_mtime: int) -> bool:
    """Return whether sibling ``suffix`` was rotated after the file named ``ref_suffix``.

    By name when both names tell: two counters, the smaller one is newer (a higher counter
    is an older rotation even if it was touched later); two dates of the same length, the
    greater one is newer (logrotate requires its ``dateext`` dates to sort by name). Else
    (the reference's name is unknown because it was deleted, or one is a counter and the
    other a date) by modification time, an equal one counting as newer: with timestamps of
    a second or two, files rotated within one tick have the same, and skipping one loses
    it. The caller skips a file already read (``Tailer._was_read``).
    """
    if ref_suffix is not None:
        if _is_counter(suffix) and _is_counter(ref_suffix):
            return int(suffix) < int(ref_suffix)
        if _is_date(suffix) and _is_date(ref_suffix) and len(suffix) == len(ref_suffix):
            return suffix > ref_suffix
    return mtime >= ref_mtime


def _uncompressed(suffix: str) -> str:
    """Return ``suffix`` without its compression ending (``2.gz`` -> ``2``)."""
    for ending in _COMPRESSED:
        suffix = suffix.removesuffix(ending)
    return suffix


def _readable_rotation(suffix: str, st: os.stat_result) -> bool:
    """Return whether a sibling is a rotated file the tailer reads, compressed or not.

    It is regular, its suffix without the compression ending a counter or a date (it
    starts with a digit); not ".bak", ".swp"..., nor ``access.log.gz`` (no rotation suffix).
    """
    return _uncompressed(suffix)[:1].isdigit() and stat.S_ISREG(st.st_mode)


def _content(f: _File) -> Position:
    """Return the position at the start of ``f``: what its first bytes are."""
    return Position(f.dev, f.ino, 0, f.fp_len, f.fingerprint)


def _mtime(f: _File) -> int:
    """Return the modification time of open file ``f`` in nanoseconds."""
    return os.fstat(f.fd).st_mtime_ns


def _holds(f: _File | None, pos: Position) -> bool:
    """Return whether ``pos`` is a position in the content ``f`` is reading.

    The same inode is not enough: a file truncated and read again from 0 (in place, or
    reopened at the path after its copy) keeps its inode, but not its lines before the
    truncation. ``f``'s own fingerprint means ``pos`` was handed out while reading it (a
    truncation not yet noticed is then handled as the reading goes on).
    """
    if f is None or f.ident != (pos.dev, pos.inode):
        return False
    if (pos.fp_len, pos.fingerprint) == (f.fp_len, f.fingerprint):
        return True
    return f.verdict(pos) == "ok"


def _end_of_last_line(fd: int, size: int, limit: int) -> int | None:
    """Return the offset after the last ``\\n`` before ``size`` (0 if there is none).

    Looks back at most about ``limit`` bytes; None when no newline is that close (the last
    line is too long anyway).
    """
    end = size
    while end > 0:
        start = max(0, end - _SCAN_BLOCK)
        block = os.pread(fd, end - start, start)
        i = block.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        if size - start > limit:
            return None
        end = start
    return 0


class Tailer:
    """Follow one log path across rotation, truncation, deletion and re-creation."""

    def __init__(
        self,
        path: Path,
        *,
        max_line_bytes: int = 65536,
        poll_interval: float = 0.1,
        read_size: int = 1 << 20,
        rotate_grace: float = 1.0,
    ) -> None:
        """Configure the tailer; nothing is opened until ``open``."""
        if max_line_bytes < 1 or read_size < 1:
            raise ValueError("max_line_bytes and read_size must be positive")
        if poll_interval <= 0 or rotate_grace < 0:
            raise ValueError("poll_interval must be positive and rotate_grace not negative")
        self.path = Path(path)
        self.max_line_bytes = max_line_bytes
        self.poll_interval = poll_interval
        self.read_size = read_size
        self.rotate_grace = rotate_grace
        self.last_error: str | None = None
        """Last transient error while polling (e.g. the new file not yet readable)."""
        self._warning: str | None = None  # see take_warning
        self._cur: _File | None = None
        self._prev: _File | None = None  # file before the last switch, kept for rewind
        self._next: _File | None = None  # file to switch to after a rewind into _prev
        # Rotated siblings to drain, in order, after the current file and before the path
        # (files rotated while the daemon was stopped, between the checkpoint's and the path).
        self._chain: list[_File] = []
        # Files read to their end since ``open`` (newest last), and the rotated siblings of a
        # file opened at the path (older than it, see _note_older): never read again as a
        # newer rotated sibling, even if a late write or a coarse mtime says so.
        self._finished: collections.deque[Position] = collections.deque(maxlen=_FINISHED_KEPT)
        self._last: Position = NO_FILE  # end of the last emitted chunk
        self._acc: _Acc | None = None
        self._pending_event: str | None = None
        self._caught_up = False

    # ------------------------------------------------------------------ positioning

    def open(self, checkpoint: Position | None, *, from_end: bool = False) -> str:
        """Position the tailer at ``checkpoint`` (or a fresh start); return the decision.

        Decisions: ``"resumed"``, ``"resumed from rotated file NAME"`` (the checkpoint's
        file was renamed in the same directory: it is drained first; NAME may be compressed,
        the checkpoint was on it), ``"resumed from copy NAME"`` (it was copied and
        truncated: the copy is drained first), ``"resumed from compressed file NAME"`` (it
        was compressed, or its copy was: NAME is drained first, from the checkpoint's
        offset in its decompressed content), ``"truncated"``, ``"checkpoint file replaced:
        starting at 0"``, ``"new file"``, ``"from end"``, ``"waiting for file"``, ``"not a
        regular file"`` (a directory, FIFO...: waited for like a missing file).
        The first chunk's ``start`` is ``checkpoint`` when given.
        A missing file (or directory) is waited for; other errors opening the path (e.g.
        ``PermissionError``, a symlink loop, a directory that is a file) are raised.
        When lines may have been lost, ``take_warning`` says why.
        """
        return self._open(checkpoint, from_end=from_end, read=())

    def _open(
        self, checkpoint: Position | None, *, from_end: bool, read: Iterable[Position]
    ) -> str:
        """Do ``open``, with the files in ``read`` known to be read (see ``rewind``)."""
        self.close()
        self._finished.extend(read)
        self._warning = None
        if _not_regular(self.path):
            # Like a missing file (the reader waits for a regular one), but the caller must
            # say so: a daemon told to wait for it would wait unnoticed forever.
            self._last = checkpoint if checkpoint is not None else NO_FILE
            return NOT_REGULAR
        if checkpoint is None:
            f = _open_file(self.path)
            if f is None:
                self._last = NO_FILE
                return "waiting for file"
            self._cur = f
            self._note_older(f)
            if not from_end:
                self._last = f.position()
                return "new file"
            size = os.fstat(f.fd).st_size
            off = _end_of_last_line(f.fd, size, self.max_line_bytes)
            if off is None:
                # The last line is already too long: start at the end, drop its rest.
                f.seek(size)
                f.skip_head = b""
                f.skip_emit = False
            else:
                f.seek(off)
            self._last = f.position()
            return "from end"

        self._last = checkpoint
        f = _open_file(self.path)
        if f is not None and f.ident == (checkpoint.dev, checkpoint.inode):
            verdict = f.verdict(checkpoint)
            self._cur = f
            if verdict == "ok":
                f.seek(checkpoint.offset)
                self._note_older(f)
                return "resumed"
            # copytruncate: the lines after the checkpoint are in a copy next to the file.
            copy = self._find_copy(checkpoint, {f.ident})
            if copy is not None:
                f.close()  # opened again, from 0, once the copy is read
                return self._resume_from_copy(copy, checkpoint, {f.ident})
            how = "truncated" if verdict == "truncated" else "rewritten in place"
            self._warning = (
                f"{self.path} was {how} since the checkpoint (offset {checkpoint.offset}) "
                f"and no copy of it found in {self._looked_in()}: lines written after the "
                "checkpoint and before that may be lost; reading it from 0"
            )
            self._note_older(f)
            return "truncated" if verdict == "truncated" else _REPLACED
        at_path = {f.ident} if f is not None else set()
        found = self._find_rotated(checkpoint)
        if found is not None and found[1] == "ok":
            # Drain the rotated file from the checkpoint; the usual rotation logic then
            # switches to the file at the path.
            old = found[0]
            if f is not None:
                f.close()
            old.seek(checkpoint.offset)
            self._cur = old
            self._chain = self._successors(old, at_path)
            return f"resumed from rotated file {old.name}"
        # Its lines may be in a copy: logrotate's copytruncate, or its compress (the file
        # renamed, compressed, deleted: found by its decompressed first bytes). The file
        # found by inode (other first bytes: truncated, then renamed by a later rotation)
        # holds the lines written after the truncation: it is one of the copy's successors.
        copy = self._find_copy(checkpoint, at_path | ({found[0].ident} if found else set()))
        if copy is not None:
            if f is not None:
                f.close()
            if found is not None:
                found[0].close()  # opened again, from 0, as one of the copy's successors
            return self._resume_from_copy(copy, checkpoint, at_path)
        if found is not None:
            old, verdict = found
            if f is not None:
                f.close()
            how = "truncated" if verdict == "truncated" else "rewritten in place"
            self._warning = (
                f"checkpoint file of {self.path}, now {old.name}, was {how} since the "
                f"checkpoint (offset {checkpoint.offset}) and no copy of it found in "
                f"{self._looked_in()}: lines written after the checkpoint and before "
                f"that may be lost; reading {old.name} from 0"
            )
            old.seek(0)
            self._cur = old
            self._chain = self._successors(old, at_path)
            return "truncated" if verdict == "truncated" else _REPLACED
        then = "the file at the path" if f is not None else "the path once it appears"
        self._warning = (
            f"checkpoint file of {self.path} not found (looked for inode {checkpoint.inode} "
            f"in {self._looked_in()}), nor a copy of it, compressed or not: lines after the "
            f"checkpoint (offset {checkpoint.offset}) may be lost, in it and in the files "
            f"rotated after it (not told from older ones without it); reading {then} from 0"
        )
        if f is None:
            return "waiting for file"
        self._cur = f
        self._note_older(f)
        return _REPLACED

    def _resume_from_copy(
        self, copy: _File, checkpoint: Position, at_path: set[tuple[int, int]]
    ) -> str:
        """Read ``copy`` on from ``checkpoint``, then the files rotated after it, then the path.

        ``at_path`` is the file at the path, read last as the path, not as a successor.
        """
        copy.seek(checkpoint.offset)
        self._cur = copy
        self._chain = self._successors(copy, at_path)
        return f"resumed from {'copy' if copy.grows else 'compressed file'} {copy.name}"

    def take_warning(self) -> str | None:
        """Return (once) why lines may have been lost since the last call; None if not.

        Set by ``open`` (or a ``rewind`` that opens) when the checkpoint's lines could not
        all be found again: its file truncated, rewritten or gone; and while reading, when
        the file was truncated or rewritten and no copy of it found (the chunk with the
        event ``"truncated"`` follows), or a compressed file was found damaged (the chunk
        with the event of the switch to the next file follows). The caller logs it at
        warning level.
        """
        warning, self._warning = self._warning, None
        return warning

    def _locations(self) -> list[tuple[Path, str]]:
        """Return the (directory, file name) pairs next to which rotated files are looked for.

        The path's own, and for a symlink its target's too: logrotate renames the target in
        the target's directory, while a scheme that points the link at a new file each day
        leaves the old files next to the link.
        """
        places = [(self.path.parent, self.path.name)]
        real = Path(os.path.realpath(self.path))
        if (real.parent, real.name) != places[0]:
            places.append((real.parent, real.name))
        return places

    def _looked_in(self) -> str:
        """Return the directories of ``_locations``, for a warning."""
        return " and ".join(str(directory) for directory, _ in self._locations())

    def _siblings(self) -> list[tuple[str, str, os.stat_result]]:
        """Return ``(suffix, path, lstat)`` of every entry named like a rotated path.

        That is ``<name>.<suffix>`` (``access.log.1``, ``access.log.20261128``) or
        ``<name>-<suffix>`` (logrotate's ``dateext``: ``access.log-20261128``), compressed
        or not, in each of ``_locations``; each file once.
        """
        found: list[tuple[str, str, os.stat_result]] = []
        seen: set[tuple[int, int]] = set()
        for name, entry in self._entries():
            entry_name = entry.name
            if (
                len(entry_name) <= len(name) + 1
                or not entry_name.startswith(name)
                or entry_name[len(name)] not in ".-"
            ):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                found.append((entry_name[len(name) + 1 :], entry.path, st))
        return found

    def _entries(self) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """Yield ``(name, entry)`` for each entry of each of ``_locations`` (unreadable: none)."""
        for directory, name in self._locations():
            try:
                it = os.scandir(directory)
            except OSError:
                continue
            with it:
                for entry in it:
                    yield name, entry

    def _find_rotated(self, cp: Position) -> tuple[_File, str] | None:
        """Find the checkpoint's file by dev+inode next to the path (any name).

        Return it with its ``verdict``: ``"ok"`` when it still starts with the
        checkpoint's bytes, else it was truncated or rewritten before it was renamed.
        """
        for name, entry in self._entries():
            try:
                if entry.inode() != cp.inode or not entry.is_file(follow_symlinks=False):
                    continue
                f = _open_file(Path(entry.path), rotated=entry.name != name)
            except OSError:
                continue
            if f is None:
                continue
            if f.ident == (cp.dev, cp.inode):
                return f, f.verdict(cp)
            f.close()
        return None

    def _find_copy(self, cp: Position, exclude: set[tuple[int, int]]) -> _File | None:
        """Find a copy of the checkpoint's file among the rotated siblings.

        A copy is a regular rotated sibling other than the files in ``exclude`` (the file at
        the path, the checkpoint's inode), starting with the bytes the checkpoint's
        fingerprint records and, unless compressed, at least as long as the checkpoint's
        offset: logrotate's ``copytruncate`` makes one, its ``compress`` one in which the
        offsets are those of the decompressed content (``_Archive``). The earliest is the
        one taken first after the checkpoint (an uncompressed one when as early: an archive
        as old may still be being written).
        """
        if cp.fp_len == 0:
            return None  # an empty fingerprint would match any file
        found: list[tuple[int, bool, _File]] = []
        for _, path, st in self._siblings():
            if (
                not stat.S_ISREG(st.st_mode)
                or (st.st_dev, st.st_ino) in exclude
                or (st.st_size < cp.offset and not path.endswith(_COMPRESSED))
            ):
                continue
            f = _try_open(path)
            if f is None:
                continue
            if f.ident not in exclude and f.verdict(cp) == "ok":
                found.append((st.st_mtime_ns, not f.grows, f))
            else:
                f.close()
        found.sort(key=lambda item: item[:2])
        for _, _, f in found[1:]:
            f.close()
        return found[0][2] if found else None

    def _successors(self, ref: _File, exclude: set[tuple[int, int]]) -> list[_File]:
        """Open the rotated siblings rotated after file ``ref``, oldest first.

        A sibling is a regular file named like a rotated path (``_siblings``), the suffix
        without its compression ending starting with a digit (a counter or a date), other
        than ``ref``, the files in ``exclude`` (the file at the path) and the files noted as
        read (``_was_read``), rotated after ``ref`` (``_rotated_after``; ``ref``'s suffix is
        its current name, found by inode). With two rotations before ``ref`` is finished (a
        restart, or a reader behind the writer), ``ref`` is ``access.log.2`` and
        ``access.log.1`` still holds lines never read. Compressed copies are not read: one
        next to the same name uncompressed (``access.log.2.gz`` while ``access.log.2`` is
        being compressed into it), or holding ``ref``'s lines (``ref`` compressed as soon as
        rotated, while being read).
        """
        siblings = self._siblings()
        plain = {suffix for suffix, _, st in siblings if stat.S_ISREG(st.st_mode)}
        ref_suffix: str | None = None
        ref_mtime = _mtime(ref)
        entries: list[tuple[int, str, str]] = []  # (mtime, suffix, path)
        for suffix, path, st in siblings:
            bare = _uncompressed(suffix)
            if (st.st_dev, st.st_ino) == ref.ident:
                ref_suffix = bare
            elif (
                _readable_rotation(suffix, st)
                and (st.st_dev, st.st_ino) not in exclude
                and (bare == suffix or bare not in plain)
            ):
                entries.append((st.st_mtime_ns, bare, path))
        found: list[tuple[int, str, _File]] = []
        for mtime, suffix, path in entries:
            if not _rotated_after(suffix, mtime, ref_suffix, ref_mtime):
                continue
            f = _try_open(path)
            if f is None:
                continue
            if (
                f.ident in exclude
                or f.ident == ref.ident
                or self._was_read(f)
                or f.has_read(_content(ref))
            ):
                f.close()
                continue
            found.append((mtime, suffix, f))
        # Oldest first, in the order of _rotated_after.
        suffixes = [suffix for _, suffix, _ in found]
        if all(_is_counter(suffix) for suffix in suffixes):
            found.sort(key=lambda item: -int(item[1]))
        elif all(_is_date(suffix) for suffix in suffixes) and len(set(map(len, suffixes))) == 1:
            found.sort(key=lambda item: item[1])
        else:
            found.sort(key=lambda item: (item[0], item[1]))
        return [f for _, _, f in found]

    def _note_older(self, f: _File) -> None:
        """Remember the rotated siblings of ``f``, just opened at the path, as read.

        A file rotated away while ``f`` is at the path is older than ``f``: never a file
        rotated after it. Where only mtimes tell (``f`` deleted, mixed names), one as new as
        ``f`` would otherwise be read again, e.g. one read before the checkpoint. Only those
        as new as ``f`` are noted (an older one's writer has moved on: it stays older), and
        no empty one (nothing to read twice; its inode, once free, may be a newer file's).
        """
        mtime = _mtime(f)
        for suffix, path, st in self._siblings():
            if (
                _readable_rotation(suffix, st)
                and st.st_size > 0
                and st.st_mtime_ns >= mtime
                and (st.st_dev, st.st_ino) != f.ident
                and (g := _try_open(path)) is not None
            ):
                self._finished.append(g.position())  # its first bytes, at offset 0
                g.close()

    def _was_read(self, f: _File) -> bool:
        """Return whether ``f`` was noted as read (or older than a file read) since ``open``."""
        return any(f.has_read(pos) for pos in self._finished)

    def _read_before(self, pos: Position) -> list[Position]:
        """Return the files noted as read before the file ``pos`` is on was read to its end.

        Empty when that is unknown (not read to its end, or since with a longer fingerprint).
        """
        mark = (pos.dev, pos.inode, pos.fp_len, pos.fingerprint)
        for i, done in enumerate(self._finished):
            if (done.dev, done.inode, done.fp_len, done.fingerprint) == mark:
                return list(itertools.islice(self._finished, i))
        return []

    def rewind(self, pos: Position) -> None:
        """Discard buffers and continue from ``pos``, a committed position.

        ``pos`` must be on the current file, on the previous file of a rotation or
        truncation (which is then replayed) or a previous chunk's start/end; anything
        else (e.g. a position from before a truncation of the current file, or on a file
        two switches back) is treated like ``open(pos)``, except that the files noted as
        read before ``pos``'s file are still not read again (their lines are before
        ``pos``, so committed).
        """
        self._acc = None
        self._pending_event = None
        self._caught_up = False
        key = (pos.dev, pos.inode)
        cur, prev, nxt = self._cur, self._prev, self._next
        if _holds(cur, pos):
            assert cur is not None
            cur.seek(pos.offset)
            self._drop_prev()
        elif _holds(prev, pos):
            # Replay the switch: drain the old file again, then switch to the current one
            # (a truncated one finds that its copy is the current one, see _truncated).
            assert prev is not None
            if nxt is not None:
                nxt.close()
            self._next, self._cur, self._prev = cur, prev, None
            prev.seek(pos.offset)
        elif _holds(nxt, pos):
            assert nxt is not None
            self._drop_prev()
            if cur is not None:
                cur.close()
            self._cur, self._next = nxt, None
            nxt.seek(pos.offset)
        elif key == (NO_FILE.dev, NO_FILE.inode):
            # Back to before the first file appeared: replay its appearance (if it did).
            if cur is not None:
                first = prev if prev is not None else cur
                if nxt is not None:
                    nxt.close()
                self._cur, self._prev, self._next = first, None, (cur if first is prev else None)
                first.seek(0)
                self._pending_event = "appeared"
        else:
            # The files read before pos's file are not read again: their lines are committed.
            self._open(pos, from_end=False, read=self._read_before(pos))
            return
        self._last = pos

    def committed(self, pos: Position) -> None:
        """Note that ``pos`` is durably committed: release the old file once past it.

        Optional; without it the previous file of a rotation stays open until the next
        rotation, ``rewind`` to the current file, or ``close``.
        """
        if _holds(self._cur, pos):
            self._drop_prev()

    def _drop_prev(self) -> None:
        if self._prev is not None:
            self._prev.close()
            self._prev = None

    def close(self) -> None:
        """Close every descriptor and forget buffered data."""
        for f in (self._cur, self._prev, self._next, *self._chain):
            if f is not None:
                f.close()
        self._cur = self._prev = self._next = None
        self._chain = []
        self._finished.clear()
        self._acc = None
        self._pending_event = None
        self._caught_up = False

    # ------------------------------------------------------------------ reading

    async def next_chunk(self, max_lines: int, max_wait: float) -> Chunk:
        """Wait for the next chunk of at most ``max_lines`` lines.

        Returns as soon as ``max_lines`` lines are ready or an event ends the chunk, else
        once ``max_wait`` seconds have passed with at least one line or an event ready;
        otherwise sleeps ``poll_interval`` between checks.  Cancellation loses nothing:
        lines collected so far are returned by the next call.
        """
        if max_lines < 1:
            raise ValueError("max_lines must be positive")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while True:
            outcome = self._step(max_lines, immediate=False)
            acc = self._acc
            assert acc is not None
            if outcome in (_FULL, _CLOSED):
                return self._emit()
            delay = 0.0 if outcome == _BUSY else self.poll_interval
            if self._ready(acc):
                now = loop.time()
                if now >= deadline:
                    return self._emit()
                delay = min(delay, deadline - now)
            await asyncio.sleep(delay)

    def read_available(self, max_lines: int) -> Chunk | None:
        """Return what can be read now without waiting (None if nothing).

        Unlike ``next_chunk`` it does not honour ``rotate_grace``: a rotated file that is
        at its end is left at once, so ``--once`` can drain everything in one pass. It also
        decompresses a compressed file up to its position in one call, not a step per poll.
        """
        if max_lines < 1:
            raise ValueError("max_lines must be positive")
        while self._step(max_lines, immediate=True) == _BUSY:
            pass  # a compressed file decompressed up to its position: a read at a time
        acc = self._acc
        assert acc is not None
        return self._emit() if self._ready(acc) else None

    @property
    def position(self) -> Position:
        """Return where the next chunk starts (after ``open``: the starting position)."""
        return self._last

    def at_eof(self) -> bool:
        """Return True when the last read hit end of file with nothing ready or pending."""
        acc = self._acc
        return self._caught_up and (acc is None or not self._ready(acc))

    def file_size(self) -> int | None:
        """Return the size of the file being read (None while there is none).

        For a compressed file: of its decompressed content, as far as decompressed yet.
        """
        if self._cur is None:
            return None
        try:
            return self._cur.size()
        except OSError:
            return None

    def _emit(self) -> Chunk:
        acc = self._acc
        assert acc is not None
        self._acc = None
        end = acc.end if acc.end is not None else self._position()
        self._last = end
        return Chunk(acc.start, end, acc.lines, acc.too_long, acc.event)

    def _position(self) -> Position:
        return self._cur.position() if self._cur is not None else self._last

    def _ready(self, acc: _Acc) -> bool:
        """Return whether ``acc`` can be handed out; not an event's while the new file is empty.

        Its end would be offset 0 with an empty fingerprint, which matches any file: a
        checkpoint there could not find that file's lines again once it is compressed or
        copy-truncated (or its inode number reused). The chunk waits for the first bytes;
        meanwhile the position stays at the end of the old file, from which ``open`` finds
        them in a rotated successor or a copy.
        """
        if not acc.ready:
            return False
        return not self._holds_event(acc)

    def _holds_event(self, acc: _Acc) -> bool:
        """Return whether ``acc`` is an event's, without lines, waiting for an empty file."""
        return (
            acc.event is not None
            and not acc.closed
            and not acc.lines
            and not acc.too_long
            and acc.start.fp_len > 0
            and self._cur is not None
            and self._position().fp_len == 0
        )

    def _begin_event(self, name: str) -> None:
        """Attach event ``name`` to the chunk that starts now; call before moving on."""
        acc = self._acc
        assert acc is not None
        if self._holds_event(acc):
            acc.event = name  # the file switched to is left empty: one event from the old one
            return
        if acc.ready:
            # Freeze the chunk at the old position; the event starts the next one.
            acc.end = self._position()
            acc.closed = True
            self._pending_event = name
        else:
            acc.event = name

    def _step(self, max_items: int, *, immediate: bool) -> str:
        """Collect lines into the pending chunk without blocking; return why it stopped."""
        acc = self._acc
        if acc is None:
            acc = self._acc = _Acc(self._last, self._pending_event)
            self._pending_event = None
        outcome = _FULL
        while not acc.closed and acc.count < max_items:
            f = self._cur
            if f is None:
                if self._appear():
                    continue
                outcome = _IDLE
                break
            if f.take(max_items - acc.count, self.max_line_bytes, acc.lines, acc.too_long):
                continue
            if n := f.read(self.read_size):
                # Cheap identity check on every read: a copy-truncated file that has grown
                # past our offset again must not be read on from the middle.
                if not f.prefix_ok():
                    self._truncated(f, f.read_off - n)
                continue
            if f.seeking:
                outcome = _BUSY  # on the way to its position: let the event loop run
                break
            checked = self._check(f, immediate=immediate)
            if checked is not None:
                outcome = checked
                break
        else:
            if acc.closed:
                outcome = _CLOSED
        self._caught_up = outcome == _IDLE
        return outcome

    def _appear(self) -> bool:
        """Open the path if it exists now (event "appeared"); return whether it did."""
        try:
            f = _open_file(self.path)
        except OSError as exc:  # e.g. created but not yet readable: retry next poll
            self.last_error = f"{self.path}: {exc}"
            return False
        if f is None:
            return False
        self._begin_event("appeared")
        self._cur = f
        self._note_older(f)
        return True

    def _truncated(self, f: _File, read_end: int) -> None:
        """Go on after ``f`` was truncated or rewritten in place (event "truncated").

        Its lines after the position may still be in a copy (logrotate ``copytruncate``)
        holding at least the ``read_end`` bytes read from ``f`` before the truncation: they
        are read from there, then the siblings rotated after the copy, then the file at the
        path from 0, as ``open`` does for a checkpoint so truncated. ``f`` becomes the
        previous file, so that a rewind to a position on it finds the copy again. With no
        copy, ``f`` starts again at 0 and ``take_warning`` says lines may be lost.
        """
        # Not f.position(): lengthening the fingerprint now would read the new content.
        seen = Position(f.dev, f.ino, read_end, f.fp_len, f.fingerprint)
        copy: _File | None = None
        if f.switch_event == "truncated" and self._next is not None:
            copy, self._next = self._next, None  # a rewind into f: the copy found before
        elif f.fp_len:  # an empty fingerprint would match any file
            copy = self._find_copy(seen, {f.ident})
            if copy is not None:
                for g in (self._next, *self._chain):
                    if g is not None:
                        g.close()
                self._next = None
                self._chain = self._successors(copy, {f.ident})
        self._begin_event("truncated")
        if copy is None:
            self._warning = (
                f"{self.path} was truncated or rewritten while being read (at offset "
                f"{f.pos}) and no copy of it found in {self._looked_in()}: lines "
                "written after that offset and before the truncation may be lost; reading "
                "it from 0"
            )
            f.seek(0)
            f.compute_fp()
            return
        # Read again from the last line boundary: the bytes of f read past it are in the
        # copy too (and, read after the truncation, may be the new content).
        copy.seek(f.pos)
        if f.skip_head is not None:
            copy.skip_head = b""  # f.pos is the start of the line too long: skip it again
            copy.skip_emit = f.skip_emit
        f.switch_event = "truncated"
        self._drop_prev()
        self._prev = f
        self._cur = copy

    def _check(self, f: _File, *, immediate: bool) -> str | None:
        """Handle end of file on ``f``: truncation, rotation, deletion.

        Returns None when something changed (keep collecting), else ``_IDLE`` or
        ``_WAITING``.
        """
        st = os.fstat(f.fd)
        if (error := f.take_error()) is not None:
            self._warning = (
                f"{f.name}, rotated from {self.path}, is damaged ({error}): lines after the "
                f"first {f.size()} bytes of its content may be lost; reading on with the "
                "next file"
            )
        # An archive never changes. Else the first bytes are checked again when the size or
        # the mtime changed: a file truncated and regrown to the very size read between two
        # polls has a new mtime.
        checked = (st.st_size, st.st_mtime_ns)
        if f.grows and (st.st_size < f.read_off or (checked != f.checked and not f.prefix_ok())):
            self._truncated(f, f.read_off)
            return None
        f.checked = checked
        if f.grows and st.st_size > f.read_off:
            return None  # grew between the read and the fstat: read on
        target = self._next
        chained = target is None and bool(self._chain)
        if chained:
            target = self._chain[0]  # a rotated sibling comes before the path
        if target is None:
            try:
                pst = os.stat(self.path)
            except (FileNotFoundError, NotADirectoryError):
                pst = None
            if pst is None or (pst.st_dev, pst.st_ino) == f.ident:
                # Same file, or path gone: follow the descriptor we have.
                f.rot_noticed = None
                return _IDLE
        now = time.monotonic()
        if f.rot_noticed is None:
            f.rot_noticed = now
        waited = now - max(f.last_growth, f.rot_noticed)
        if not immediate and f.grows and waited < self.rotate_grace:
            return _WAITING  # the writer may still be writing to the renamed file
        if target is None:
            try:
                target = _open_file(self.path)
            except OSError as exc:
                self.last_error = f"{self.path}: {exc}"
                return _WAITING
            if target is None or target.ident == f.ident:
                if target is not None:
                    target.close()
                return _IDLE
            f.switch_event = "rotated" if st.st_nlink > 0 else "replaced"
            # A reader behind the writer (a backlog, a slow catch-up) may see the path
            # rotate more than once while in ``f``: the files rotated in between come first.
            chain = self._successors(f, {target.ident})
            if chain:
                target.close()  # opened again once the chain is read
                target = chain.pop(0)
                self._chain = chain
            else:
                self._note_older(target)
        elif chained:
            self._chain.pop(0)
            f.switch_event = f.switch_event or "rotated"
        else:
            self._next = None
        acc = self._acc
        assert acc is not None
        f.flush_tail(self.max_line_bytes, acc.lines, acc.too_long)
        self._finished.append(f.position())
        self._begin_event(f.switch_event or "rotated")
        self._drop_prev()
        self._prev = f
        self._cur = target
        target.seek(0)
        return None
