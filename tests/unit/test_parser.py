"""Unit tests for the Common/Combined Log Format parser."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from puppylogd.parser import (
    COLUMNS,
    REASONS,
    REJECT_KEEP_BYTES,
    Parser,
    RecordRow,
    Rejected,
    section_of,
)

TS = "09/May/2018:16:00:39 +0000"
TS_UTC = datetime(2018, 5, 9, 16, 0, 39, tzinfo=UTC)


def line(
    *,
    host: str = "127.0.0.1",
    ident: str = "-",
    user: str = "james",
    ts: str = TS,
    request: str = "GET /report HTTP/1.0",
    status: str = "200",
    size: str = "123",
    tail: str = "",
) -> bytes:
    """Build a log line from its fields (``tail`` is appended verbatim)."""
    return f'{host} {ident} {user} [{ts}] "{request}" {status} {size}{tail}'.encode()


def parse_row(raw: bytes, parser: Parser | None = None) -> RecordRow:
    """Parse ``raw`` with both entry points, check they agree and return the row."""
    p = parser or Parser(7)
    result = p.parse(raw)
    assert not isinstance(result, Rejected), result
    assert Parser(7).parse_many([raw]) == ([result], [])
    return result


def parse_rejected(raw: bytes, parser: Parser | None = None) -> Rejected:
    """Parse ``raw`` with both entry points, check they agree and return the rejection."""
    p = parser or Parser(7)
    result = p.parse(raw)
    assert isinstance(result, Rejected), result
    assert result.reason in REASONS
    assert Parser(7, min_ts=p._min_ts, max_ts=p._max_ts).parse_many([raw]) == ([], [result])
    return result


def field(row: RecordRow, name: str) -> object:
    """Return the column ``name`` of ``row``."""
    return row[COLUMNS.index(name)]


# --- accepted lines ------------------------------------------------------------------------


def test_common_log_format_fields() -> None:
    row = parse_row(line())
    assert row == (
        TS_UTC,
        7,
        "127.0.0.1",
        None,
        "james",
        "GET",
        "/report",
        "/report",
        "HTTP/1.0",
        200,
        123,
        None,
        None,
    )
    assert len(row) == len(COLUMNS)
    assert row[0].tzinfo is UTC


def test_combined_log_format_fields() -> None:
    raw = line(
        request="POST /pages/create HTTP/1.1",
        status="201",
        tail=' "https://example.com/start" "Mozilla/5.0 (X11; Linux x86_64)"',
    )
    row = parse_row(raw)
    assert field(row, "method") == "POST"
    assert field(row, "path") == "/pages/create"
    assert field(row, "section") == "/pages"
    assert field(row, "status") == 201
    assert field(row, "referer") == "https://example.com/start"
    assert field(row, "user_agent") == "Mozilla/5.0 (X11; Linux x86_64)"


def test_combined_escaped_quotes_and_backslashes_are_unescaped() -> None:
    raw = line(tail=r' "http://r/?q=\"x\"" "agent \"quoted\" back\\slash \x41"')
    row = parse_row(raw)
    assert field(row, "referer") == 'http://r/?q="x"'
    # \xhh escapes stay verbatim: they may encode bytes that are not text.
    assert field(row, "user_agent") == 'agent "quoted" back\\slash \\x41'


def test_escaped_quote_in_request_path() -> None:
    row = parse_row(line(request=r"GET /a\"b HTTP/1.1"))
    assert field(row, "path") == '/a"b'


def test_dash_fields_are_none() -> None:
    row = parse_row(line(ident="-", user="-", size="-", tail=' "-" "-"'))
    assert field(row, "ident") is None
    assert field(row, "auth_user") is None
    assert field(row, "bytes") is None
    assert field(row, "referer") is None
    assert field(row, "user_agent") is None


def test_empty_quoted_referer_is_kept_as_empty_string() -> None:
    row = parse_row(line(tail=' "" ""'))
    assert field(row, "referer") == ""
    assert field(row, "user_agent") == ""


def test_ident_and_user_kept() -> None:
    row = parse_row(line(ident="ident1", user="frank"))
    assert field(row, "ident") == "ident1"
    assert field(row, "auth_user") == "frank"


@pytest.mark.parametrize(
    "host",
    ["10.0.0.1", "::1", "2001:db8::8a2e:370:7334", "fe80::1%eth0", "host.example.com", "web-1"],
)
def test_client_address_forms(host: str) -> None:
    assert field(parse_row(line(host=host)), "remote_host") == host


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("09/May/2018:16:00:39 +0000", datetime(2018, 5, 9, 16, 0, 39, tzinfo=UTC)),
        ("09/May/2018:16:00:39 -0000", datetime(2018, 5, 9, 16, 0, 39, tzinfo=UTC)),
        ("09/May/2018:16:00:39 +0200", datetime(2018, 5, 9, 14, 0, 39, tzinfo=UTC)),
        ("09/May/2018:16:00:39 -0700", datetime(2018, 5, 9, 23, 0, 39, tzinfo=UTC)),
        ("09/May/2018:16:00:39 +0530", datetime(2018, 5, 9, 10, 30, 39, tzinfo=UTC)),
        ("09/May/2018:16:00:39 +1400", datetime(2018, 5, 9, 2, 0, 39, tzinfo=UTC)),
        ("01/Jan/2019:01:00:00 +0200", datetime(2018, 12, 31, 23, 0, 0, tzinfo=UTC)),
        ("31/Dec/2018:22:00:00 -0300", datetime(2019, 1, 1, 1, 0, 0, tzinfo=UTC)),
        ("29/Feb/2020:00:00:00 +0000", datetime(2020, 2, 29, tzinfo=UTC)),
        ("09/may/2018:16:00:39 +0000", datetime(2018, 5, 9, 16, 0, 39, tzinfo=UTC)),
        ("09/MAY/2018:16:00:39 +0000", datetime(2018, 5, 9, 16, 0, 39, tzinfo=UTC)),
    ],
)
def test_timestamps_convert_to_utc(ts: str, expected: datetime) -> None:
    got = field(parse_row(line(ts=ts)), "ts")
    assert got == expected
    assert isinstance(got, datetime)
    assert got.tzinfo is UTC


@pytest.mark.parametrize(
    ("request_line", "method", "path", "section", "protocol"),
    [
        ("GET http://h/pages/x HTTP/1.1", "GET", "/pages/x", "/pages", "HTTP/1.1"),
        ("GET https://h.example:8443/a/b?x=1 HTTP/1.1", "GET", "/a/b?x=1", "/a", "HTTP/1.1"),
        ("GET HTTP://H/A HTTP/1.1", "GET", "/A", "/A", "HTTP/1.1"),
        ("GET http://h HTTP/1.1", "GET", "/", "/", "HTTP/1.1"),
        ("GET http://h?x=1 HTTP/1.1", "GET", "/?x=1", "/", "HTTP/1.1"),
        ("GET /pages/x?y=/z HTTP/2.0", "GET", "/pages/x?y=/z", "/pages", "HTTP/2.0"),
        ("GET /a HTTP/2", "GET", "/a", "/a", "HTTP/2"),
        ("GET /a HTTP/3", "GET", "/a", "/a", "HTTP/3"),
        ("get /a HTTP/1.1", "get", "/a", "/a", "HTTP/1.1"),
        ("M-SEARCH * HTTP/1.1", "M-SEARCH", "*", "/", "HTTP/1.1"),
        ("OPTIONS * HTTP/1.1", "OPTIONS", "*", "/", "HTTP/1.1"),
        ("CONNECT h.example:443 HTTP/1.1", "CONNECT", "h.example:443", "/", "HTTP/1.1"),
        # No protocol (an HTTP/0.9-style request line): protocol is "".
        ("GET /x", "GET", "/x", "/x", ""),
        ("GET /x/y?z", "GET", "/x/y?z", "/x", ""),
        # An unescaped space in the target is kept when a protocol ends the request.
        ("GET /a b/c HTTP/1.1", "GET", "/a b/c", "/a b", "HTTP/1.1"),
    ],
)
def test_request_lines(
    request_line: str, method: str, path: str, section: str, protocol: str
) -> None:
    row = parse_row(line(request=request_line))
    assert (
        field(row, "method"),
        field(row, "path"),
        field(row, "section"),
        field(row, "protocol"),
    ) == (method, path, section, protocol)


def test_trailing_carriage_return_is_stripped() -> None:
    assert parse_row(line() + b"\r") == parse_row(line())
    combined = line(tail=' "r" "ua"')
    assert parse_row(combined + b"\r") == parse_row(combined)


def test_utf8_path_and_fields() -> None:
    raw = line(
        user="jösé",
        request="GET /straße/üñí?q=日本 HTTP/1.1",
        tail=' "https://例え.jp/" "agent ☃"',
    )
    row = parse_row(raw)
    assert field(row, "auth_user") == "jösé"
    assert field(row, "path") == "/straße/üñí?q=日本"
    assert field(row, "section") == "/straße"
    assert field(row, "referer") == "https://例え.jp/"
    assert field(row, "user_agent") == "agent ☃"


def test_tab_is_an_ordinary_character() -> None:
    row = parse_row(line(request="GET /a\tb HTTP/1.1", tail=' "-" "a\tb"'))
    assert field(row, "path") == "/a\tb"
    assert field(row, "user_agent") == "a\tb"


def test_fields_after_combined_are_ignored() -> None:
    row = parse_row(line(tail=' "ref" "ua" "10.1.1.1, 10.2.2.2" 0.005'))
    assert field(row, "referer") == "ref"
    assert field(row, "user_agent") == "ua"


@pytest.mark.parametrize("status", ["100", "200", "301", "444", "499", "599", "999"])
def test_status_accepted(status: str) -> None:
    assert field(parse_row(line(status=status)), "status") == int(status)


@pytest.mark.parametrize("size", ["0", "1", "0012", "999999999999999999"])
def test_size_accepted(size: str) -> None:
    assert field(parse_row(line(size=size)), "bytes") == int(size)


# --- rejected lines ------------------------------------------------------------------------


@pytest.mark.parametrize("request_line", ["", "-"])
def test_empty_request(request_line: str) -> None:
    assert parse_rejected(line(request=request_line)).reason == "empty request"


@pytest.mark.parametrize(
    "ts",
    [
        "31/Feb/2018:16:00:39 +0000",
        "29/Feb/2019:16:00:39 +0000",
        "31/Apr/2018:16:00:39 +0000",
        "00/May/2018:16:00:39 +0000",
        "09/Foo/2018:16:00:39 +0000",
        "09/Mai/2018:16:00:39 +0000",
        "09/May/2018:24:00:00 +0000",
        "09/May/2018:16:60:00 +0000",
        "09/May/2018:16:00:60 +0000",
        "09/May/0000:16:00:39 +0000",
        "01/Jan/0001:00:00:00 +0100",
        "31/Dec/9999:23:00:00 -0100",
        "09/May/2018:16:00:39 +2400",
        "09/May/2018:16:00:39 +0060",
        "09/May/2018:16:00:39 0000",
        "09/May/2018:16:00:39 +000",
        "09/May/2018:16:00:39",
        "9/May/2018:16:00:39 +0000",
        "2018-05-09T16:00:39Z",
        "09/May/2018:16:00:39 +0000 ",
        "",
    ],
)
def test_bad_date(ts: str) -> None:
    assert parse_rejected(line(ts=ts)).reason == "bad date"


@pytest.mark.parametrize(
    "status",
    ["99", "099", "1000", "2000", "abc", "20x", "-", "\uff12\uff10\uff10", "+200", "200.0"],
)
def test_bad_status(status: str) -> None:
    rejected = parse_rejected(line(status=status))
    assert rejected.reason == "bad status"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b" ",
        b"garbage",
        b'127.0.0.1 - - [09/May/2018:16:00:39 +0000] "GET / HTTP/1.0" 200',
        b'127.0.0.1 - [09/May/2018:16:00:39 +0000] "GET / HTTP/1.0" 200 1',
        b'127.0.0.1  - - [09/May/2018:16:00:39 +0000] "GET / HTTP/1.0" 200 1',
        b' 127.0.0.1 - - [09/May/2018:16:00:39 +0000] "GET / HTTP/1.0" 200 1',
        b'127.0.0.1 - - [09/May/2018:16:00:39 +0000] "GET / HTTP/1.0" 200 1 ',
        b'127.0.0.1 - - [09/May/2018:16:00:39 +0000] "GET / HTTP/1.0" 200 1 garbage',
        b'127.0.0.1 - - [09/May/2018:16:00:39 +0000] "GET / HTTP/1.0" 200 1 "ref"',
        b'127.0.0.1 - - [09/May/2018:16:00:39 +0000] "GET / HTTP/1.0" 200 1 "ref" "ua',
        b'127.0.0.1 - - [09/May/2018:16:00:39 +0000] "GET / HTTP/1.0 200 1',
        b'127.0.0.1 - - [09/May/2018:16:00:39 +0000] "GET /"x HTTP/1.0" 200 1',
        b'127.0.0.1 - - [09/May/2018:16:00:39 +0000 "GET / HTTP/1.0" 200 1',
        b'127.0.0.1 - - [09/May/2018:16:00:39 +0000] "GET / HTTP/1.0" 200 -1',
        b'127.0.0.1 - - [09/May/2018:16:00:39 +0000] "GET / HTTP/1.0" 200 1.5',
        b'127.0.0.1 - - [09/May/2018:16:00:39 +0000] "GET / HTTP/1.0" 200 1234567890123456789',
        b'127.0.0.1 - - [09/May/2018:16:00:39 +0000] "GET / HTTP/1.0" 200 \xef\xbc\x91',
        # Request lines that are not METHOD SP target.
        b'127.0.0.1 - - [09/May/2018:16:00:39 +0000] "GET" 400 1',
        b'127.0.0.1 - - [09/May/2018:16:00:39 +0000] "GET  /x HTTP/1.1" 400 1',
        b'127.0.0.1 - - [09/May/2018:16:00:39 +0000] "\\x16\\x03\\x01" 400 1',
        b'127.0.0.1 - - [09/May/2018:16:00:39 +0000] "G(T /x HTTP/1.1" 400 1',
    ],
)
def test_malformed(raw: bytes) -> None:
    assert parse_rejected(raw).reason == "malformed"


@pytest.mark.parametrize(
    "raw",
    [
        line(request="GET /\x00 HTTP/1.1"),
        line(request="GET /\x1b[31m HTTP/1.1"),
        line(request="GET /\x7f HTTP/1.1"),
        line(tail=' "r" "ua\x01"'),
        line(user="a\x08"),
        line() + b"\n",
        line() + b"\r\r",
        line(request="GET /a\rb HTTP/1.1"),
        b"\r" + line(),
        line(request="GET /\x00\xff HTTP/1.1"),  # control bytes win over invalid UTF-8
    ],
)
def test_control_bytes(raw: bytes) -> None:
    assert parse_rejected(raw).reason == "control bytes"


@pytest.mark.parametrize(
    "bad",
    [
        b"\xff",
        b"\xc3",  # truncated sequence
        b"\xc0\xaf",  # overlong "/"
        b"\xed\xa0\x80",  # UTF-16 surrogate
        b"\xf4\x90\x80\x80",  # beyond U+10FFFF
        b"\x80",
    ],
)
def test_invalid_utf8(bad: bytes) -> None:
    raw = line(request="GET /x HTTP/1.1").replace(b"/x", b"/x" + bad)
    rejected = parse_rejected(raw)
    assert rejected.reason == "invalid utf-8"
    assert rejected.line == raw


def test_rejected_line_is_raw_and_truncated() -> None:
    long_line = b"x" * (REJECT_KEEP_BYTES * 3) + b"\r"
    rejected = parse_rejected(long_line)
    assert rejected.line == long_line[:REJECT_KEEP_BYTES]
    short = line(status="abc") + b"\r"
    assert parse_rejected(short).line == short


def test_rejected_is_frozen() -> None:
    rejected = parse_rejected(b"x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rejected.reason = "other"  # type: ignore[misc]
    assert rejected.detail


def test_reasons_lists_every_code() -> None:
    assert set(REASONS) == {
        "line too long",
        "control bytes",
        "invalid utf-8",
        "malformed",
        "empty request",
        "bad date",
        "bad status",
        "timestamp too old",
        "timestamp in the future",
    }
    assert len(REASONS) == len(set(REASONS))


# --- timestamp bounds ----------------------------------------------------------------------


def test_bounds_reject_old_and_future() -> None:
    p = Parser(7, min_ts=TS_UTC - timedelta(hours=1), max_ts=TS_UTC + timedelta(hours=1))
    assert parse_row(line(), p)[0] == TS_UTC
    old = line(ts="09/May/2018:14:59:59 +0000")
    future = line(ts="09/May/2018:17:00:40 +0000")
    assert parse_rejected(old, p).reason == "timestamp too old"
    assert parse_rejected(future, p).reason == "timestamp in the future"


def test_bounds_are_inclusive_and_compare_in_utc() -> None:
    p = Parser(7, min_ts=TS_UTC, max_ts=TS_UTC)
    assert parse_row(line(), p)[0] == TS_UTC
    assert parse_row(line(ts="09/May/2018:18:00:39 +0200"), p)[0] == TS_UTC
    assert parse_rejected(line(ts="09/May/2018:16:00:38 +0000"), p).reason == ("timestamp too old")
    assert parse_rejected(line(ts="09/May/2018:16:00:39 -0001"), p).reason == (
        "timestamp in the future"
    )


def test_only_one_bound() -> None:
    p = Parser(7, min_ts=TS_UTC)
    assert parse_row(line(ts="09/May/9999:16:00:39 +0000"), p)
    p.set_bounds(None, TS_UTC)
    assert parse_row(line(ts="09/May/0002:16:00:39 +0000"), p)
    assert parse_rejected(line(ts="09/May/2018:16:00:40 +0000"), p).reason == (
        "timestamp in the future"
    )


def test_set_bounds_applies_to_cached_timestamps() -> None:
    p = Parser(7)
    lines = [line()] * 3
    rows, rejected = p.parse_many(lines)
    assert len(rows) == 3
    assert not rejected
    p.set_bounds(TS_UTC + timedelta(seconds=1), None)
    rows, rejected = p.parse_many(lines)
    assert not rows
    assert [r.reason for r in rejected] == ["timestamp too old"] * 3
    p.set_bounds(None, TS_UTC - timedelta(seconds=1))
    assert [r.reason for r in p.parse_many(lines)[1]] == ["timestamp in the future"] * 3
    p.set_bounds(None, None)
    assert len(p.parse_many(lines)[0]) == 3


def test_naive_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Parser(7, min_ts=datetime(2018, 1, 1))
    p = Parser(7)
    with pytest.raises(ValueError, match="timezone-aware"):
        p.set_bounds(None, datetime(2018, 1, 1))


def test_bad_date_wins_over_bounds() -> None:
    p = Parser(7, min_ts=TS_UTC)
    assert parse_rejected(line(ts="31/Feb/2000:00:00:00 +0000"), p).reason == "bad date"


# --- parse_many ----------------------------------------------------------------------------


def mixed_lines(count: int) -> list[bytes]:
    """Return ``count`` lines cycling through accepted and rejected shapes."""
    shapes = [
        line(),
        line(tail=' "r" "ua"'),
        line(request=r"GET /a\"b HTTP/1.1"),
        line() + b"\r",
        line(request="GET /\x01 HTTP/1.1"),
        line().replace(b"/report", b"/\xff"),
        line(status="abc"),
        line(request="-"),
        b"garbage",
        line(ts="31/Feb/2018:00:00:00 +0000"),
        line(request="GET http://h/x/y HTTP/1.1"),
    ]
    return [shapes[i % len(shapes)].replace(b" 123", b" %d" % i) for i in range(count)]


def test_parse_many_matches_parse_in_order() -> None:
    # 700 lines span several internal chunks, some clean and some not.
    lines = mixed_lines(700)
    rows, rejected = Parser(7).parse_many(lines)
    single = [Parser(7).parse(raw) for raw in lines]
    assert rows == [r for r in single if not isinstance(r, Rejected)]
    assert rejected == [r for r in single if isinstance(r, Rejected)]
    assert rows
    assert rejected


def test_parse_many_chunks_with_one_dirty_line() -> None:
    lines = [line(size=str(i)) for i in range(400)]
    lines[130] = line(request="GET /\x7f HTTP/1.1")
    lines[131] = line(size="131", tail=r' "\"" "ua"')
    rows, rejected = Parser(7).parse_many(lines)
    assert [field(r, "bytes") for r in rows] == [i for i in range(400) if i != 130]
    assert field(rows[130], "referer") == '"'
    assert [r.reason for r in rejected] == ["control bytes"]


def test_parse_many_accepts_any_iterable() -> None:
    def gen() -> Iterator[bytes]:
        yield line()
        yield b"bad"

    rows, rejected = Parser(3).parse_many(gen())
    assert [field(r, "stream_id") for r in rows] == [3]
    assert [r.reason for r in rejected] == ["malformed"]
    assert Parser(3).parse_many(()) == ([], [])
    assert Parser(3).parse_many((line(),))[0] == rows


def test_many_distinct_timestamps() -> None:
    # More distinct timestamps than the cache holds: results stay right as it is cleared.
    base = datetime(2020, 1, 1, tzinfo=UTC)
    times = [base + timedelta(seconds=i) for i in range(10_000)]
    lines = [line(ts=t.strftime("%d/%b/%Y:%H:%M:%S +0000")) for t in times]
    p = Parser(7)
    rows, rejected = p.parse_many(lines)
    assert not rejected
    assert [r[0] for r in rows] == times
    assert len(p._ts_ok) <= 4096
    assert len(p._ts_any) <= 4096


def test_stream_id_property() -> None:
    assert Parser(42).stream_id == 42


# --- sections ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "section"),
    [
        ("/pages/create", "/pages"),
        ("/pages/create/", "/pages"),
        ("/pages/", "/pages"),
        ("/report", "/report"),
        ("/", "/"),
        ("//x", "/"),
        ("/a/b?x=1", "/a"),
        ("/a?x", "/a"),
        ("/a?x/y", "/a"),
        ("/?x=1", "/"),
        ("/a#frag/x", "/a"),
        ("/Été/x", "/Été"),
        ("/a%2Fb/c", "/a%2Fb"),
        ("*", "/"),
        ("h.example:443", "/"),
        ("", "/"),
        ("pages/x", "/"),
    ],
)
def test_section_of(path: str, section: str) -> None:
    assert section_of(path) == section


def test_nul_padding_left_by_a_crash_does_not_cost_the_next_line() -> None:
    padded = b"\x00" * 4096 + line()
    assert Parser(7).parse(padded) == Parser(7).parse(line())
    assert Parser(7).parse_many([padded]) == Parser(7).parse_many([line()])
    # Only leading padding: a NUL inside a line, or NULs alone, are still rejected.
    assert parse_rejected(line(request="GET /\x00 HTTP/1.1")).reason == "control bytes"
    assert parse_rejected(b"\x00" * 16).reason == "control bytes"
