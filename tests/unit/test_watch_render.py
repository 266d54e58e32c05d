"""Rendering of puppylog-watch from recorded payloads: plain and JSON lines, the live view."""

from __future__ import annotations

import io
import json
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console

from puppylog_watch.app import LineSink
from puppylog_watch.models import (
    AlertPayload,
    PayloadError,
    RecoveryPayload,
    StatsPayload,
    parse_payload,
)
from puppylog_watch.render import (
    CLOCK_WARN_S,
    WatchView,
    chart,
    json_line,
    plain_alert,
    plain_stats,
    safe,
)
from puppylog_watch.state import StreamInfo, WatchState
from puppylogd.daemon import CLOCK_SKEW_WARN

# Recorded from a real database (jsonb text, as pg_notify sends it).
STATS = (
    '{"v": 1, "avg": 12.008, "bytes": 45678, "hits": 123, "type": "stats", "alert": "firing", '
    '"group": "default", "users": [["james", 5]], "bucket": "2026-11-28T04:30:00+00:00", '
    '"status": {"2xx": 100, "3xx": 3, "4xx": 15, "5xx": 5, "other": 0}, "methods": [["GET", '
    '100], ["POST", 23]], "seconds": 10, "rps": 12.3, "rejected": 2, "sections": [["/pages", '
    '50], ["/api", 40], ["/static", 20], ["/report", 13]], "threshold": 10.0, "error_rate": '
    '0.1626, "unique_hosts": 12}'
)
ALERT = (
    '{"v": 1, "at": "2026-11-28T04:30:00+00:00", "avg": 12.008, "hits": 1441, "type": "alert", '
    '"group": "default", "message": "High traffic generated an alert - hits = 1441, triggered '
    'at 2026-11-28T04:30:00+00:00", "alert_id": 3, "window_s": 120, "threshold": 10.0}'
)
RECOVERY = (
    '{"v": 1, "at": "2026-11-28T04:33:10+00:00", "avg": 9.992, "hits": 1199, "type": '
    '"recovery", "group": "default", "message": "High traffic alert recovered - hits = 1199, '
    'recovered at 2026-11-28T04:33:10+00:00", "alert_id": 3, "window_s": 120, "threshold": '
    '10.0, "triggered_at": "2026-11-28T04:30:00+00:00"}'
)
T0 = datetime(2026, 11, 28, 4, 20, tzinfo=UTC)
DAY = timedelta(days=1)


def stats_at(i: int, rps: float, **over: Any) -> StatsPayload:
    raw = json.loads(STATS)
    raw.update(bucket=(T0 + timedelta(seconds=10 * i)).isoformat(), rps=rps)
    raw.update(over)
    model, _ = parse_payload(raw)
    assert isinstance(model, StatsPayload)
    return model


def alert_state() -> WatchState:
    state = WatchState(group="default", connected=True, status="live")
    for i in range(60):
        state.apply_stats(stats_at(i, 30.0 if 30 <= i < 40 else 4.0))
    alert, _ = parse_payload(ALERT)
    assert isinstance(alert, AlertPayload)
    state.apply_alert(alert)
    state.streams = [StreamInfo("web1", "/tmp/access.log", 0, T0, False, True)]
    return state


def render(state: WatchState, width: int, height: int) -> str:
    console = Console(width=width, height=height, record=True, force_terminal=True)
    console.print(WatchView(state, now=T0 + timedelta(minutes=10)))
    return console.export_text()


def test_payloads_parse_by_type() -> None:
    assert isinstance(parse_payload(STATS)[0], StatsPayload)
    assert isinstance(parse_payload(ALERT)[0], AlertPayload)
    assert isinstance(parse_payload(RECOVERY)[0], RecoveryPayload)


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        "[1, 2]",
        '{"v": 2, "type": "alert"}',
        '{"v": 1, "type": "mystery", "group": "default"}',
        ALERT.replace('"hits": 1441', '"hits": "many"'),
        STATS.replace('"alert": "firing"', '"alert": "maybe"'),
    ],
)
def test_unknown_or_malformed_payloads_are_rejected(bad: str) -> None:
    with pytest.raises(PayloadError):
        parse_payload(bad)


def test_plain_lines_are_exact() -> None:
    stats, _ = parse_payload(STATS)
    alert, _ = parse_payload(ALERT)
    recovery, _ = parse_payload(RECOVERY)
    assert isinstance(stats, StatsPayload)
    assert not isinstance(alert, StatsPayload) and not isinstance(recovery, StatsPayload)
    assert plain_stats(stats) == (
        "2026-11-28T04:30:00+00:00 stats group=default hits=123 rps=12.3 avg=12.01 "
        "threshold=10 alert=firing 2xx=100 3xx=3 4xx=15 5xx=5 err=16.3% bytes=45678 hosts=12 "
        "rejected=2 top=/pages:50,/api:40,/static:20"
    )
    assert plain_alert(alert) == (
        "High traffic generated an alert - hits = 1441, triggered at 2026-11-28T04:30:00+00:00"
    )
    assert plain_alert(recovery) == (
        "High traffic alert recovered - hits = 1199, recovered at 2026-11-28T04:33:10+00:00"
    )


def test_json_lines_are_the_payloads() -> None:
    out, err = io.StringIO(), io.StringIO()
    sink = LineSink(out, err, json_mode=True)
    for text in (STATS, ALERT, RECOVERY):
        model, raw = parse_payload(text)
        if isinstance(model, StatsPayload):
            sink.stats(model, raw)
        else:
            sink.alert(model, raw)
    lines = out.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == [json.loads(t) for t in (STATS, ALERT, RECOVERY)]
    assert lines[1] == (
        '{"v":1,"at":"2026-11-28T04:30:00+00:00","avg":12.008,"hits":1441,"type":"alert",'
        '"group":"default","message":"High traffic generated an alert - hits = 1441, triggered '
        'at 2026-11-28T04:30:00+00:00","alert_id":3,"window_s":120,"threshold":10.0}'
    )
    assert err.getvalue() == ""


def test_plain_sink_prints_stats_and_messages_verbatim() -> None:
    out, err = io.StringIO(), io.StringIO()
    sink = LineSink(out, err)
    alert, raw = parse_payload(ALERT)
    assert isinstance(alert, AlertPayload)
    sink.alert(alert, raw)
    assert out.getvalue() == alert.message + "\n"


def test_escape_sequences_never_reach_the_terminal() -> None:
    evil = "/x\x1b]0;pwned\x07\x1b[2J\u202e\x9b31m"
    assert "\x1b" not in safe(evil) and "\x07" not in safe(evil) and "\x9b" not in safe(evil)
    assert safe(evil).startswith("/x^[]0;pwned\ufffd^[[2J\ufffd\ufffd")
    stats = stats_at(0, 4.0, sections=[[evil, 10]], users=[["\x1b[31mmallory", 1]])
    assert "\x1b" not in plain_stats(stats)
    assert "\x1b" not in json_line({"path": evil}) and "\x9b" not in json_line({"path": evil})
    state = WatchState(group="de\x1bfault", connected=True)
    state.apply_stats(stats.model_copy(update={"group": "de\x1bfault"}))
    state.streams = [StreamInfo("h\x1b[1m", "/tmp/\x1b[2Jx.log", 5, T0, False, True)]
    console = Console(width=100, height=30, record=True, force_terminal=True)
    console.print(WatchView(state, now=T0))
    styled = console.export_text(styles=True)
    # Only rich's own SGR sequences (ESC [ digits ; m) appear; nothing from the data.
    leftover = re.sub(r"\x1b\[[0-9;]*m", "", styled)
    assert "\x1b" not in leftover and "\x9b" not in leftover
    assert "^[]0;pwned" in leftover and "/tmp/^[[2Jx.log" in leftover


@pytest.mark.parametrize(("width", "height"), [(80, 24), (100, 30), (160, 48)])
def test_live_view_shows_its_parts_during_an_alert(width: int, height: int) -> None:
    text = render(alert_state(), width, height)
    lines = text.splitlines()
    assert len(lines) == height and all(len(line) <= width for line in lines)
    assert "HIGH TRAFFIC ALERT" in text  # banner
    assert "High traffic generated an alert - hits = 1441" in text  # banner / messages
    assert "top sections" in text and "/pages" in text and "41%" in text  # 50 of 123
    assert "threshold 10" in text and "10.0┤" in text  # threshold drawn on the chart
    assert "█" in text and "╌" in text  # bars and the threshold line
    assert "2-min avg to 04:30:00 12.01 req/s  ABOVE threshold 10" in text  # the bucket's end
    assert "2xx 100" in text and "16.3%" in text and "12 hosts" in text
    assert "web1:/tmp/access.log" in text and "lag 0 B" in text
    assert "group default" in text and "newest bucket 04:29:50 UTC" in text


def test_an_80_column_screen_shows_every_status_class_and_the_whole_average_line() -> None:
    """A busy bucket's four status counts and the average line fit 80 columns uncut."""
    state = alert_state()
    status = {"2xx": 8412, "3xx": 903, "4xx": 511, "5xx": 74, "other": 0}  # 990 req/s
    state.apply_stats(stats_at(60, 990.0, status=status, hits=9900))
    text = render(state, 80, 24)
    assert "2xx 8412 3xx 903 4xx 511 5xx 74" in text
    assert "2-min avg to 04:30:10 12.01 req/s  ABOVE threshold 10   last bucket 990.0 req/s" in text


@pytest.mark.parametrize("top", [29.5, 990.0, 2913.3, 123_456.0, 12_345_678.0])
def test_chart_labels_keep_the_bars_in_line_whatever_the_values(top: float) -> None:
    """Every row of the chart starts its bars in the same column, also above 1,000 req/s."""
    rows = chart([1.0, top], 10.0, 40, 6).plain.splitlines()
    assert {row[5] for row in rows} <= {"┤", "│"}, rows
    assert all(len(row) == 40 for row in rows), rows


def test_live_view_without_alert_or_data() -> None:
    state = WatchState(group="default", connected=False, status="connection lost: boom")
    text = render(state, 80, 24)
    assert "HIGH TRAFFIC ALERT" not in text
    assert "connection lost: boom" in text
    assert "no data yet" in text and "no alerts yet" in text


def test_recovery_clears_the_banner_and_lists_newest_first() -> None:
    state = alert_state()
    recovery, _ = parse_payload(RECOVERY)
    assert isinstance(recovery, RecoveryPayload)
    assert state.apply_alert(recovery)
    assert not state.apply_alert(recovery)  # duplicates are dropped
    text = render(state, 100, 30)
    assert "HIGH TRAFFIC ALERT" not in text
    rec = text.index("High traffic alert recovered")
    assert rec < text.index("High traffic generated an alert")


def test_state_keeps_buckets_in_order() -> None:
    state = WatchState(group="default")
    assert state.apply_stats(stats_at(1, 4.0))
    assert not state.apply_stats(stats_at(0, 4.0))
    assert not state.apply_stats(stats_at(1, 5.0))  # re-published bucket replaces the summary
    assert state.latest is not None and state.latest.rps == 5.0
    assert not state.apply_stats(stats_at(2, 4.0, group="other"))


def test_chart_marks_the_threshold_row() -> None:
    text = chart([1.0, 5.0, 20.0], 10.0, width=20, height=4).plain.splitlines()
    assert len(text) == 4 and all(len(line) == 20 for line in text)
    thr = [line for line in text if line.startswith(" 10.0┤")]
    assert len(thr) == 1 and "╌" in thr[0]


def test_live_view_says_when_no_daemon_heartbeats() -> None:
    """A dead daemon is no "● live": the header and the stream line say the silence."""
    state = alert_state()  # one stream, heartbeat at T0; render() looks at T0 + 10 min
    text = render(state, 80, 24)
    assert "● live" not in text
    assert text.splitlines()[0].rstrip().endswith("● no heartbeat for 10m")  # whole at 80
    assert "heartbeat 10m ago" in text
    # Within the group's timeout it is live; the age is on the database's clock.
    state.clock_offset = timedelta(seconds=-590)
    text = render(state, 100, 30)
    assert "● live" in text and "no heartbeat" not in text
    assert "heartbeat 10s ago" in text


def test_plain_sink_says_once_that_no_daemon_heartbeats_and_when_one_is_back() -> None:
    out, err = io.StringIO(), io.StringIO()
    sink = LineSink(out, err)
    state = WatchState(group="default", connected=True, heartbeat_timeout_s=30)
    now = datetime.now(UTC)
    state.streams = [StreamInfo("web1", "/a.log", 0, now - timedelta(seconds=78), False, True)]
    sink.tick(state)
    sink.tick(state)
    assert err.getvalue().splitlines() == [
        "puppylog-watch: no daemon heartbeat for 78 s (group 'default', heartbeat timeout "
        "30 s): is puppylogd running?"
    ]
    state.streams = [StreamInfo("web1", "/a.log", 0, now, False, True)]
    sink.tick(state)
    sink.tick(state)
    assert err.getvalue().splitlines()[1:] == ["puppylog-watch: a daemon heartbeats again"]
    assert out.getvalue() == ""


def test_invisible_characters_are_shown_and_the_view_stays_aligned() -> None:
    """Zero-width and other format characters (Cf) cannot spoof a path or shift the columns."""
    family = "/\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one glyph on a terminal
    spoof = "/\u200badmin"
    assert safe(spoof) == "/\ufffdadmin" and safe(family) == "/👨\ufffd👩\ufffd👧"
    hidden = "/a\u00adb\u2060c\ufeffd\U000e0041\u2028e"  # soft hyphen, WJ, BOM, tag, LS
    assert safe(hidden) == "/a\ufffdb\ufffdc\ufffdd\ufffd\ufffde"
    assert safe("/café/日本") == "/café/日本"  # printable text stays as it is
    stats = stats_at(0, 4.0, sections=[[spoof, 50], [family, 40], ["/ok", 20]])
    assert "top=/\ufffdadmin:50," in plain_stats(stats)
    state = WatchState(group="default", connected=True)
    state.apply_stats(stats)
    state.streams = [StreamInfo("web\u200d1", "/tmp/a\u200b.log", 0, T0, False, True)]
    text = render(state, 100, 30)
    assert not any(unicodedata.category(ch) == "Cf" for ch in text)
    assert "/\ufffdadmin" in text and "web\ufffd1:/tmp/a\ufffd.log" in text
    # Every row of the panels keeps its borders where the others have them.
    from rich.cells import cell_len

    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert rows and {cell_len(line) for line in rows} == {100}
    right = {cell_len(line[: line.index("││") + 1]) for line in rows if "││" in line}
    assert len(right) == 1


def test_banner_average_has_two_decimals_and_alert_messages_wrap_at_80_columns() -> None:
    text = render(alert_state(), 80, 24)
    assert "avg 12.01 req/s > threshold 10" in text and "12.008" not in text
    state = alert_state()
    recovery, _ = parse_payload(RECOVERY)
    assert isinstance(recovery, RecoveryPayload)
    state.apply_alert(recovery)  # no banner: the messages are only in the alerts panel
    panel = render(state, 80, 24).split("alerts, newest first")[1]
    assert "recovered at" in panel and "2026-11-28T04:33:10+00:00" in panel  # not cut


@pytest.mark.parametrize(("width", "drawn", "span"), [(80, 73, "12 min"), (100, 90, "15 min")])
def test_chart_title_counts_the_buckets_the_chart_draws(width: int, drawn: int, span: str) -> None:
    """90 buckets (15 min): at 80 columns the labels leave room for 73 bars, about 12 min."""
    state = WatchState(group="default", connected=True, status="live")
    for i in range(90):
        state.apply_stats(stats_at(i, 4.0))
    lines = render(state, width, 24).splitlines()
    title = next(line for line in lines if "req/s per 10 s" in line)
    assert f"req/s per 10 s, last {span} " in title
    bottom = next(line for line in lines if line.startswith("  0.0┤"))
    assert sum(ch in "▁▂▃▄▅▆▇█" for ch in bottom) == drawn


def header(state: WatchState, width: int = 80) -> str:
    return render(state, width, 24).splitlines()[0].rstrip()


LONG_GROUP = "checkout-service-eu-west-1-production-blue-green-canary-with-a-long-name"


def test_a_long_group_name_is_cut_so_the_status_stays_in_an_80_column_header() -> None:
    state = alert_state()
    state.group = LONG_GROUP
    state.clock_offset = timedelta(seconds=-590)  # heartbeats within the timeout: live
    live = header(state)
    assert live.endswith("● live") and "newest bucket 04:29:50 UTC" in live
    assert " group checkout-service-eu-west-1…  newest" in live and len(live) == 80
    state.clock_offset = timedelta(0)  # no heartbeat for 10 min
    assert header(state).endswith("● no heartbeat for 10m")
    state.connected, state.status = False, "unreachable: connection refused at 127.0.0.1:5432"
    cut = header(state)
    assert cut.endswith("● unreachable: connection refused at 127.0.0.1:5432")
    assert " group checkout-…  ●" in cut  # the newest bucket's time went first
    # With room to spare, nothing is cut.
    state.connected = True
    assert f" group {LONG_GROUP}  newest bucket 04:29:50 UTC" in header(state, 160)


def advance_notifications() -> list[tuple[str, str]]:
    """Return one catch-up advance as advance_group sends it: its alerts, then its buckets.

    Buckets 04:29:40 to 04:33:20; the alert is at 04:30:00, the recovery at 04:33:10.
    """
    stats = []
    for i in range(58, 81):
        raw = json.loads(STATS)
        raw["bucket"] = (T0 + timedelta(seconds=10 * i)).isoformat()
        stats.append(("puppylog_stats", json.dumps(raw)))
    return [("puppylog_alerts", ALERT), ("puppylog_alerts", RECOVERY), *stats]


def chronological(lines: list[str]) -> list[str]:
    """Return ``lines`` (plain output) labelled by what they are: ``s04:29:40``, ``alert``..."""
    out = []
    for line in lines:
        if " stats group=" in line:
            out.append("s" + line[11:19])
        else:
            out.append("alert" if "generated an alert" in line else "recovery")
    return out


@pytest.mark.parametrize("mode", ["plain", "json"])
def test_one_advance_is_shown_in_the_order_it_happened(mode: str) -> None:
    """Buckets up to an alert, the alert, later buckets: not the alerts first, as sent."""
    from puppylog_watch.listener import Listener

    out, err = io.StringIO(), io.StringIO()
    state = WatchState(group="default", connected=True, status="live")
    listener = Listener(
        "postgresql://unused@/x", state, LineSink(out, err, json_mode=mode == "json")
    )
    listener._handle_batch(advance_notifications())
    lines = out.getvalue().splitlines()
    if mode == "json":
        assert [json.loads(line)["type"] for line in lines][:4] == [
            "stats", "stats", "alert", "stats"
        ]  # fmt: skip
        lines = [
            plain_alert(m) if not isinstance(m := parse_payload(line)[0], StatsPayload)
            else plain_stats(m)
            for line in lines
        ]  # fmt: skip
    shown = chronological(lines)
    buckets = [f"s{(T0 + timedelta(seconds=10 * i)).time()}" for i in range(58, 81)]
    # A bucket is news at its end: the one holding the alert's second comes after it.
    assert shown == [*buckets[:2], "alert", *buckets[2:21], "recovery", *buckets[21:]]
    assert err.getvalue() == ""


def test_the_live_view_never_draws_an_alert_ahead_of_the_buckets_before_it() -> None:
    """Every redraw of a catch-up shows a state that was true at some moment, in order."""
    from puppylog_watch.app import LiveSink
    from puppylog_watch.listener import Listener

    state = WatchState(group="default", connected=True, status="live")
    state.apply_stats(stats_at(57, 4.0))  # 04:29:30, seen before the outage
    frames: list[tuple[str, bool]] = []

    class Live:
        def refresh(self) -> None:
            assert state.latest is not None
            frames.append((f"{state.latest.bucket:%H:%M:%S}", state.active_alert is not None))
            render(state, 80, 24)  # and it draws

    listener = Listener("postgresql://unused@/x", state, LiveSink(Live(), state))  # type: ignore[arg-type]
    listener._handle_batch(advance_notifications())
    banner_from = next(i for i, (_, firing) in enumerate(frames) if firing)
    assert frames[banner_from] == ("04:29:50", True)  # the buckets before the alert were in
    assert frames[0] == ("04:29:40", False)
    assert frames[-1] == ("04:33:20", False)  # and it recovered


def stream_line(stream: StreamInfo, width: int = 80) -> str:
    """Return the stream's line of the live view, with rich's colour codes (SGR)."""
    state = alert_state()
    state.clock_offset = timedelta(seconds=-590)  # heartbeat 10 s ago: not red
    state.streams = [stream]
    console = Console(width=width, height=24, record=True, force_terminal=True, file=io.StringIO())
    console.print(WatchView(state, now=T0 + timedelta(minutes=10)))
    lines = console.export_text(styles=True).splitlines()
    return next(line for line in lines if "stream" in line)


YELLOW, RED, DIM = "\x1b[33m", "\x1b[31m", "\x1b[2m"


def test_a_stream_line_shows_its_host_clock_and_late_lines_before_the_rest() -> None:
    """At 80 columns a host's problems stay whole; the lag and heartbeat after them are cut."""
    web = StreamInfo("web-eu-1", "/var/log/nginx/access.log", 0, T0, False, True, 1234, -180.4, T0)
    line = stream_line(web)
    assert f"access.log{RED}  clock -180s\x1b[0m{YELLOW}  late 1234\x1b[0m  lag 0 B  he…" in line
    plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
    assert len(plain) == 80
    wide = re.sub(r"\x1b\[[0-9;]*m", "", stream_line(web, 100)).rstrip()
    assert wide.endswith("access.log  clock -180s  late 1234  lag 0 B  heartbeat 10s ago")


@pytest.mark.parametrize(
    ("late", "offset", "late_ago", "shown"),
    [
        (0, None, None, ""),  # nothing wrong, or a daemon too old to say: the line as it was
        (0, 5.0, None, ""),  # within what the daemon lets pass without a warning
        (0, -4.6, None, ""),
        (1, 0.2, 0, f"{YELLOW}  late 1"),
        (1, 0.2, 3599, f"{YELLOW}  late 1"),
        (1, 0.2, 3600, f"{DIM}  late 1"),  # an old count, kept for good: not a flag any more
        (0, 5.4, None, f"{YELLOW}  clock +5s"),
        (0, -59.6, None, f"{YELLOW}  clock -60s"),
        (0, 60.0, None, f"{RED}  clock +60s"),
        (7, -3600.0, 0, f"{RED}  clock -3600s\x1b[0m{YELLOW}  late 7"),
    ],
)
def test_a_stream_line_shows_clock_skew_and_late_lines_only_when_there_are_any(
    late: int, offset: float | None, late_ago: int | None, shown: str
) -> None:
    # The view's database time is T0 + 10 s (see stream_line).
    late_at = None if late_ago is None else T0 + timedelta(seconds=10 - late_ago)
    line = stream_line(StreamInfo("web1", "/a.log", 0, T0, False, True, late, offset, late_at))
    assert f"web1:/a.log{shown}" + ("\x1b[0m" if shown else "") + "  lag 0 B" in line


def test_the_console_shows_a_clock_from_where_its_daemon_warns_of_it() -> None:
    assert timedelta(seconds=CLOCK_WARN_S) == CLOCK_SKEW_WARN


def streams_line(streams: list[StreamInfo]) -> str:
    """Return the streams' line of an 80 x 24 view (room for one stream), no colours."""
    state = alert_state()
    state.clock_offset = timedelta(seconds=-590)  # the database's time: T0 + 10 s
    state.streams = streams
    console = Console(width=80, height=24, record=True, force_terminal=True, file=io.StringIO())
    console.print(WatchView(state, now=T0 + timedelta(minutes=10)))
    lines = console.export_text().splitlines()
    (line,) = [line for line in lines if line.startswith(" stream")]
    return line.rstrip()


def test_the_stream_that_needs_a_look_gets_the_one_line_there_is_room_for() -> None:
    fine = StreamInfo("a-web", "/a.log", 0, T0, False, True)
    stopped = StreamInfo("a-old", "/a.log", 0, T0 - timedelta(days=3), True, False)
    silent = StreamInfo("z-web", "/a.log", 0, T0 - timedelta(minutes=5), False, False)
    skewed = StreamInfo("y-web", "/a.log", 0, T0, False, True, 0, -30.0)
    behind = StreamInfo("x-web", "/a.log", 5_000_000, T0, False, False)
    late = StreamInfo("w-web", "/a.log", 0, T0, False, True, 12, None, T0)
    late_long_ago = StreamInfo("v-web", "/a.log", 0, T0, False, True, 12, None, T0 - DAY)
    assert streams_line([stopped, fine]).startswith(" stream a-web:/a.log  lag 0 B")
    assert streams_line([stopped, fine]).endswith("(+1 more)")
    assert streams_line([stopped, fine, silent]).startswith(" stream z-web:/a.log")
    assert streams_line([stopped, fine, silent, skewed]).endswith("(+3 more, 1 need a look)")
    for troubled in (skewed, behind, late):
        line = streams_line([stopped, late_long_ago, fine, troubled])
        assert line.startswith(f" stream {troubled.host}:"), line
        assert line.endswith("(+3 more)"), line
    assert streams_line([late_long_ago, fine]).startswith(" stream v-web:")  # host order
