"""Property tests: any bytes written in any pieces give exactly the newline-terminated lines."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from puppylogd.tailer import TOO_LONG_KEEP, Chunk, Tailer
from tests.unit.test_tailer_compressed import COMPRESSORS

# Bytes rich in newlines and carriage returns, plus runs long enough to exceed TOO_LONG_KEEP.
segments = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\r"]),
        st.integers(min_value=1, max_value=2500).map(lambda n: b"L" * n),
    ),
    max_size=25,
)


def expected(content: bytes, max_line: int) -> tuple[list[bytes], list[bytes]]:
    """Return (lines, too_long) that the tailer must produce for ``content``."""
    complete = content.split(b"\n")[:-1]
    lines = [x for x in complete if len(x) <= max_line]
    too_long = [x[:TOO_LONG_KEEP] for x in complete if len(x) > max_line]
    return lines, too_long


def flatten(chunks: list[Chunk]) -> tuple[list[bytes], list[bytes]]:
    return [x for c in chunks for x in c.lines], [x for c in chunks for x in c.too_long]


def drain(t: Tailer, max_lines: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    while (chunk := t.read_available(max_lines)) is not None:
        chunks.append(chunk)
    return chunks


# (max_line_bytes, read_size, max_lines): tiny values so every boundary case is exercised,
# and room for everything (the tailer splits many lines in one call then).
sizes = st.tuples(
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=64),
    st.one_of(st.integers(min_value=1, max_value=5), st.just(10_000)),
)


@settings(max_examples=300, deadline=None)
@given(
    parts=segments,
    cuts=st.lists(st.integers(min_value=0, max_value=60_000), max_size=12),
    size=sizes,
    rewind_at=st.integers(min_value=0),
)
def test_any_writes_yield_exactly_the_complete_lines(
    parts: list[bytes], cuts: list[int], size: tuple[int, int, int], rewind_at: int
) -> None:
    max_line, read_size, max_lines = size
    content = b"".join(parts)
    points = sorted({min(c, len(content)) for c in cuts} | {0, len(content)})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "access.log"
        path.write_bytes(b"")
        t = Tailer(path, max_line_bytes=max_line, read_size=read_size, poll_interval=0.01)
        assert t.open(None) == "new file"
        chunks: list[Chunk] = []
        with path.open("ab", buffering=0) as fh:
            for a, b in itertools.pairwise(points):
                fh.write(content[a:b])
                chunks += drain(t, max_lines)
                assert t.at_eof()
                cur = t._cur
                assert cur is not None
                # Memory bound: never more than one line's worth plus one read buffered.
                assert len(cur.buf) <= max_line + read_size
        assert flatten(chunks) == expected(content, max_line)
        assert all(c.event is None for c in chunks)
        assert all(0 < len(c.lines) + len(c.too_long) <= max_lines for c in chunks)
        for before, after in itertools.pairwise(chunks):
            assert after.start == before.end
        final = chunks[-1].end.offset if chunks else 0
        assert final == content.rfind(b"\n") + 1

        # Rewinding to any chunk's start yields the same lines from there on.
        if chunks:
            i = rewind_at % len(chunks)
            t.rewind(chunks[i].start)
            assert flatten(drain(t, max_lines)) == flatten(chunks[i:])
        t.close()


@settings(max_examples=150, deadline=None)
@given(
    old_parts=segments,
    new_parts=segments,
    size=sizes,
    cut=st.integers(min_value=0),
)
def test_rotation_at_any_point_loses_and_repeats_nothing(
    old_parts: list[bytes], new_parts: list[bytes], size: tuple[int, int, int], cut: int
) -> None:
    max_line, read_size, max_lines = size
    old, new = b"".join(old_parts), b"".join(new_parts)
    seen = cut % (len(old) + 1)  # bytes of the old file written before the tailer reads
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "access.log"
        path.write_bytes(old[:seen])
        t = Tailer(path, max_line_bytes=max_line, read_size=read_size, poll_interval=0.01)
        t.open(None)
        chunks = drain(t, max_lines)
        with path.open("ab") as fh:
            fh.write(old[seen:])
        os.rename(path, Path(tmp) / "access.log.1")
        path.write_bytes(new)
        chunks += drain(t, max_lines)
        t.close()
    # The unterminated tail of the rotated file is a final line of its own.
    want_old = expected(old + b"\n" if old and not old.endswith(b"\n") else old, max_line)
    want_new = expected(new, max_line)
    assert flatten(chunks) == (want_old[0] + want_new[0], want_old[1] + want_new[1])
    # A switch to a file still empty is handed out with the new file's first bytes.
    assert [c.event for c in chunks if c.event] == (["rotated"] if new or not old else [])
    for before, after in itertools.pairwise(chunks):
        assert after.start == before.end


@settings(max_examples=150, deadline=None)
@given(
    old_parts=segments,
    new_parts=segments,
    size=sizes,
    ending=st.sampled_from(sorted(COMPRESSORS)),
    picks=st.tuples(st.integers(min_value=0), st.integers(min_value=0)),
)
def test_compressed_rotated_file_is_read_restarted_and_rewound_exactly(
    old_parts: list[bytes],
    new_parts: list[bytes],
    size: tuple[int, int, int],
    ending: str,
    picks: tuple[int, int],
) -> None:
    """Read on in the checkpoint's file, compressed since, from the checkpoint.

    Restarted at any chunk's end, or rewound to any chunk's start, it gives the same lines,
    each once.
    """
    max_line, read_size, max_lines = size
    stop, back = picks
    old, new = b"".join(old_parts), b"".join(new_parts)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "access.log"
        path.write_bytes(b"first\n")
        t = Tailer(path)
        t.open(None)
        cp = drain(t, 10)[-1].end
        t.close()
        with path.open("ab") as fh:
            fh.write(old)
        rotated = Path(tmp) / "access.log.1"
        path.rename(rotated)
        packed = rotated.with_name(rotated.name + ending)
        packed.write_bytes(COMPRESSORS[ending](rotated.read_bytes()))
        rotated.unlink()
        path.write_bytes(new)

        def tailer() -> Tailer:
            return Tailer(path, max_line_bytes=max_line, read_size=read_size, poll_interval=0.01)

        t = tailer()
        assert t.open(cp) == f"resumed from compressed file {packed.name}"
        chunks = drain(t, max_lines)
        want_old = expected(old + b"\n" if old and not old.endswith(b"\n") else old, max_line)
        want_new = expected(new, max_line)
        assert flatten(chunks) == (want_old[0] + want_new[0], want_old[1] + want_new[1])
        for before, after in itertools.pairwise(chunks):
            assert after.start == before.end
        if chunks:
            # A restart at any chunk's end: the rest, once.
            i = stop % len(chunks)
            again = tailer()
            again.open(chunks[i].end)
            assert again.take_warning() is None
            assert flatten(drain(again, max_lines)) == flatten(chunks[i + 1 :])
            again.close()
            # A rewind to any chunk's start: the same lines from there on.
            j = back % len(chunks)
            t.rewind(chunks[j].start)
            assert flatten(drain(t, max_lines)) == flatten(chunks[j:])
        t.close()
