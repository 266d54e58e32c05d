"""Shared pieces of the reliability suite: unique lines, exact counts, the summary file.

Every valid line carries a unique id in its path (``/<section>/id-<n>``), so the exact row
count proves nothing was lost and ``count(*) = count(DISTINCT path)`` proves nothing was
doubled. Invalid lines (``bad line <n>``) must each be one rejected line. Each test appends
one summary line per fault to :data:`SUMMARY_FILE`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.integration.helpers import (
    Counts,
    DaemonProcess,
    append,
    clf_time,
    counts,
    query_rows,
    wait_for,
)

SUMMARY_FILE = Path("/tmp/puppylog-reliability.txt")
# Fast commits and polling keep the live tests short.
LIVE: dict[str, Any] = {"batch_ms": 20, "poll_interval": 0.02}


@dataclass
class Lines:
    """A source of unique lines; counts what it handed out.

    ``invalid_every``: every n-th line is invalid (0: none). ``section`` keeps the ids of
    several writers apart.
    """

    invalid_every: int = 0
    section: str = "pages"
    host: str = "10.0.0.1"
    next_id: int = 0
    valid: int = 0
    invalid: int = 0

    @property
    def written(self) -> int:
        return self.valid + self.invalid

    def make(self, count: int, ts: datetime | None = None) -> bytes:
        """Return ``count`` new lines (timestamp ``ts``, default now), newline-terminated."""
        when = clf_time(ts if ts is not None else datetime.now(UTC))
        head = f'{self.host} - - [{when}] "GET /{self.section}/id-'
        parts: list[str] = []
        start = self.next_id
        every = self.invalid_every
        for i in range(start, start + count):
            if every and i % every == every - 1:
                parts.append(f"bad line {i}\n")
                self.invalid += 1
            else:
                parts.append(f'{head}{i} HTTP/1.1" 200 123\n')
                self.valid += 1
        self.next_id = start + count
        return "".join(parts).encode()


def rotate(path: Path) -> None:
    """logrotate without compression: access.log.1 -> .2, access.log -> .1, new access.log."""
    one = path.with_name(path.name + ".1")
    if one.exists():
        one.rename(path.with_name(path.name + ".2"))
    path.rename(one)
    path.touch()
    time.sleep(0.01)  # distinct mtimes: the tailer orders rotated siblings by them


def stream_totals(dsn: str) -> tuple[int, int]:
    """Return (lines_stored, lines_rejected) summed over the streams (cheap to poll)."""
    (row,) = query_rows(
        dsn,
        "SELECT coalesce(sum(lines_stored), 0) AS s, coalesce(sum(lines_rejected), 0) AS r "
        "FROM puppylog.log_streams",
    )
    return int(row["s"]), int(row["r"])


def wait_stored(
    dsn: str,
    valid: int,
    invalid: int,
    timeout: float,
    daemons: list[DaemonProcess] | tuple[DaemonProcess, ...] = (),
) -> None:
    """Wait until the streams' counters reach exactly ``valid`` and ``invalid`` (never more)."""
    last: list[tuple[int, int]] = [(0, 0)]

    def done() -> bool:
        for d in daemons:
            d.assert_running()
        stored, rejected = last[0] = stream_totals(dsn)
        assert stored <= valid, f"{stored} records stored, only {valid} valid lines written"
        assert rejected <= invalid, f"{rejected} rejected, only {invalid} invalid lines written"
        return (stored, rejected) == (valid, invalid)

    def message() -> str:
        text = f"{valid} stored and {invalid} rejected (have {last[0]})"
        for d in daemons:
            text += "\n" + d.output()[-4000:]
        return text

    wait_for(done, timeout, interval=0.1, message=message)


def assert_exact(dsn: str, valid: int, invalid: int) -> Counts:
    """Assert the database holds exactly the written lines: no gap, no duplicate."""
    c = counts(dsn)
    assert c.duplicates == 0, c
    assert c == Counts(valid, valid, invalid, valid, invalid), c
    return c


def record(fault: str, written: int, c: Counts, seconds: float, extra: str = "") -> str:
    """Print and append one summary line (fault, lines written, stored, rejected)."""
    line = (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} | {fault} | written {written:,} | "
        f"stored {c.rows:,} | duplicates {c.duplicates} | rejected {c.rejected_lines:,} | "
        f"{seconds:.1f} s" + (f" | {extra}" if extra else "")
    )
    print(line)
    with SUMMARY_FILE.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
    return line


def write_slices(path: Path, data: bytes, pieces: int, rand: Any, pause: float = 0.0) -> None:
    """Append ``data`` in ``pieces`` slices cut at random byte offsets (lines split too)."""
    cuts = sorted(rand.randrange(len(data)) for _ in range(max(pieces - 1, 0)))
    start = 0
    for cut in [*cuts, len(data)]:
        if cut > start:
            append(path, data[start:cut])
            start = cut
        if pause:
            time.sleep(pause)


def committed_offset(dsn: str) -> tuple[int | None, int]:
    """Return (inode, byte_offset) of the only stream's committed checkpoint."""
    (row,) = query_rows(dsn, "SELECT inode, byte_offset FROM puppylog.log_streams")
    return (None if row["inode"] is None else int(row["inode"])), int(row["byte_offset"])


def caught_up_with(dsn: str, path: Path) -> bool:
    """Return whether the checkpoint is at the end of the file now at ``path``."""
    st = os.stat(path)
    return committed_offset(dsn) == (st.st_ino, st.st_size)
