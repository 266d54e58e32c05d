"""Rendering: a plain line, a JSON line, and the rich live view.

Log content is untrusted (paths, users, host names come from whoever sent the requests):
every such string goes through :func:`safe` and into a rich ``Text`` (never markup), so no
terminal escape sequence reaches the terminal raw.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.layout import Layout
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from puppylog_watch.models import AlertPayload, StatsPayload
from puppylog_watch.state import AlertEvent, StreamInfo, WatchState

__all__ = [
    "WatchView",
    "chart",
    "chart_columns",
    "human_bytes",
    "json_line",
    "plain_alert",
    "plain_stats",
    "safe",
]

# C0 controls, DEL, C1 controls, and bidi/format overrides that can reorder what is shown.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_BLOCKS = " ▁▂▃▄▅▆▇█"
# The chart's value labels and axis (" 10.0┤ ") take this many columns of its width.
CHART_LABEL_WIDTH = 7


def _replace(match: re.Match[str]) -> str:
    return "^[" if match.group() == "\x1b" else "\ufffd"


# Invisible characters: format characters (Cf: zero-width space and joiners, soft hyphen,
# word joiner, BOM, tags, ...), line and paragraph separators, lone surrogates. Rich and the
# terminal disagree on their widths (a ZWJ emoji family is one glyph on screen, three to
# rich), which shifts columns and borders, and they let `/\u200badmin` pass for `/admin`.
_HIDDEN_CATEGORIES = frozenset({"Cf", "Zl", "Zp", "Cs"})


def _visible(ch: str) -> str:
    return "\ufffd" if unicodedata.category(ch) in _HIDDEN_CATEGORIES else ch


def safe(text: str) -> str:
    """Return ``text`` with every control, format or bidi-override character made visible.

    ESC shows as ``^[``; every other C0/C1 control, DEL, bidi override and other invisible
    character (Unicode categories Cf, Zl, Zp, Cs) as U+FFFD.
    """
    text = _UNSAFE.sub(_replace, text)
    if text.isascii():
        return text
    return "".join(map(_visible, text))


def human_bytes(n: float) -> str:
    """Format a byte count: ``512 B``, ``1.5 KiB``, ``3.2 MiB``..."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


# -- plain and JSON --------------------------------------------------------------------------


def plain_stats(p: StatsPayload) -> str:
    """One grep-able line per stats bucket."""
    st = p.status
    top = ",".join(f"{safe(s)}:{h}" for s, h in p.sections[:3]) or "-"
    return (
        f"{_iso(p.bucket)} stats group={safe(p.group)} hits={p.hits} rps={p.rps:.1f} "
        f"avg={p.avg:.2f} threshold={p.threshold:g} alert={p.alert} "
        f"2xx={st.get('2xx', 0)} 3xx={st.get('3xx', 0)} 4xx={st.get('4xx', 0)} "
        f"5xx={st.get('5xx', 0)} err={p.error_rate * 100:.1f}% bytes={p.bytes} "
        f"hosts={p.unique_hosts} rejected={p.rejected} top={top}"
    )


def plain_alert(p: AlertEvent) -> str:
    """An alert or recovery: its message verbatim (made safe, though the database wrote it)."""
    return safe(p.message)


def json_line(obj: dict[str, Any]) -> str:
    """One NDJSON line: the payload, compact, ASCII-only (so no raw control character)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


# -- the chart -------------------------------------------------------------------------------


def chart_columns(width: int) -> int:
    """Return how many bars (one per bucket) a chart ``width`` columns wide draws."""
    return max(width - CHART_LABEL_WIDTH, 1)


def _axis_label(value: float) -> str:
    """Return ``value`` in the chart's five label columns (``29.5``, `` 2913``, `` 123k``)."""
    if value < 999.95:
        return f"{value:5.1f}"
    if value < 99_999.5:
        return f"{value:5.0f}"
    if value < 9_999_500:
        return f"{value / 1e3:4.0f}k"
    return f"{value / 1e6:4.0f}M"


def chart(values: Sequence[float], threshold: float | None, width: int, height: int) -> Text:
    """Return a bar chart of ``values`` (newest right), ``height`` rows, threshold drawn in.

    Bars above the threshold are red, the others green; the threshold is a yellow dashed line
    across the empty cells of its row, labelled on the left.
    """
    cols = chart_columns(width)
    vals = list(values)[-cols:]
    vals = [0.0] * (cols - len(vals)) + vals
    top = max([*vals, (threshold or 0.0) * 1.25, 1.0])
    step = top / height
    thr_row = None
    if threshold is not None:
        # Row (0 = top) in which the threshold level lies.
        thr_row = height - 1 - min(int(threshold / step), height - 1)
    out = Text(no_wrap=True, overflow="crop")
    for r in range(height):
        base = (height - 1 - r) * step
        if r == thr_row and threshold is not None:
            out.append(f"{_axis_label(threshold)}┤", style="bold yellow")
        elif r == 0:
            out.append(f"{_axis_label(top)}┤", style="dim")
        elif r == height - 1:
            out.append(f"{_axis_label(0)}┤", style="dim")
        else:
            out.append("     │", style="dim")
        out.append(" ")
        for v in vals:
            frac = min(max((v - base) / step, 0.0), 1.0)
            idx = round(frac * 8)
            if idx == 0 and r == height - 1 and v > 0:
                idx = 1
            style = "red" if threshold is not None and v > threshold else "green"
            if idx == 0:
                if r == thr_row:
                    out.append("╌", style="yellow")
                else:
                    out.append(" ")
            else:
                out.append(_BLOCKS[idx], style=style)
        if r < height - 1:
            out.append("\n")
    return out


# -- the live view ---------------------------------------------------------------------------


def _span(s: float) -> str:
    """Return a duration in seconds as ``78s``, ``12m`` or ``3h``."""
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.0f}h"


def _ago(t: datetime | None, now: datetime) -> str:
    if t is None:
        return "never"
    return _span(max((now - t).total_seconds(), 0.0)) + " ago"


# A long group name is cut to make room for the status, but not below this many cells.
_GROUP_MIN = 8


def _header(state: WatchState, now: datetime, width: int) -> Text:
    """Return the top line; the status keeps its place at any width from 80 columns up.

    Room is made for it by dropping the newest bucket's time (the average line below dates
    the numbers too), then by cutting the group name with an ellipsis.
    """
    silence = state.heartbeat_silence(now)
    if state.connected and silence is not None:
        # Connected, but the numbers stopped: the daemon feeding the group is gone.
        status = Text(f"● no heartbeat for {_span(silence)}", style="bold yellow")
    elif state.connected:
        status = Text("● live", style="green")
    else:
        status = Text("● " + safe(state.status), style="bold red")
    if state.connected and not state.group_exists:
        status.append("  (group not created yet)", style="yellow")
    latest = state.latest
    newest = "  newest bucket " + (
        latest.bucket.astimezone(UTC).strftime("%H:%M:%S UTC") if latest else "none"
    )
    name = Text(safe(state.group), style="bold")
    badge = " puppylog "
    room = width - cell_len(badge) - cell_len(" group ") - cell_len("  ") - status.cell_len
    if name.cell_len + cell_len(newest) > room:
        if min(name.cell_len, _GROUP_MIN) + cell_len(newest) > room:
            newest = ""
        name.truncate(max(room - cell_len(newest), _GROUP_MIN), overflow="ellipsis")
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(badge, style="bold white on blue")
    t.append(" group ")
    t.append_text(name)
    t.append(newest)
    t.append("  ")
    t.append_text(status)
    return t


def _banner(alert: AlertPayload, width: int) -> Text:
    text = Text(style="bold white on red", overflow="ellipsis")
    head = f" ▲ HIGH TRAFFIC ALERT  avg {alert.avg:.2f} req/s > threshold {alert.threshold:g}"
    text.append(head.ljust(width) + "\n")
    text.append(" " + safe(alert.message))
    return text


def _avg_line(state: WatchState) -> Text:
    latest = state.latest
    t = Text(no_wrap=True, overflow="ellipsis")
    mins = state.window_s / 60
    span = f"{mins:g}-min" if state.window_s % 60 == 0 else f"{state.window_s}s"
    if latest is None:
        t.append(f" {span} avg: no data yet", style="dim")
        return t
    over = latest.avg > latest.threshold
    # The average up to the end of the newest closed bucket, which can lag the alert banner
    # (judged every second) by up to one bucket: say which moment it is for.
    end = (latest.bucket + timedelta(seconds=latest.seconds)).astimezone(UTC)
    t.append(f" {span} avg to {end:%H:%M:%S} ")
    t.append(f"{latest.avg:.2f} req/s", style="bold red" if over else "bold green")
    t.append("  ABOVE" if over else "  below", style="red" if over else "green")
    t.append(f" threshold {latest.threshold:g}")
    # Last, so that at 80 columns only this is cut when the numbers grow long.
    t.append(f"   last bucket {latest.rps:.1f} req/s")
    return t


def _sections_table(latest: StatsPayload | None, rows: int, width: int) -> Table:
    table = Table(box=None, expand=True, padding=(0, 1), show_edge=False)
    table.add_column("section", no_wrap=True, overflow="ellipsis", ratio=1)
    table.add_column("hits", justify="right", no_wrap=True)
    table.add_column("share", justify="right", no_wrap=True)
    bar_w = 10 if width >= 50 else 0
    if bar_w:
        table.add_column("", no_wrap=True, width=bar_w)
    if latest is None:
        return table
    total = max(latest.hits, 1)
    for name, hits in latest.sections[: max(rows, 0)]:
        share = hits / total
        cells: list[RenderableType] = [Text(safe(name)), str(hits), f"{share:.0%}"]
        if bar_w:
            cells.append(Text("█" * max(round(share * bar_w), 1), style="cyan"))
        table.add_row(*cells)
    return table


def _traffic_table(latest: StatsPayload | None) -> Table:
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(no_wrap=True, style="dim")
    table.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    if latest is None:
        table.add_row("", "waiting for the first bucket")
        return table
    st = latest.status
    status = Text()
    for cls, style in (("2xx", "green"), ("3xx", "cyan"), ("4xx", "yellow"), ("5xx", "red")):
        status.append(f"{cls} ", style="dim")
        status.append(f"{st.get(cls, 0)} ", style=style)
    table.add_row("status", status)
    err_style = "red" if latest.error_rate >= 0.05 else "green"
    table.add_row("errors", Text(f"{latest.error_rate:.1%} (4xx+5xx)", style=err_style))
    table.add_row("volume", f"{latest.hits} hits, {human_bytes(latest.bytes)}")
    users = " ".join(f"{safe(u)} {n}" for u, n in latest.users[:3])
    clients = Text(f"{latest.unique_hosts} hosts")
    if users:
        clients.append("; " + users, style="dim")
    table.add_row("clients", clients)
    methods = " ".join(f"{safe(m)} {n}" for m, n in latest.methods[:4]) or "-"
    table.add_row("methods", Text(methods))
    if latest.rejected:
        table.add_row(
            "rejected",
            Text(f"{latest.rejected} line{'' if latest.rejected == 1 else 's'}", style="yellow"),
        )
    return table


# A stream's host clock is shown when it is further off the database's than its daemon
# warns of (puppylogd.daemon.CLOCK_SKEW_WARN), in red from a minute: the group's stats and
# alerts wait that long for a slow host, a fast host's lines count that much late.
CLOCK_WARN_S = 5.0
CLOCK_RED_S = 60.0
# The late-line count is a total kept for good: yellow while late lines came within the last
# hour, dimmed after, so one restart's backlog does not flag a stream for ever.
LATE_RECENT = timedelta(hours=1)
LAG_WARN_BYTES = 1_000_000  # a lag shown in yellow


def _clock_off(s: StreamInfo) -> bool:
    return s.clock_offset_s is not None and abs(s.clock_offset_s) > CLOCK_WARN_S


def _late_recently(s: StreamInfo, now: datetime) -> bool:
    return s.lines_late > 0 and s.late_at is not None and now - s.late_at < LATE_RECENT


def _lagging(s: StreamInfo) -> bool:
    return (s.lag_bytes or 0) > LAG_WARN_BYTES


def _silent(s: StreamInfo, now: datetime, timeout_s: float) -> bool:
    return s.heartbeat_at is None or (now - s.heartbeat_at).total_seconds() > timeout_s


def _stream_problems(s: StreamInfo, now: datetime) -> Text:
    """Return what is wrong with a stream's host: its clock, then its late lines; or nothing."""
    t = Text()
    if _clock_off(s):
        offset = s.clock_offset_s or 0.0
        t.append(f"  clock {offset:+.0f}s", style="red" if abs(offset) >= CLOCK_RED_S else "yellow")
    if s.lines_late > 0:
        t.append(f"  late {s.lines_late}", style="yellow" if _late_recently(s, now) else "dim")
    return t


def _urgency(s: StreamInfo, now: datetime, timeout_s: float) -> int:
    """Return where a stream's line goes: 0 silent, 1 a problem shown, 2 fine, 3 stopped."""
    if s.stopped:
        return 3
    if _silent(s, now, timeout_s):
        return 0
    if _lagging(s) or _clock_off(s) or _late_recently(s, now):
        return 1
    return 2


def _streams_text(
    streams: Sequence[StreamInfo], now: datetime, rows: int, timeout_s: float
) -> Text:
    """Return one line per stream, those that need a look first; ``now`` is the database's.

    There is room for one to three lines, so a silent stream, then one with a problem
    (clock, late lines, lag), come before the others, and stopped ones last (in host and
    path order within each). A line too long is cut at the end: a problem of the stream's
    host comes right after its name, before the lag and heartbeat.
    """
    t = Text(no_wrap=True, overflow="ellipsis")
    if not streams:
        t.append(" streams: none yet", style="dim")
        return t
    ranked = sorted(streams, key=lambda s: _urgency(s, now, timeout_s))
    for i, s in enumerate(ranked[:rows]):
        if i:
            t.append("\n")
        t.append(" stream ", style="dim")
        t.append(safe(f"{s.host}:{s.path}"))
        t.append_text(_stream_problems(s, now))
        lag = "?" if s.lag_bytes is None else human_bytes(max(s.lag_bytes, 0))
        t.append(f"  lag {lag}", style="yellow" if _lagging(s) else "")
        silent = _silent(s, now, timeout_s)
        t.append(f"  heartbeat {_ago(s.heartbeat_at, now)}", style="bold red" if silent else "")
        if s.stopped:
            t.append("  stopped", style="yellow")
    hidden = ranked[rows:]
    if hidden:
        troubled = sum(1 for s in hidden if _urgency(s, now, timeout_s) < 2)
        if troubled:
            t.append(f"  (+{len(hidden)} more, {troubled} need a look)", style="yellow")
        else:
            t.append(f"  (+{len(hidden)} more)", style="dim")
    return t


def _events_text(events: Sequence[AlertEvent], rows: int) -> Text:
    # Wrapped, not cut: the time is at the end of a message. What does not fit in the
    # panel's rows is cropped from the bottom, so the newest messages stay whole.
    t = Text()
    if not events:
        t.append("no alerts yet", style="dim")
        return t
    for i, e in enumerate(list(events)[:rows]):
        if i:
            t.append("\n")
        style = "bold red" if isinstance(e, AlertPayload) else "green"
        t.append(safe(e.message), style=style)
    return t


class WatchView:
    """The live view of a :class:`WatchState`, laid out for the console's size."""

    def __init__(self, state: WatchState, now: datetime | None = None) -> None:
        self.state = state
        self.now = now

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        height = options.height or console.height
        yield self.layout(width, height)

    def layout(self, width: int, height: int) -> Layout:
        """Build the screen for a ``width`` x ``height`` terminal (fits 80x24)."""
        state = self.state
        now = self.now or datetime.now(UTC)
        latest = state.latest
        banner = state.active_alert is not None
        chart_h = min(max(height - 24, 4), 8)
        stream_rows = min(max(len(state.streams), 1), 3 if height >= 30 else 1)
        event_rows = min(max((height - 24) // 4 + 3, 3), 8)
        fixed = 1 + (3 if banner else 0) + 1 + chart_h + 1 + stream_rows + event_rows + 2
        mid_h = max(height - fixed, 4)
        section_rows = max(mid_h - 3, 1)

        root = Layout()
        parts = [Layout(_header(state, now, width), size=1)]
        if banner and state.active_alert is not None:
            parts.append(Layout(_banner(state.active_alert, width), size=3))
        # The buckets drawn, not the terminal's columns: the labels take some of them.
        n = min(len(state.buckets), chart_columns(width))
        title = Text(no_wrap=True, overflow="crop")
        span = f"{n * 10 // 60} min" if n >= 12 else f"{n * 10} s"
        title.append(f" req/s per 10 s, last {span} ", style="bold")
        if state.threshold is not None:
            title.append(f" ╌╌ threshold {state.threshold:g} req/s", style="yellow")
        parts.append(Layout(title, size=1))
        values = [b.rps for b in state.buckets]
        parts.append(Layout(chart(values, state.threshold, width, chart_h), size=chart_h))
        parts.append(Layout(_avg_line(state), size=1))
        mid = Layout(size=mid_h)
        # At 80 columns the traffic panel needs the wider half for its status counts; the
        # section names are short (a path up to its second "/").
        left_w = max(min(width // 2, width - 46), 34)
        mid.split_row(
            Layout(
                Panel(
                    _sections_table(latest, section_rows, left_w - 4),
                    title="top sections (latest bucket)",
                    title_align="left",
                    border_style="blue",
                ),
                size=left_w,
            ),
            Layout(Panel(_traffic_table(latest), title="traffic", title_align="left")),
        )
        parts.append(mid)
        streams = _streams_text(
            state.streams, now + state.clock_offset, stream_rows, state.heartbeat_timeout_s
        )
        parts.append(Layout(streams, size=stream_rows))
        parts.append(
            Layout(
                Panel(
                    _events_text(state.events, event_rows),
                    title="alerts, newest first",
                    title_align="left",
                    border_style="red" if banner else "dim",
                ),
                size=event_rows + 2,
            )
        )
        root.split_column(*parts)
        return root


HISTORY_COLUMNS = (
    "id",
    "triggered_utc",
    "recovered_utc",
    "duration_s",
    "hits_at_trigger",
    "hits_at_recovery",
    "threshold",
)


def _alert_span(r: dict[str, Any]) -> tuple[datetime, datetime | None, int]:
    """Return an alert row's trigger time, recovery time (None: active) and seconds so far."""
    trig: datetime = r["triggered_at"]
    rec: datetime | None = r["recovered_at"]
    return trig, rec, int(((rec or datetime.now(UTC)) - trig).total_seconds())


def history_tsv(rows: Sequence[dict[str, Any]]) -> str:
    """Return past alerts as tab-separated lines under a header (``--history``, piped)."""
    lines = ["\t".join(HISTORY_COLUMNS)]
    for r in rows:
        trig, rec, secs = _alert_span(r)
        fields = [
            r["id"],
            _iso(trig),
            _iso(rec) if rec else "",  # empty: still active
            secs,
            r["hits_at_trigger"],
            "" if r["hits_at_recovery"] is None else r["hits_at_recovery"],
            f"{r['threshold']:g}",
        ]
        lines.append("\t".join(str(f) for f in fields))
    return "\n".join(lines) + "\n"


def history_table(rows: Sequence[dict[str, Any]]) -> RenderableType:
    """Return the table of past alerts (``--history``)."""
    table = Table(title="puppylog alerts", title_justify="left")
    table.add_column("id", justify="right")
    table.add_column("triggered (UTC)", no_wrap=True)
    table.add_column("recovered (UTC)", no_wrap=True)
    table.add_column("duration", justify="right")
    table.add_column("hits at trigger", justify="right")
    table.add_column("hits at recovery", justify="right")
    table.add_column("threshold", justify="right")
    for r in rows:
        trig, rec, secs = _alert_span(r)
        dur = f"{secs // 3600}:{secs % 3600 // 60:02d}:{secs % 60:02d}"
        table.add_row(
            str(r["id"]),
            _iso(trig),
            _iso(rec) if rec else Text("active", style="bold red"),
            dur if rec else dur + "+",
            str(r["hits_at_trigger"]),
            "" if r["hits_at_recovery"] is None else str(r["hits_at_recovery"]),
            f"{r['threshold']:g}",
        )
    if not rows:
        return Group(table, Text("no alerts"))
    return table
