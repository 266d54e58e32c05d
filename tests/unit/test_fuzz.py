"""Fuzzing the reading path: tailer + parser on arbitrary bytes written in arbitrary pieces.

Whatever the bytes (invalid UTF-8, NULs, raw escapes, CR, CRLF, 1 MB lines, no final newline)
and wherever the writes and reads split them, reading never raises and never stalls, every
complete valid line becomes exactly one record, and every other complete line is rejected
with one of ``REASONS``.  The database-backed variant is in
``tests/integration/test_bad_input.py``.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from puppylogd.parser import REASONS, Parser, Rejected
from puppylogd.tailer import Tailer
from tests.integration.helpers import clf_time

MAX_LINE = 65536
TS = datetime(2026, 11, 28, 4, 30, tzinfo=UTC)
BIG = 1024 * 1024  # a 1 MB line


def valid_line(i: int, agent: str, crlf: bool) -> bytes:
    """A valid Combined line with unique path ``/v/id-<i>`` (escapes in the agent)."""
    quoted = agent.replace("\\", "\\\\").replace('"', '\\"')
    line = (
        f'10.0.0.{i % 250} - - [{clf_time(TS)}] "GET /v/id-{i} HTTP/1.1" 200 {i} "-" "{quoted}"'
    ).encode()
    return line + (b"\r\n" if crlf else b"\n")


# Text an agent may hold: quotes, backslashes, SQL, JSON, literal escape text, non-ASCII.
agents = st.one_of(
    st.sampled_from(
        [
            "curl/8.0",
            'it\'s "quoted" \\ back\\slash',
            "'; DROP TABLE puppylog.log_records; --",
            '"}],"type":"alert',
            "\\x1b]0;pwned\\x07 \\x1b[2J",
            "%1b%5b2J",
            "caf\u00e9 \u202e \u009b",
        ]
    ),
    st.text(
        st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\u2028\u2029"),
        max_size=30,
    ),
)

# Complete bad lines (without their newline): each must be rejected, never stored.
bad_lines = st.one_of(
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from(
        [
            b"",
            b"\r",
            b"\x00\x00\x00",
            b"\xff\xfe not utf-8 \xc3\x28",
            b"GET / HTTP/1.1",
            b"this line is rejected",
            b'1.2.3.4 - - [28/Nov/2026:04:30:00 +0000] "GET /\x1b]0;pwned\x07 HTTP/1.1" 200 1',
            b'1.2.3.4 - - [28/Nov/2026:04:30:00 +0000] "GET /\x1b[2J HTTP/1.1" 200 1',
            b'1.2.3.4 - - [28/Nov/2026:04:30:00 +0000] "GET /nul\x00 HTTP/1.1" 200 1',
            b'1.2.3.4 - - [28/Nov/2026:04:30:00 +0000] "GET /bad\xff HTTP/1.1" 200 1',
            b'1.2.3.4 - - [31/Feb/2026:04:30:00 +0000] "GET / HTTP/1.1" 200 1',
            b'1.2.3.4 - - [28/Nov/2026:04:30:00 +0000] "GET / HTTP/1.1" 2000 1',
            b'1.2.3.4 - - [28/Nov/2026:04:30:00 +0000] "" 200 1',
        ]
    ),
    st.integers(min_value=MAX_LINE + 1, max_value=MAX_LINE + 300).map(lambda n: b"L" * n),
    st.just(b"B" * BIG),
)

# One item: a valid line (kind "v") or a bad line ending in "\n" or "\r\n" (kind "b").
items = st.lists(
    st.one_of(
        st.tuples(st.just("v"), agents, st.booleans()),
        st.tuples(st.just("b"), bad_lines, st.booleans()),
    ),
    max_size=12,
)


def build(spec: list[tuple[str, object, bool]], tail: bytes) -> tuple[bytes, list[int], int, int]:
    """Return (content, valid ids in order, complete bad lines, of which too long)."""
    content = b""
    ids: list[int] = []
    bad = too_long = 0
    for i, (kind, value, crlf) in enumerate(spec):
        if kind == "v":
            assert isinstance(value, str)
            content += valid_line(i, value, crlf)
            ids.append(i)
        else:
            assert isinstance(value, bytes)
            line = value + (b"\r" if crlf else b"")
            content += line + b"\n"
            bad += 1
            too_long += len(line) > MAX_LINE
    return content + tail, ids, bad, too_long


def read_all(tailer: Tailer, parser: Parser) -> tuple[list[int], list[Rejected], int]:
    """Drain the tailer through the parser; return (record ids, rejected, too-long count)."""
    ids: list[int] = []
    rejected: list[Rejected] = []
    too_long = 0
    for _ in range(100_000):  # never stall: a bounded number of reads reaches the end
        chunk = tailer.read_available(7)
        if chunk is None:
            return ids, rejected, too_long
        rows, bad = parser.parse_many(chunk.lines)
        ids += [int(r[6].rsplit("-", 1)[1]) for r in rows]
        rejected += bad
        too_long += len(chunk.too_long)
    raise AssertionError("the tailer never reached the end of the file")


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    spec=items,
    tail=st.one_of(st.just(b""), st.binary(max_size=30).map(lambda b: b.replace(b"\n", b""))),
    cuts=st.lists(st.integers(min_value=0, max_value=2 * BIG), max_size=8),
    read_size=st.integers(min_value=1, max_value=9000),
)
@example(
    spec=[("v", "a", False), ("b", b"B" * BIG, False), ("v", "b", True), ("b", b"\x00", True)],
    tail=b"no newline at end",
    cuts=[10, BIG // 2, BIG + 150, BIG + 151],
    read_size=4096,
)
def test_any_bytes_in_any_pieces_store_each_valid_line_once(
    spec: list[tuple[str, object, bool]], tail: bytes, cuts: list[int], read_size: int
) -> None:
    content, want_ids, bad, want_too_long = build(spec, tail)
    # Tiny reads are the interesting ones, but a 1 MB line read byte by byte is just slow.
    read_size = max(read_size, len(content) // 500)
    points = sorted({min(c, len(content)) for c in cuts} | {0, len(content)})
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "access.log"
        path.write_bytes(b"")
        tailer = Tailer(path, max_line_bytes=MAX_LINE, read_size=read_size, poll_interval=0.01)
        tailer.open(None)
        parser = Parser(1)
        ids: list[int] = []
        rejected: list[Rejected] = []
        too_long = 0
        with path.open("ab", buffering=0) as fh:
            for a, b in itertools.pairwise(points):
                fh.write(content[a:b])
                got_ids, got_rejected, got_too_long = read_all(tailer, parser)
                ids += got_ids
                rejected += got_rejected
                too_long += got_too_long
                assert tailer.at_eof()
        final = tailer.position.offset
        tailer.close()
    assert ids == want_ids  # each complete valid line once, in order; the tail is pending
    assert too_long == want_too_long
    assert len(rejected) + too_long == bad
    assert all(r.reason in REASONS for r in rejected)
    assert final == content.rfind(b"\n") + 1
    assert time.monotonic() - started < 20


@settings(max_examples=300, deadline=None)
@given(line=st.binary(max_size=300))
def test_parser_never_raises_and_parse_many_agrees(line: bytes) -> None:
    parser = Parser(1)
    one = parser.parse(line)
    rows, rejected = Parser(1).parse_many([line])
    if isinstance(one, Rejected):
        assert one.reason in REASONS
        assert rows == [] and rejected == [one]
    else:
        assert rows == [one] and rejected == []


def test_every_split_point_of_a_mixed_file() -> None:
    """Two writes split at every byte: a line torn anywhere is read once, whole."""
    spec: list[tuple[str, object, bool]] = [
        ("v", "curl", False),
        ("b", b"\xff\x00junk", False),
        ("v", '"}],"type":"alert', True),
        ("b", b"L" * (MAX_LINE + 5), False),
        ("v", "\\x1b[2J", False),
    ]
    content, want_ids, bad, _ = build(spec, b"partial")
    small = [p for p in range(len(content)) if p < 400 or p > len(content) - 400]
    for cut in small:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "access.log"
            path.write_bytes(content[:cut])
            tailer = Tailer(path, max_line_bytes=MAX_LINE, read_size=97, poll_interval=0.01)
            tailer.open(None)
            parser = Parser(1)
            ids, rejected, too_long = read_all(tailer, parser)
            with path.open("ab") as fh:
                fh.write(content[cut:])
            more = read_all(tailer, parser)
            tailer.close()
        assert ids + more[0] == want_ids, cut
        assert len(rejected) + len(more[1]) + too_long + more[2] == bad, cut
