"""Property tests for the Common/Combined Log Format parser."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from puppylogd.parser import COLUMNS, REASONS, REJECT_KEEP_BYTES, Parser, RecordRow, Rejected

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Bytes the parser must refuse anywhere in a line (tab is allowed).
CONTROL = "".join(chr(c) for c in [*range(0x09), *range(0x0A, 0x20), 0x7F])

FAST = settings(max_examples=150, deadline=None)


def check_result(raw: bytes, result: RecordRow | Rejected) -> None:
    """Assert ``result`` is a well-formed outcome of parsing ``raw``."""
    if isinstance(result, Rejected):
        assert result.reason in REASONS
        assert result.reason != "line too long"
        assert result.line == raw[:REJECT_KEEP_BYTES]
        assert isinstance(result.detail, str)
    else:
        assert isinstance(result, tuple)
        assert len(result) == len(COLUMNS)
        assert result[0].tzinfo is UTC


def split(results: list[RecordRow | Rejected]) -> tuple[list[RecordRow], list[Rejected]]:
    """Split per-line results the way ``parse_many`` reports them."""
    rows = [r for r in results if not isinstance(r, Rejected)]
    return rows, [r for r in results if isinstance(r, Rejected)]


# --- arbitrary input -----------------------------------------------------------------------

VALID_LINE = (
    b'10.0.0.1 - james [09/May/2018:16:00:39 +0200] "GET /pages/x?y=1 HTTP/1.1" 200 512'
    b' "http://ref/" "agent"'
)


# Control bytes and backslashes: lines without any take parse_many's fastest path.
NOT_CLEAN = (CONTROL + "\\").encode()


@st.composite
def mutated_lines(draw: st.DrawFn, *, clean: bool = False) -> bytes:
    """Draw a valid line with a few byte-level insertions, deletions or replacements.

    With ``clean`` the mutations add no control bytes or backslashes.
    """
    data = bytearray(VALID_LINE)
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = draw(
            st.one_of(
                st.binary(min_size=1, max_size=4),
                st.sampled_from([b'"', b"\\", b" ", b"-", b"[", b"]", b"\r", b"\t", b"\xc3"]),
            )
        )
        if clean:
            chunk = chunk.translate(None, NOT_CLEAN)
        if op == "insert":
            data[pos:pos] = chunk
        elif op == "delete":
            del data[pos : pos + len(chunk)]
        else:
            data[pos : pos + len(chunk)] = chunk
    return bytes(data)


any_line = st.one_of(st.binary(max_size=300), mutated_lines())


@FAST
@given(any_line)
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    result = Parser(1).parse(raw)
    check_result(raw, result)
    assert Parser(1).parse_many([raw]) == split([result])


@FAST
@given(
    st.one_of(
        st.lists(any_line, max_size=300),
        # All-clean batches exercise the fast path's other regex.
        st.lists(mutated_lines(clean=True), max_size=300),
    )
)
def test_parse_many_agrees_with_parse(lines: list[bytes]) -> None:
    many = Parser(1).parse_many(lines)
    single = Parser(1)
    assert many == split([single.parse(raw) for raw in lines])


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=REJECT_KEEP_BYTES, max_size=3 * REJECT_KEEP_BYTES))
def test_long_garbage_is_truncated(raw: bytes) -> None:
    check_result(raw, Parser(1).parse(raw))


# --- generated valid lines -----------------------------------------------------------------


def text(*, exclude: str = "", min_size: int = 0, max_size: int = 20) -> st.SearchStrategy[str]:
    """Strings of any encodable character except control bytes and ``exclude``."""
    return st.text(
        st.characters(codec="utf-8", exclude_characters=CONTROL + exclude),
        min_size=min_size,
        max_size=max_size,
    )


hostnames = st.from_regex(r"[a-z0-9-]{1,15}(\.[a-z0-9-]{1,15}){0,3}", fullmatch=True)
hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    hostnames,
)
# ident/user: "-" (absent) or any token without a space.
tokens = st.one_of(st.just("-"), text(exclude=" ", min_size=1))
methods = st.one_of(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
    st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}", fullmatch=True),
)
# Path segments and a query; quotes and backslashes are escaped when the line is written.
segments = text(exclude=" /?#", max_size=8)
paths = st.builds(
    lambda segs, query: "/" + "/".join(segs) + query,
    st.lists(segments, max_size=4),
    st.one_of(st.just(""), text(exclude=" ", max_size=12).map(lambda q: "?" + q)),
)
protocols = st.sampled_from(["HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/2", "HTTP/3", ""])
offsets = st.builds(
    lambda sign, h, m: sign * timedelta(hours=h, minutes=m),
    st.sampled_from([1, -1]),
    st.integers(0, 23),
    st.integers(0, 59),
)
# Wall times far enough from datetime's limits that any offset converts.
wall_times = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)).map(
    lambda wall: wall.replace(microsecond=0)
)
quoted = st.one_of(st.just("-"), text(max_size=30))


def escape(value: str) -> str:
    """Escape a quoted field the way Apache and nginx do for quotes and backslashes."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def format_offset(offset: timedelta) -> str:
    """Render an offset as ``+hhmm``/``-hhmm``."""
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def expected_section(path: str) -> str:
    """Compute the section independently of the parser."""
    bare = path.split("?", 1)[0].split("#", 1)[0]
    return "/" + bare[1:].split("/", 1)[0]


@dataclass(frozen=True)
class Generated:
    """A generated log line and the row it must parse to."""

    raw: bytes
    row: RecordRow


@st.composite
def valid_lines(draw: st.DrawFn) -> Generated:
    """Draw a valid CLF or Combined line together with its expected row."""
    host = draw(hosts)
    ident = draw(tokens)
    user = draw(tokens)
    wall = draw(wall_times)
    offset = draw(offsets)
    method = draw(methods)
    path = draw(paths)
    protocol = draw(protocols)
    status = draw(st.integers(100, 999))
    size = draw(st.one_of(st.none(), st.integers(0, 10**18 - 1)))
    combined = draw(st.booleans())
    referer = draw(quoted)
    agent = draw(quoted)

    target = escape(path)
    if draw(st.booleans()):
        scheme = draw(st.sampled_from(["http", "https", "HTTP"]))
        target = f"{scheme}://{draw(hostnames)}{target}"
    request = f"{method} {target}" + (f" {protocol}" if protocol else "")
    stamp = (
        f"{wall.day:02d}/{MONTHS[wall.month - 1]}/{wall.year:04d}:"
        f"{wall.hour:02d}:{wall.minute:02d}:{wall.second:02d} {format_offset(offset)}"
    )
    text_line = (
        f'{host} {ident} {user} [{stamp}] "{request}" {status} {"-" if size is None else size}'
    )
    if combined:
        text_line += f' "{escape(referer)}" "{escape(agent)}"'
    raw = text_line.encode()
    if draw(st.booleans()):
        raw += b"\r"

    ts = wall.replace(tzinfo=timezone(offset)).astimezone(UTC)
    row: RecordRow = (
        ts,
        5,
        host,
        None if ident == "-" else ident,
        None if user == "-" else user,
        method,
        path,
        expected_section(path),
        protocol,
        status,
        size,
        referer if combined and referer != "-" else None,
        agent if combined and agent != "-" else None,
    )
    return Generated(raw, row)


@settings(max_examples=300, deadline=None)
@given(valid_lines())
def test_valid_lines_round_trip(gen: Generated) -> None:
    assert Parser(5).parse(gen.raw) == gen.row
    assert Parser(5).parse_many([gen.raw]) == ([gen.row], [])


@settings(max_examples=40, deadline=None)
@given(st.lists(valid_lines(), min_size=1, max_size=300))
def test_valid_batches_round_trip(gens: list[Generated]) -> None:
    rows, rejected = Parser(5).parse_many([g.raw for g in gens])
    assert rejected == []
    assert rows == [g.row for g in gens]


@FAST
@given(
    valid_lines(),
    st.one_of(st.none(), st.timedeltas(timedelta(days=-3), timedelta(days=3))),
    st.one_of(st.none(), st.timedeltas(timedelta(days=-3), timedelta(days=3))),
)
def test_bounds(gen: Generated, low: timedelta | None, high: timedelta | None) -> None:
    ts = gen.row[0]
    min_ts = None if low is None else ts + low
    max_ts = None if high is None else ts + high
    parser = Parser(5, min_ts=min_ts, max_ts=max_ts)
    result = parser.parse(gen.raw)
    if min_ts is not None and ts < min_ts:
        assert isinstance(result, Rejected)
        assert result.reason == "timestamp too old"
    elif max_ts is not None and ts > max_ts:
        assert isinstance(result, Rejected)
        assert result.reason == "timestamp in the future"
    else:
        assert result == gen.row
    assert Parser(5, min_ts=min_ts, max_ts=max_ts).parse_many([gen.raw]) == split([result])


@FAST
@given(valid_lines(), st.sampled_from(sorted(set(CONTROL) - {"\r"})), st.data())
def test_control_byte_anywhere_rejects(gen: Generated, ctrl: str, data: st.DataObject) -> None:
    body = gen.raw.removesuffix(b"\r")
    # Position 0 only for bytes other than NUL: leading NULs are a crash's padding.
    pos = data.draw(st.integers(0 if ctrl != "\x00" else 1, len(body)))
    raw = body[:pos] + ctrl.encode() + body[pos:]
    result = Parser(5).parse(raw)
    assert isinstance(result, Rejected)
    assert result.reason == "control bytes"
    assert Parser(5).parse_many([raw]) == ([], [result])
