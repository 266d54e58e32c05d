"""The dedicated LISTEN connection: state from the tables first, then notifications.

After every (re)connect the listener LISTENs first, then reads the group, its streams, the
recent stats buckets and the alert events from the tables, then applies the notifications
that queued up meanwhile (duplicates are dropped by bucket time and ``(alert_id, type)``).
What arrives together, and what a reconnect reads from the tables, is reported in the order
it happened (:func:`~puppylog_watch.state.news_order`), not in the order it was sent.
On a reconnect every alert event newer than the last one seen is replayed, so no alert or
recovery is ever missed. A liveness probe (streams query with a timeout, every
``probe_interval`` seconds) detects a silently dead connection; reconnects back off up to
``max_backoff`` seconds, also after a session that failed soon after it connected.

Until the first session is live, a server that answers with a refusal (no such database or
role, a wrong password, ``pg_hba.conf``) or with an error while the session is set up (no
puppylog schema, no right to read it) ends the watch with :class:`WatchFatal`: retrying cannot
help until a setting is fixed. Once the watch has been live, the same answers are taken as
passing (a role locked out for a while, a database being restored) and waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg

from puppylog_watch.models import (
    AlertPayload,
    PayloadError,
    RecoveryPayload,
    StatsPayload,
    parse_payload,
)
from puppylog_watch.outage import Outage, connect_failed, session_failed
from puppylog_watch.state import AlertEvent, StreamInfo, WatchState, news_order
from puppylogd import db
from puppylogd.logs import mask_dsn

__all__ = ["CHANNELS", "Listener", "Sink", "WatchFatal"]

CHANNELS = ("puppylog_stats", "puppylog_alerts")

# Anything a database round trip can raise (``--history`` reports them all the same way).
CONNECTION_ERRORS = db.DB_ERRORS
# What an unreachable server or a lost connection raises: wait and reconnect. Every other
# PostgresError is the server's answer to what was asked.
_LOST_ERRORS = db.CONNECTION_ERRORS


class WatchFatal(Exception):
    """The server answered with an error that retrying cannot fix; the watch ends (exit 1)."""


DSN_FLAGS = "--dsn / PUPPYLOG_DSN"


def refused(dsn: str, exc: asyncpg.PostgresError, source: str = DSN_FLAGS) -> str:
    """Return one line saying that the server refused the DSN (password masked).

    ``source`` names where the DSN was set, the thing to check.
    """
    return f"cannot connect to {mask_dsn(dsn)}: {exc} (check {source})"


async def explain(conn: asyncpg.Connection, exc: asyncpg.PostgresError, user: str) -> str:
    """Return one line saying why setting up a session failed, with the likely fix."""
    user = user or "this role"
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return f"role {user} may not read schema puppylog ({exc}): GRANT puppylog_reader TO {user}"
    if isinstance(exc, asyncpg.InvalidSchemaNameError | asyncpg.UndefinedTableError):
        has_schema = None
        with contextlib.suppress(*db.DB_ERRORS):
            has_schema = await conn.fetchval("SELECT to_regnamespace('puppylog') IS NOT NULL")
        if not has_schema:
            return (
                "the database has no puppylog schema: run puppylogd (or `puppylogd "
                "migrate`) against it first"
            )
    if isinstance(exc, asyncpg.SyntaxOrAccessError):
        return (
            f"the puppylog schema is not what this version reads ({exc}): run "
            "`puppylogd migrate` with this version, or use the matching puppylog-watch"
        )
    return f"cannot read the puppylog tables: {exc}"


_GROUP_SQL = """
SELECT id, threshold, window_s, alert_state, heartbeat_timeout_s
FROM puppylog.log_groups WHERE name = $1
"""
# Live streams first: the console has room for one to three, and the stopped streams of
# files no longer followed stay listed for good (their checkpoints must not be forgotten).
_STREAMS_SQL = """
SELECT s.host, s.path, s.file_size - s.byte_offset AS lag, s.heartbeat_at, s.stopped,
       s.caught_up, s.lines_late, s.clock_offset_s, s.late_at, now() AS db_now
FROM puppylog.log_streams s JOIN puppylog.log_groups g ON g.id = s.group_id
WHERE g.name = $1 ORDER BY s.stopped, s.host, s.path
"""
_RECENT_BUCKETS_SQL = """
SELECT payload::text FROM (
    SELECT bucket, payload FROM puppylog.stats_buckets
    WHERE group_id = $1 ORDER BY bucket DESC LIMIT $2) b
ORDER BY bucket
"""
_NEWER_BUCKETS_SQL = """
SELECT payload::text FROM (
    SELECT bucket, payload FROM puppylog.stats_buckets
    WHERE group_id = $1 AND bucket > $2 ORDER BY bucket DESC LIMIT $3) b
ORDER BY bucket
"""
_RECENT_EVENTS_SQL = """
SELECT payload::text FROM (
    SELECT at, alert_id, kind, payload FROM puppylog.alert_events
    WHERE group_name = $1 ORDER BY at DESC, alert_id DESC, kind DESC LIMIT $2) e
ORDER BY at, alert_id, kind
"""
_EVENTS_SINCE_SQL = """
SELECT payload::text FROM puppylog.alert_events
WHERE group_name = $1 AND at >= $2
ORDER BY at, alert_id, kind
"""

MAX_REPLAY_BUCKETS = 360
INITIAL_EVENTS = 200


class Sink(Protocol):
    """Where the listener reports: a plain/JSON printer or the live view."""

    def initial(
        self,
        state: WatchState,
        latest: tuple[StatsPayload, dict[str, Any]] | None,
        active: tuple[AlertPayload, dict[str, Any]] | None,
    ) -> None:
        """The first connect read the tables: show the newest bucket and any active alert."""

    def stats(self, payload: StatsPayload, raw: dict[str, Any]) -> None:
        """A new stats bucket."""

    def alert(self, payload: AlertEvent, raw: dict[str, Any]) -> None:
        """A new alert or recovery (live, or replayed after a reconnect)."""

    def status(self, state: WatchState) -> None:
        """The connection state changed (``state.connected``, ``state.status``)."""

    def warn(self, message: str) -> None:
        """A skipped payload or similar; never fatal."""

    def tick(self, state: WatchState) -> None:
        """Called about once a second (redraw ages, notice a silent daemon)."""


@dataclass
class _Conn:
    conn: asyncpg.Connection
    queue: asyncio.Queue[tuple[str, str]]
    lost: asyncio.Event


class Listener:
    """Keep ``state`` current from the database at ``dsn`` and report to ``sink``."""

    def __init__(
        self,
        dsn: str,
        state: WatchState,
        sink: Sink,
        *,
        probe_interval: float = 5.0,
        probe_timeout: float = 5.0,
        connect_timeout: float = 10.0,
        min_backoff: float = 0.5,
        max_backoff: float = 10.0,
        stable_after: float = 10.0,
        on_first_connect: Callable[[], None] | None = None,
        source: str = DSN_FLAGS,
    ) -> None:
        self.dsn = dsn
        self.source = source
        self.state = state
        self.sink = sink
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.connect_timeout = connect_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self._first = True
        self._user = ""
        self._group_id: int | None = None
        self._on_first_connect = on_first_connect
        self.connects = 0
        self.attempts = 0

    # -- main loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; reconnect with capped backoff on any connection loss.

        Raise :class:`WatchFatal` if the server refuses the first session (see the module).
        """
        delay = self.min_backoff
        while not stop.is_set():
            self.attempts += 1
            try:
                conn = await asyncpg.connect(
                    self.dsn,
                    timeout=self.connect_timeout,
                    command_timeout=None,
                    server_settings={"application_name": "puppylog-watch"},
                )
            except _LOST_ERRORS as exc:
                self._set_status(False, connect_failed(exc, self.dsn, timeout=self.connect_timeout))
                await _sleep(stop, delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            except asyncpg.PostgresError as exc:
                if not self.connects:
                    raise WatchFatal(refused(self.dsn, exc, self.source)) from exc
                self._set_status(False, connect_failed(exc, self.dsn, timeout=self.connect_timeout))
                await _sleep(stop, delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            started = time.monotonic()
            try:
                await self._session(conn, stop)
            except _LOST_ERRORS as exc:
                outage = session_failed(exc, lost=True, probe_timeout=self.probe_timeout)
                self._set_status(False, outage)
            except asyncpg.PostgresError as exc:
                if not self.connects:
                    raise WatchFatal(await self._explain(conn, exc)) from exc
                outage = session_failed(exc, lost=False, probe_timeout=self.probe_timeout)
                self._set_status(False, outage)
            finally:
                conn.terminate()
            if time.monotonic() - started >= self.stable_after:
                delay = self.min_backoff
            else:
                # A session that fails soon after it connected would otherwise reconnect in
                # a tight loop (a privilege revoked, a table dropped).
                await _sleep(stop, delay)
                delay = min(delay * 2, self.max_backoff)

    async def _explain(self, conn: asyncpg.Connection, exc: asyncpg.PostgresError) -> str:
        return await explain(conn, exc, self._user)

    def _set_status(self, connected: bool, status: str | Outage) -> None:
        text = status.status if isinstance(status, Outage) else status
        # Retries of the same outage change nothing: it is said once, not once per attempt.
        changed = connected != self.state.connected or text != self.state.status
        self.state.connected = connected
        self.state.status = text
        self.state.status_detail = status.detail if isinstance(status, Outage) else ""
        if changed:
            self.sink.status(self.state)

    async def _session(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        c = _Conn(conn, asyncio.Queue(), asyncio.Event())

        def on_notify(_c: object, _pid: int, channel: str, payload: object) -> None:
            c.queue.put_nowait((channel, str(payload)))

        conn.add_termination_listener(lambda _c: c.lost.set())
        self._user = str(await conn.fetchval("SELECT current_user"))
        for channel in CHANNELS:
            await conn.add_listener(channel, on_notify)
        await self._load(conn)
        self.connects += 1
        self._set_status(True, "live")
        if self._on_first_connect is not None and self.connects == 1:
            self._on_first_connect()

        next_probe = time.monotonic() + self.probe_interval
        next_tick = time.monotonic() + 1.0
        stop_task = asyncio.create_task(stop.wait())
        lost_task = asyncio.create_task(c.lost.wait())
        try:
            while not stop.is_set():
                if c.lost.is_set():
                    raise ConnectionError("the server closed the connection")
                if not c.queue.empty():
                    await self._deliver(conn, c.queue, [])
                now = time.monotonic()
                if now >= next_probe:
                    await asyncio.wait_for(self._probe(conn), self.probe_timeout)
                    next_probe = time.monotonic() + self.probe_interval
                if now >= next_tick:
                    self.sink.tick(self.state)
                    next_tick = now + 1.0
                get_task = asyncio.create_task(c.queue.get())
                timeout = max(min(next_probe, next_tick) - time.monotonic(), 0.0)
                done, _ = await asyncio.wait(
                    {get_task, stop_task, lost_task},
                    timeout=timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if get_task in done:
                    await self._deliver(conn, c.queue, [get_task.result()])
                else:
                    get_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await get_task
        finally:
            for task in (stop_task, lost_task):
                task.cancel()
            await asyncio.gather(stop_task, lost_task, return_exceptions=True)

    # -- reading the tables ----------------------------------------------------------------

    async def _refresh_group(self, conn: asyncpg.Connection) -> None:
        row = await conn.fetchrow(_GROUP_SQL, self.state.group)
        if row is None:
            self.state.group_exists = False
            self._group_id = None
            return
        self.state.group_exists = True
        self._group_id = int(row["id"])
        self.state.threshold = float(row["threshold"])
        self.state.window_s = int(row["window_s"])
        self.state.heartbeat_timeout_s = int(row["heartbeat_timeout_s"])

    async def _refresh_streams(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch(_STREAMS_SQL, self.state.group)
        if rows:
            self.state.clock_offset = rows[0]["db_now"] - datetime.now(UTC)
        self.state.streams = [
            StreamInfo(
                host=r["host"],
                path=r["path"],
                lag_bytes=None if r["lag"] is None else int(r["lag"]),
                heartbeat_at=r["heartbeat_at"],
                stopped=bool(r["stopped"]),
                caught_up=bool(r["caught_up"]),
                lines_late=int(r["lines_late"]),
                clock_offset_s=r["clock_offset_s"],
                late_at=r["late_at"],
            )
            for r in rows
        ]

    async def _probe(self, conn: asyncpg.Connection) -> None:
        await conn.fetchval("SELECT 1")
        await self._refresh_group(conn)
        await self._refresh_streams(conn)

    async def _load(self, conn: asyncpg.Connection) -> None:
        state = self.state
        await self._refresh_group(conn)
        await self._refresh_streams(conn)
        first = self._first
        self._first = False
        if self._group_id is None:
            if first:
                self.sink.initial(state, None, None)
            return
        # Stats buckets: everything recent on the first connect, else what was missed.
        latest = state.latest
        if first or latest is None:
            rows = await conn.fetch(_RECENT_BUCKETS_SQL, self._group_id, MAX_REPLAY_BUCKETS)
        else:
            rows = await conn.fetch(
                _NEWER_BUCKETS_SQL, self._group_id, latest.bucket, MAX_REPLAY_BUCKETS
            )
        news: list[tuple[StatsPayload | AlertEvent, dict[str, Any]]] = []
        for r in rows:
            parsed = self._parse("stats_buckets", r[0])
            if parsed is not None and isinstance(parsed[0], StatsPayload):
                news.append((parsed[0], parsed[1]))
        # Alert events: the recent ones on the first connect; every one newer than the last
        # seen after a reconnect (event times only grow, so nothing older can appear).
        since = state.last_event_at()
        if first or since is None:
            rows = await conn.fetch(_RECENT_EVENTS_SQL, state.group, INITIAL_EVENTS)
        else:
            rows = await conn.fetch(_EVENTS_SINCE_SQL, state.group, since)
        for r in rows:
            parsed = self._parse("alert_events", r[0])
            if parsed is not None and not isinstance(parsed[0], StatsPayload):
                news.append((parsed[0], parsed[1]))
        # What was missed is told in the order it happened, not all buckets, then all alerts.
        news.sort(key=lambda n: news_order(n[0]))
        last_stats: tuple[StatsPayload, dict[str, Any]] | None = None
        active_raw: dict[str, Any] | None = None
        for payload, raw in news:
            if isinstance(payload, StatsPayload):
                if state.apply_stats(payload):
                    last_stats = (payload, raw)
                    if not first:
                        self.sink.stats(payload, raw)
            elif state.apply_alert(payload):
                if isinstance(payload, AlertPayload):
                    active_raw = raw
                if not first:
                    self.sink.alert(payload, raw)
        if first:
            active = state.active_alert
            self.sink.initial(
                state,
                last_stats,
                (active, active_raw) if active is not None and active_raw is not None else None,
            )

    # -- notifications ---------------------------------------------------------------------

    def _parse(
        self, source: str, text: str
    ) -> tuple[StatsPayload | AlertPayload | RecoveryPayload, dict[str, Any]] | None:
        try:
            return parse_payload(text)
        except PayloadError as exc:
            self.sink.warn(f"skipped a payload from {source}: {exc}")
            return None

    async def _deliver(
        self,
        conn: asyncpg.Connection,
        queue: asyncio.Queue[tuple[str, str]],
        batch: list[tuple[str, str]],
    ) -> None:
        """Handle ``batch`` and what else has arrived, in the order it happened.

        One advance of the daemon announces its alerts before its buckets, and a catch-up
        after an outage can be hundreds of notifications, which arrive in more than one read.
        When an alert is among them, a round trip first: the server sends the rest of that
        transaction's notifications before the answer, so the batch holds all of them.
        """
        batch.extend(_drain(queue))
        if any(channel == "puppylog_alerts" for channel, _ in batch):
            await asyncio.wait_for(conn.fetchval("SELECT 1"), self.probe_timeout)
            batch.extend(_drain(queue))
        self._handle_batch(batch)

    def _handle_batch(self, batch: list[tuple[str, str]]) -> None:
        """Apply the notifications of ``batch`` to the state in event-time order, and report."""
        news: list[tuple[StatsPayload | AlertEvent, dict[str, Any]]] = []
        for channel, text in batch:
            parsed = self._parse(channel, text)
            if parsed is None:
                continue
            payload, raw = parsed
            if payload.group != self.state.group:
                continue
            wanted = "puppylog_stats" if isinstance(payload, StatsPayload) else "puppylog_alerts"
            if channel != wanted:
                kind = "stats" if isinstance(payload, StatsPayload) else "alert"
                self.sink.warn(f"skipped a {kind} payload on channel {channel}")
                continue
            news.append((payload, raw))
        news.sort(key=lambda n: news_order(n[0]))
        for payload, raw in news:
            if isinstance(payload, StatsPayload):
                if self.state.apply_stats(payload):
                    self.sink.stats(payload, raw)
            elif self.state.apply_alert(payload):
                self.sink.alert(payload, raw)


def _drain(queue: asyncio.Queue[tuple[str, str]]) -> list[tuple[str, str]]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def parse_since(text: str) -> datetime:
    """Parse ``--since`` (ISO 8601; a naive time is UTC)."""
    t = datetime.fromisoformat(text)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
