"""Parse Common and Combined Log Format lines into rows for binary COPY.

Input is one line as bytes without its trailing ``\\n``; one trailing ``\\r`` is stripped.
Accepted shapes (fields separated by single spaces)::

    host ident authuser [dd/Mon/yyyy:HH:MM:SS +zzzz] "request" status size
    host ident authuser [dd/Mon/yyyy:HH:MM:SS +zzzz] "request" status size "referer" "agent"

Decisions:

* Lines are decoded as strict UTF-8; a line that is not valid UTF-8 is rejected
  (``"invalid utf-8"``) rather than decoded with replacement characters, so nothing stored
  differs from what the server wrote.  Any byte below 0x20 other than tab, or 0x7f, rejects
  the line (``"control bytes"``); tab is an ordinary character, not a separator.
* ``host``, ``ident`` and ``authuser`` are any tokens without a space, so IPv4, IPv6 and
  host names are all accepted unvalidated.  ``-`` ident/user/referer/agent and a ``-`` size
  become ``None``.
* The timestamp may carry any offset below 24 h; it is converted to UTC.  Month names are
  the English abbreviations, matched case-insensitively.
* The status must be three ASCII digits in 100..999 (nginx's 444/499 and other private
  codes are kept).  The size must be ``-`` or at most 18 ASCII digits (fits ``bigint``).
* The request is ``METHOD target [HTTP/x[.y]]``.  Without a protocol (an HTTP/0.9-style
  request line) the protocol is ``""``.  The target may contain spaces when a protocol
  ends the request.  An absolute-URI target (``http://h/p?q``) is reduced to its path and
  query (``/p?q``); other targets not starting with ``/`` (``*``, ``host:443``) are kept
  as the path and get section ``/``.
* Inside quoted fields ``\\"`` and ``\\\\`` are unescaped; other escapes written by the
  server (``\\xhh``, ``\\t``) are kept verbatim because they may stand for bytes that are
  not text.
* Anything after a complete Combined line (e.g. nginx's ``"$http_x_forwarded_for"``) is
  ignored.

``Parser.parse`` never raises on any input bytes: every line gives a ``RecordRow`` or a
``Rejected`` whose ``reason`` is one of ``REASONS``.  ``Parser.parse_many`` is the hot path:
it handles the common line shape inline with one compiled regex and a per-timestamp cache,
and falls back to ``parse`` for everything else, so both always give the same result.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = [
    "COLUMNS",
    "REASONS",
    "REJECT_KEEP_BYTES",
    "Parser",
    "RecordRow",
    "Rejected",
    "section_of",
]

COLUMNS: tuple[str, ...] = (
    "ts",
    "stream_id",
    "remote_host",
    "ident",
    "auth_user",
    "method",
    "path",
    "section",
    "protocol",
    "status",
    "bytes",
    "referer",
    "user_agent",
)

RecordRow = tuple[
    datetime,
    int,
    str,
    str | None,
    str | None,
    str,
    str,
    str,
    str,
    int,
    int | None,
    str | None,
    str | None,
]

REASONS: tuple[str, ...] = (
    "line too long",  # produced by the tailer, listed here so all codes live in one place
    "control bytes",
    "invalid utf-8",
    "malformed",
    "empty request",
    "bad date",
    "bad status",
    "timestamp too old",
    "timestamp in the future",
)

REJECT_KEEP_BYTES = 1024

# Bounds the timestamp caches; a log has one distinct timestamp per second, so this is
# over an hour of traffic and clearing it costs a few re-parses.
_TS_CACHE_MAX = 4096


@dataclass(frozen=True, slots=True)
class Rejected:
    """Describe a line that could not be turned into a record."""

    reason: str
    detail: str
    line: bytes


def _reject(reason: str, detail: str, line: bytes) -> Rejected:
    """Build a ``Rejected`` keeping at most ``REJECT_KEEP_BYTES`` of the raw line."""
    return Rejected(reason, detail, line[:REJECT_KEEP_BYTES])


_SECTION = re.compile(r"/[^/?#]*")


def section_of(path: str) -> str:
    """Return the section of a request path: ``/`` plus its first segment.

    The query string and fragment are ignored: ``"/pages/create"`` -> ``"/pages"``,
    ``"/report"`` -> ``"/report"``, ``"/a/b?x=1"`` -> ``"/a"``, ``"/a?x"`` -> ``"/a"``,
    ``"/"`` and ``"//x"`` -> ``"/"``.  A path not starting with ``/`` (``"*"``,
    ``"host:443"``, garbage) -> ``"/"``.  No percent-decoding or case folding is done.
    """
    m = _SECTION.match(path)
    return m.group() if m is not None else "/"


# Character classes.  _TOK: a space-separated field (no space, no control bytes; tab is an
# ordinary character).  _QCH: an unescaped character inside a quoted field.
_CTRL = r"\x00-\x08\x0a-\x1f\x7f"
_TOK = r"[^\x00-\x08\x0a-\x20\x7f]"
_QCH = rf'[^"\\{_CTRL}]'
_PROTO = r"HTTP/[0-9]+(?:\.[0-9]+)?"

# The hot path: the usual line shape only (no backslash escapes, origin-form target,
# protocol present, valid status).  Anything else falls back to Parser.parse, so these
# regexes may be stricter than the format but must never accept a line that parse would
# read differently.  "-" fields are matched outside the groups so they come out as None.
# Quantifiers are possessive (``++``, ``*+``): each class is followed by a character it
# excludes (or by a class that takes whatever it could give back), so backtracking into it
# could never turn a failure into a match; not keeping its backtrack points makes the match
# 12-16 % faster.
_FAST = re.compile(
    rf"({_TOK}++) (?:-|({_TOK}++)) (?:-|({_TOK}++)) \[([^\]{_CTRL}]*+)\] "
    rf'"([A-Z]++) ((/[^/?# "\\{_CTRL}]*+)[^ "\\{_CTRL}]*+) ({_PROTO})" '
    r"([1-9][0-9][0-9]) (?:-|([0-9]{1,18}+))"
    rf'(?:\r?\Z| "(?:-|({_QCH}*+))" "(?:-|({_QCH}*+))"(?:\r?\Z| [^{_CTRL}]*+\r?\Z))'
)
# The same for a batch known to hold no control byte, "\r" or backslash: single-character
# negated classes run much faster in the regex engine than the sets above.
_FAST_CLEAN = re.compile(
    r"([^ ]++) (?:-|([^ ]++)) (?:-|([^ ]++)) \[([^\]]*+)\] "
    rf'"([A-Z]++) ((/[^/?# "]*+)[^ "]*+) ({_PROTO})" '
    r"([1-9][0-9][0-9]) (?:-|([0-9]{1,18}+))"
    # (?:\Z|...) rather than (?:...)?\Z: a branch is cheaper than an optional group.
    r'(?:\Z| "(?:-|([^"]*+))" "(?:-|([^"]*+))"(?:\Z| .*))',
    re.DOTALL,
)
# Deleting these from a batch changes its length iff it needs _FAST rather than
# _FAST_CLEAN: one C pass over the joined batch instead of a per-character set test.
_NOT_CLEAN = bytes([*range(0x09), *range(0x0A, 0x20), 0x5C, 0x7F])
# Lines checked per join: large enough to amortise the call, small enough that the joined
# copy stays in the allocator's heap (a fresh mmap per batch costs more than the check).
_CHUNK = 128

# The general shape, applied after control bytes were rejected and the \r stripped; the
# date, status and request are captured loosely so they can be rejected with a reason.
_QUOTED = r'[^"\\]*(?:\\.[^"\\]*)*'
_GENERAL = re.compile(
    r"([^ ]+) ([^ ]+) ([^ ]+) \[([^\]]*)\] "
    rf'"({_QUOTED})" ([^ ]+) ([0-9]{{1,18}}|-)'
    rf'(?:\Z| "({_QUOTED})" "({_QUOTED})"(?:\Z| .*))',
    re.DOTALL,
)

_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_UNESCAPE = re.compile(r"\\([\"\\])")
_REQUEST = re.compile(rf"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([^ ].*?)(?: ({_PROTO}))?\Z", re.DOTALL)
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
_TIMESTAMP = re.compile(
    r"([0-9]{2})/([A-Za-z]{3})/([0-9]{4}):([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r" ([+-])([0-9]{2})([0-9]{2})\Z"
)
_MONTHS = {
    name: i
    for i, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
# A dict lookup both validates and converts, faster than checks plus int().
_STATUSES = {str(code): code for code in range(100, 1000)}


def _unescape(value: str) -> str:
    """Undo the ``\\"`` and ``\\\\`` escapes servers write inside quoted fields."""
    return _UNESCAPE.sub(r"\1", value) if "\\" in value else value


def _parse_timestamp(text: str) -> datetime | str:
    """Convert ``dd/Mon/yyyy:HH:MM:SS +zzzz`` to an aware UTC datetime, or return why not."""
    m = _TIMESTAMP.match(text)
    if m is None:
        return f"unparsable timestamp {text[:40]!r}"
    day, mon, year, hour, minute, second, sign, off_h, off_m = m.groups()
    month = _MONTHS.get(mon.lower())
    if month is None:
        return f"bad month {mon!r}"
    if int(off_h) > 23 or int(off_m) > 59:
        return f"bad offset {sign}{off_h}{off_m}"
    offset = timedelta(hours=int(off_h), minutes=int(off_m))
    try:
        local = datetime(
            int(year), month, int(day), int(hour), int(minute), int(second), tzinfo=UTC
        )
        # The wall time minus its offset is UTC; may overflow at years 1 and 9999.
        return local - offset if sign == "+" else local + offset
    except (ValueError, OverflowError) as exc:
        return f"{text[:40]!r}: {exc}"


class Parser:
    """Parse the lines of one stream into ``RecordRow`` tuples or ``Rejected`` lines."""

    __slots__ = ("_max_ts", "_min_ts", "_stream_id", "_ts_any", "_ts_ok")

    def __init__(
        self,
        stream_id: int,
        *,
        min_ts: datetime | None = None,
        max_ts: datetime | None = None,
    ) -> None:
        """Create a parser tagging rows with ``stream_id`` and accepting ``min_ts..max_ts``."""
        self._stream_id = stream_id
        # Timestamp text -> datetime or rejection detail, independent of the bounds.
        self._ts_any: dict[str, datetime | str] = {}
        # Timestamp text -> datetime, only for timestamps within the current bounds: the
        # hot path trusts every hit here without further checks.
        self._ts_ok: dict[str, datetime] = {}
        self._min_ts: datetime | None = None
        self._max_ts: datetime | None = None
        self.set_bounds(min_ts, max_ts)

    @property
    def stream_id(self) -> int:
        """Return the stream id put into every row."""
        return self._stream_id

    def set_bounds(self, min_ts: datetime | None, max_ts: datetime | None) -> None:
        """Set the accepted timestamp range (inclusive; ``None`` means unbounded).

        Records before ``min_ts`` are rejected as ``"timestamp too old"``, after ``max_ts``
        as ``"timestamp in the future"``.  Raises ``ValueError`` for naive datetimes.
        """
        for bound in (min_ts, max_ts):
            if bound is not None and bound.utcoffset() is None:
                raise ValueError("timestamp bounds must be timezone-aware")
        if min_ts == self._min_ts and max_ts == self._max_ts:
            return
        self._min_ts = min_ts
        self._max_ts = max_ts
        self._ts_ok.clear()

    def parse(self, line: bytes) -> RecordRow | Rejected:
        """Parse one line; never raises on any input bytes."""
        raw = line
        if line.startswith(b"\0"):
            # A crash can leave a run of NUL bytes (blocks allocated, never written) in
            # front of the next line the writer appends: padding, not part of that line.
            line = line.lstrip(b"\0") or line
        if line.endswith(b"\r"):
            line = line[:-1]
        bad = _CONTROL_BYTES.search(line)
        if bad is not None:
            return _reject(
                "control bytes", f"byte 0x{ord(bad.group()):02x} at offset {bad.start()}", raw
            )
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _reject("invalid utf-8", f"at offset {exc.start}", raw)
        m = _GENERAL.match(text)
        if m is None:
            return _reject("malformed", "not Common or Combined Log Format", raw)
        host, ident, user, ts_text, request, status_text, size, referer, agent = m.groups()

        ts_any = self._ts_any.get(ts_text)
        if ts_any is None:
            ts_any = _parse_timestamp(ts_text)
            if len(self._ts_any) >= _TS_CACHE_MAX:
                self._ts_any.clear()
            self._ts_any[ts_text] = ts_any
        if isinstance(ts_any, str):
            return _reject("bad date", ts_any, raw)
        ts = ts_any

        status = _STATUSES.get(status_text)
        if status is None:
            return _reject("bad status", f"status {status_text[:20]!r}", raw)

        request = _unescape(request)
        if request in ("", "-"):
            return _reject("empty request", f"request {request!r}", raw)
        rm = _REQUEST.match(request)
        if rm is None:
            return _reject("malformed", f"bad request line {request[:60]!r}", raw)
        method, path, protocol = rm.groups()
        if not path.startswith("/"):
            am = _ABSOLUTE_URI.match(path)
            if am is not None:
                path = path[am.end() :]
                if not path.startswith("/"):
                    path = "/" + path

        if self._min_ts is not None and ts < self._min_ts:
            return _reject(
                "timestamp too old",
                f"{ts.isoformat()} is before the retention cut-off {self._min_ts.isoformat()}",
                raw,
            )
        if self._max_ts is not None and ts > self._max_ts:
            return _reject("timestamp in the future", f"{ts.isoformat()} > {self._max_ts}", raw)
        if len(self._ts_ok) >= _TS_CACHE_MAX:
            self._ts_ok.clear()
        self._ts_ok[ts_text] = ts

        return (
            ts,
            self._stream_id,
            host,
            None if ident == "-" else ident,
            None if user == "-" else user,
            method,
            path,
            section_of(path),
            protocol or "",
            status,
            None if size == "-" else int(size),
            None if referer is None or referer == "-" else _unescape(referer),
            None if agent is None or agent == "-" else _unescape(agent),
        )

    def parse_many(self, lines: Iterable[bytes]) -> tuple[list[RecordRow], list[Rejected]]:
        """Parse lines into (rows, rejected), each list keeping input order.

        Gives exactly what ``parse`` gives line by line, only faster.
        """
        rows: list[RecordRow] = []
        rejected: list[Rejected] = []
        if not isinstance(lines, list | tuple):
            lines = list(lines)
        # Locals: attribute and global lookups dominate a loop this tight.
        add_row = rows.append
        add_rejected = rejected.append
        join = b"".join
        not_clean = _NOT_CLEAN
        match_clean = _FAST_CLEAN.match
        match_strict = _FAST.match
        ts_ok = self._ts_ok.get
        statuses = _STATUSES
        stream_id = self._stream_id
        parse = self.parse
        for start in range(0, len(lines), _CHUNK):
            chunk = lines[start : start + _CHUNK]
            blob = join(chunk)
            match = (
                match_clean if len(blob.translate(None, not_clean)) == len(blob) else match_strict
            )
            for line in chunk:
                try:
                    m = match(line.decode("utf-8"))
                except UnicodeDecodeError:
                    m = None
                if m is not None:
                    (
                        host,
                        ident,
                        user,
                        ts_text,
                        method,
                        path,
                        section,
                        protocol,
                        status,
                        size,
                        ref,
                        ua,
                    ) = m.groups()
                    ts = ts_ok(ts_text)
                    if ts is not None:
                        add_row(
                            (
                                ts,
                                stream_id,
                                host,
                                ident,
                                user,
                                method,
                                path,
                                section,
                                protocol,
                                statuses[status],
                                None if size is None else int(size),
                                ref,
                                ua,
                            )
                        )
                        continue
                # Uncommon shape or first sight of this timestamp: the full parser decides.
                result = parse(line)
                if isinstance(result, Rejected):
                    add_rejected(result)
                else:
                    add_row(result)
        return rows, rejected
