"""Bad input against the real daemon and database: fuzzed files, hostile text, clock trouble.

* Fuzzed files (invalid UTF-8, NULs, 1 MB lines, CRLF, no final newline, a line torn between
  two ``--once`` runs): each complete valid line is stored exactly once, every other complete
  line is one rejected line.
* Hostile text (quotes, backslashes, SQL, JSON fragments, escape sequences written as text,
  C1 controls and bidi overrides as UTF-8) is stored verbatim, published as valid JSON on
  ``puppylog_stats`` and shown inert by the watch (``--plain`` and the rich view); raw ESC/BEL
  bytes are rejected as "control bytes".
* Clock trouble: lines far in the future or beyond the retention are rejected with a reason;
  neither they nor lines a little ahead move a stream's watermark past the wall clock, and no
  partition is created for them.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from puppylog_watch.models import StatsPayload, parse_payload
from puppylog_watch.render import WatchView
from puppylog_watch.state import WatchState
from tests.integration.helpers import (
    append,
    clf_line,
    clf_time,
    counts,
    daemon_env,
    query_rows,
    query_val,
    recent,
    reject_reasons,
    run_once,
    start_daemon,
    wait_for,
)
from tests.unit.test_fuzz import build, items

# Anything a terminal could act on: C0 (but newline), DEL, C1, bidi and format overrides.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
SGR = re.compile("\x1b\\[[0-9;]*m")


# -- fuzzed files through the real daemon -------------------------------------------------


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    spec=items,
    tail=st.binary(min_size=1, max_size=30).map(lambda b: b.replace(b"\n", b"")),
    cut=st.integers(min_value=0),
)
def test_fuzzed_file_stores_each_valid_line_once(
    db_dsn: str, tmp_path_factory: Any, spec: list[tuple[str, object, bool]], tail: bytes, cut: int
) -> None:
    content, want_ids, bad, _ = build(spec, tail)
    log = Path(tmp_path_factory.mktemp("fuzz")) / "access.log"
    split = cut % (len(content) + 1)  # first run sees a prefix, torn anywhere
    append(log, content[:split])
    run_once(db_dsn, log, retention_days=0)
    append(log, content[split:])
    run_once(db_dsn, log, retention_days=0)
    run_once(db_dsn, log, retention_days=0)  # nothing new: nothing more
    stream = query_val(db_dsn, "SELECT id FROM puppylog.log_streams WHERE path = $1", str(log))
    paths = [
        r["path"]
        for r in query_rows(
            db_dsn, "SELECT path FROM puppylog.log_records WHERE stream_id = $1", stream
        )
    ]
    assert sorted(int(p.rsplit("-", 1)[1]) for p in paths) == want_ids
    rejected = query_val(
        db_dsn, "SELECT count(*) FROM puppylog.rejected_lines WHERE stream_id = $1", stream
    )
    assert rejected == bad
    offset = query_val(db_dsn, "SELECT byte_offset FROM puppylog.log_streams WHERE id = $1", stream)
    assert offset == content.rfind(b"\n") + 1  # the unterminated tail is still pending


# -- hostile text --------------------------------------------------------------------------

# (request target as the server writes it inside quotes, stored path = section, hits)
HOSTILE_TARGETS: list[tuple[str, str, int]] = [
    ("/it's", "/it's", 1),
    ("/back\\\\slash", "/back\\slash", 1),
    (
        "/x'; DROP TABLE puppylog.log_records; --",
        "/x'; DROP TABLE puppylog.log_records; --",
        2,
    ),
    ('/\\"}],\\"type\\":\\"alert', '/"}],"type":"alert', 3),
    ("/\\x1b]0;pwned\\x07", "/\\x1b]0;pwned\\x07", 1),  # nginx's escaping of raw bytes
    ("/%1b%5b2J", "/%1b%5b2J", 1),
    ("/\u009b2J", "/\u009b2J", 5),  # a C1 CSI as valid UTF-8: the parser accepts it
    ("/\u202eevil", "/\u202eevil", 4),  # right-to-left override
]
HOSTILE_USERS = ["o'brien", "evil\u009b[2J"]
HOSTILE_AGENT = (
    '\'; DROP TABLE puppylog.log_records; -- \\"}],\\"type\\":\\"alert',
    ('\'; DROP TABLE puppylog.log_records; -- "}],"type":"alert'),
)
HOSTILE_REFERER = "\\x1b[2J\\x1b]0;pwned\\x07"


def hostile_lines(ts: datetime) -> tuple[bytes, list[tuple[str, str | None, str, str]]]:
    """Return the log text and the (path, user, referer, agent) each record must have."""
    lines: list[str] = []
    want: list[tuple[str, str | None, str, str]] = []
    n = 0
    for target, path, hits in HOSTILE_TARGETS:
        for _ in range(hits):
            user = HOSTILE_USERS[n % 2]
            lines.append(
                f'10.0.0.1 - {user} [{clf_time(ts)}] "GET {target} HTTP/1.1" 200 {n} '
                f'"{HOSTILE_REFERER}" "{HOSTILE_AGENT[0]}"\n'
            )
            want.append((path, user, HOSTILE_REFERER, HOSTILE_AGENT[1]))
            n += 1
    return "".join(lines).encode(), want


# Raw escape sequences in a line: rejected, kept raw in rejected_lines.
RAW_ESCAPES: list[tuple[bytes, str]] = [
    (b'10.0.0.1 - - [%s] "GET /\x1b]0;pwned\x07 HTTP/1.1" 200 1', "control bytes"),
    (b'10.0.0.1 - - [%s] "GET / HTTP/1.1" 200 1 "-" "\x1b[2J\x1b[H"', "control bytes"),
    (b'10.0.0.1 - - [%s] "GET /\x9b2J HTTP/1.1" 200 1', "invalid utf-8"),  # 8-bit CSI
]


def bucket_of(ts: datetime) -> datetime:
    return ts.replace(second=ts.second - ts.second % 10, microsecond=0)


async def test_hostile_text_is_stored_verbatim_published_as_json_and_shown_inert(
    db_dsn: str, tmp_path: Path
) -> None:
    ts = recent(100)
    text, want = hostile_lines(ts)
    raw_bad = [line % clf_time(ts).encode() for line, _ in RAW_ESCAPES]
    log = tmp_path / "access.log"
    # A line in the next bucket's first second closes the hostile lines' bucket (and only
    # it: the watch --plain starts with the newest closed bucket).
    append(
        log,
        text
        + b"".join(r + b"\n" for r in raw_bad)
        + clf_line(0, bucket_of(ts) + timedelta(seconds=10)),
    )

    payloads: list[str] = []
    listener = await asyncpg.connect(db_dsn)
    try:
        await listener.add_listener("puppylog_stats", lambda *a: payloads.append(str(a[3])))
        await asyncio.to_thread(run_once, db_dsn, log)
        deadline = time.monotonic() + 10
        bucket = bucket_of(ts)
        while time.monotonic() < deadline and not any(
            json.loads(p)["bucket"] == bucket.isoformat() for p in payloads
        ):
            await asyncio.sleep(0.05)
    finally:
        await listener.close()

    db = await asyncpg.connect(db_dsn)
    try:
        # Stored verbatim, every field; the table is still there.
        rows = await db.fetch(
            "SELECT path, section, auth_user, referer, user_agent FROM puppylog.log_records "
            "WHERE path <> '/pages/id-0' ORDER BY bytes"
        )
        assert [(r["path"], r["auth_user"], r["referer"], r["user_agent"]) for r in rows] == want
        assert all(r["section"] == r["path"] for r in rows)
        rejected = await db.fetch("SELECT reason, line FROM puppylog.rejected_lines ORDER BY id")
        assert [(r["reason"], bytes(r["line"])) for r in rejected] == [
            (reason, raw) for raw, (_, reason) in zip(raw_bad, RAW_ESCAPES, strict=True)
        ]
        stored_payload = await db.fetchval(
            "SELECT payload::text FROM puppylog.stats_buckets WHERE bucket = $1", bucket
        )
    finally:
        await db.close()

    # The notification is valid JSON, the same as the table's, with the sections intact.
    notified = [json.loads(p) for p in payloads if json.loads(p)["bucket"] == bucket.isoformat()]
    assert len(notified) == 1, payloads
    payload = notified[0]
    assert payload == json.loads(stored_payload)
    assert payload["type"] == "stats" and payload["hits"] == len(want)
    assert sorted(map(tuple, payload["sections"])) == sorted(
        (path, hits) for _, path, hits in HOSTILE_TARGETS
    )
    assert sorted(map(tuple, payload["users"])) == sorted(
        (u, sum(1 for w in want if w[1] == u)) for u in HOSTILE_USERS
    )
    assert payload["rejected"] == len(RAW_ESCAPES)

    # The rich view: only colour codes reach the terminal, the hostile text is inert.
    model, _ = parse_payload(payload)
    assert isinstance(model, StatsPayload)
    state = WatchState(group="default", connected=True, status="live")
    state.apply_stats(model)
    out = io.StringIO()
    console = Console(file=out, width=120, height=40, force_terminal=True, color_system="truecolor")
    console.print(WatchView(state, now=ts + timedelta(seconds=30)))
    screen = SGR.sub("", out.getvalue())
    assert RAW_CONTROL.search(screen) is None, repr(RAW_CONTROL.findall(screen))
    assert "/\ufffd2J" in screen and "/\ufffdevil" in screen
    assert '/"}],"type":"alert' in screen

    # --plain, as a separate process reading the tables.
    lines = await asyncio.to_thread(plain_watch_lines, db_dsn, bucket.isoformat())
    ours = [line for line in lines if line.startswith(bucket.isoformat())]
    assert len(ours) == 1, lines
    assert 'top=/\ufffd2J:5,/\ufffdevil:4,/"}],"type":"alert:3' in ours[0]
    for line in lines:
        assert RAW_CONTROL.search(line) is None, repr(line)


def plain_watch_lines(dsn: str, wanted: str, timeout: float = 20.0) -> list[str]:
    """Run ``puppylog-watch --plain`` until it prints a line starting with ``wanted``."""
    env = daemon_env({"PYTHONIOENCODING": "utf-8"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "puppylog_watch", "--plain", "--dsn", dsn],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        buf = b""
        while time.monotonic() < deadline:
            chunk = proc.stdout.read()
            if chunk:
                buf += chunk
                *done, buf = buf.split(b"\n")
                lines += [d.decode("utf-8") for d in done]
                if any(line.startswith(wanted) for line in lines):
                    return lines
            elif proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"watch did not print {wanted}: {lines}")
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


# -- clock trouble --------------------------------------------------------------------------


def partition_days(dsn: str) -> set[str]:
    rows = query_rows(
        dsn,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'puppylog.log_records'::regclass",
    )
    return {str(r["relname"]).removeprefix("log_records_p") for r in rows}


def clock_lines(now: datetime) -> tuple[bytes, dict[str, int]]:
    """Lines with troubled clocks: two stored, the rest rejected with the reasons returned."""
    data = (
        clf_line(1, now - timedelta(seconds=5))
        + clf_line(2, now + timedelta(minutes=4))  # a little ahead: stored, clamped
        + clf_line(3, now + timedelta(hours=23))
        + clf_line(4, now + timedelta(days=400))
        + clf_line(5, now - timedelta(days=30))
        + b'10.0.0.1 - - [01/Jan/0001:00:00:00 +0100] "GET /y1 HTTP/1.1" 200 1\n'
        + b'10.0.0.1 - - [31/Dec/9999:23:59:59 -0100] "GET /y9999 HTTP/1.1" 200 1\n'
    )
    return data, {"timestamp in the future": 2, "timestamp too old": 1, "bad date": 2}


def assert_clock_contained(dsn: str, now: datetime) -> None:
    (row,) = query_rows(
        dsn,
        "SELECT s.watermark, s.max_ts, g.closed_through, now() AS db_now "
        "FROM puppylog.log_streams s JOIN puppylog.log_groups g ON g.id = s.group_id",
    )
    assert row["max_ts"] > row["db_now"]  # the +4 min line is stored...
    assert row["watermark"] <= row["db_now"]  # ...but time does not run ahead with it
    assert row["closed_through"] is None or row["closed_through"] <= row["db_now"]
    days = partition_days(dsn)
    for far in (now - timedelta(days=30), now + timedelta(days=400)):
        assert far.strftime("%Y%m%d") not in days


def test_live_future_lines_cannot_push_the_watermark_past_now(db_dsn: str, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    data, reasons = clock_lines(now)
    log = tmp_path / "access.log"
    append(log, data)
    with start_daemon(db_dsn, log, lateness_seconds=1, poll_interval=0.05) as daemon:
        wait_for(
            lambda: counts(db_dsn).rows == 2 and counts(db_dsn).rejected_lines == 5,
            20,
            message=lambda: f"{counts(db_dsn)}\n{daemon.output()[-3000:]}",
        )
        time.sleep(1.5)  # a heartbeat or two
        assert_clock_contained(db_dsn, now)
        assert daemon.stop() == 0
    assert reject_reasons(db_dsn) == reasons


def test_once_future_lines_cannot_push_the_watermark_past_now(db_dsn: str, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    data, reasons = clock_lines(now)
    log = tmp_path / "access.log"
    append(log, data)
    run_once(db_dsn, log)
    c = counts(db_dsn)
    assert (c.rows, c.rejected_lines, c.lines_stored, c.lines_rejected) == (2, 5, 2, 5)
    assert reject_reasons(db_dsn) == reasons
    assert_clock_contained(db_dsn, now)
