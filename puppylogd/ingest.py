"""Ship one stream's lines into PostgreSQL: binary COPY plus checkpoint, in one transaction.

Exactly-once rests on two rules. The checkpoint (file identity and byte offset) is written in
the transaction that stores the rows it covers, with a compare-and-set on where the batch
began. After any failure (including an ambiguous COMMIT) the committed checkpoint is read
back and the tailer rewinds to it, so every line is stored once: never skipped, never twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from puppylogd import db
from puppylogd.config import Settings
from puppylogd.logs import RateLimitedReporter
from puppylogd.parser import COLUMNS, Parser, RecordRow, Rejected
from puppylogd.tailer import NOT_REGULAR, Chunk, NotRegularFileError, Position, Tailer

log = structlog.get_logger("puppylogd.ingest")

REJECTED_COLUMNS = ("stream_id", "reason", "detail", "line")
# An idle stream reports its watermark this often, so quiet time counts as zero traffic.
HEARTBEAT_SECONDS = 1.0
# Beat just after each wall-clock second, so a second closes (and its alert is decided)
# right when it can, not up to a heartbeat later.
HEARTBEAT_SLACK = 0.02
# Retry delays while the database is away: start small, cap so recovery is prompt.
BACKOFF_START = 0.25
BACKOFF_MAX = 10.0
# Records dated further ahead of the wall clock than this are rejected ("timestamp in the
# future"). A stream's watermark follows its newest record, and a closed second can never
# reopen: a line from a skewed clock an hour ahead would close an hour of seconds early and
# make every genuine line of that hour late. Five minutes covers NTP-disciplined hosts and
# buffered writers; the watermark is also clamped to the wall clock (``_watermark``), and
# the database holds it to its own clock, which a whole host's fast clock cannot move
# (heartbeat.sql, migration 0008).
FUTURE_LIMIT = timedelta(minutes=5)
SECOND = timedelta(seconds=1)
# Rows found late are said at most this often per stream (the first at once), with a count.
LATE_REPORT_SECONDS = 60.0
# While a batch's transaction runs, check this often that its connection is still alive:
# asyncpg can wait forever in a COPY whose backend was terminated.
CONN_CHECK_SECONDS = 0.5
# Lines parsed between two yields to the event loop (about 0.5 ms of work). The COPY in
# flight only refills the socket when the loop runs; between two refills PostgreSQL must
# find enough data in the socket buffer (see db.widen_send_buffer) to keep busy. bench/,
# default buffer: bulk ingest 165k lines/s at 2,000 lines, 175k at 500, 200k at 250 and
# below; with the wide buffer 200k at 1,000, 215k at 250.
PARSE_SLICE = 250


def partition_of(day: date) -> str:
    """Return the name of the ``log_records`` partition of a UTC day (ensure_partitions' naming)."""
    return f"log_records_p{day:%Y%m%d}"


def split_by_day(
    rows: list[RecordRow],
) -> tuple[datetime | None, datetime | None, list[tuple[date, list[RecordRow]]]]:
    """Return the oldest and newest timestamps and the rows grouped by UTC day, days ascending.

    Rows are COPYed straight into their day's partition (see migration 0005): PostgreSQL
    inserts in batches into a plain table but row by row into the partitioned parent.
    """
    if not rows:
        return None, None, []
    stamps = list(map(itemgetter(0), rows))
    first, last = min(stamps), max(stamps)
    if first.date() == last.date():  # nearly always: a batch is seconds of one day
        return first, last, [(last.date(), rows)]
    by_day: dict[date, list[RecordRow]] = {}
    for row in rows:
        by_day.setdefault(row[0].date(), []).append(row)
    return first, last, sorted(by_day.items())


def _until_next_second() -> float:
    """Return the seconds until just after the next wall-clock second (the idle heartbeat)."""
    return HEARTBEAT_SECONDS - (time.time() % HEARTBEAT_SECONDS) + HEARTBEAT_SLACK


class CheckpointConflict(Exception):
    """The stream's checkpoint moved under us: someone else tails the same stream."""


class PreviousBatchFailed(Exception):
    """The batch before this one was not stored, so this one must not be either."""


class StreamOwnedElsewhere(Exception):
    """The stream was registered by another database role: this one may not move it."""


# What makes a stream rewind to its committed checkpoint and carry on.
FAILURES: tuple[type[BaseException], ...] = (
    CheckpointConflict,
    PreviousBatchFailed,
    *db.DB_ERRORS,
)


@dataclass(slots=True)
class Progress:
    """How far one batch's transaction has got (see ``StreamIngest.run_once``)."""

    sending: asyncio.Event = field(default_factory=asyncio.Event)  # its rows are going out
    copied: asyncio.Event = field(default_factory=asyncio.Event)  # its rows are all stored


@dataclass(slots=True)
class Batch:
    """One chunk of a file, parsed and ready to commit."""

    chunk: Chunk
    rows: list[RecordRow]
    rejected: list[Rejected]
    max_ts: datetime | None
    caught_up: bool
    file_size: int | None
    # The rows again, by UTC day (ascending): one COPY per day partition.
    days: list[tuple[date, list[RecordRow]]] = field(default_factory=list)
    # The oldest row's timestamp: only when it is in a closed second can a row be late.
    min_ts: datetime | None = None
    # When ``caught_up`` was observed (when the chunk was read). A batch may wait long for
    # its commit (a stalled server): its watermark must be the wall clock of then, not of
    # the commit, or seconds whose lines are still unread would be closed.
    read_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(slots=True)
class StreamStats:
    """Counters an operator (and STATUS=) wants about one stream."""

    stored: int = 0
    rejected: int = 0
    batches: int = 0
    lag_bytes: int = 0
    # Rows stored after their second was closed: in the rollups, not in alerts or buckets.
    late: int = 0
    last_progress: float = field(default_factory=time.monotonic)


def position_from_row(row: asyncpg.Record) -> Position | None:
    """Build a tailer position from a checkpoint row; None when nothing was committed yet."""
    if row["inode"] is None:
        return None
    return Position(
        dev=int(row["dev"]),
        inode=int(row["inode"]),
        offset=int(row["byte_offset"]),
        fp_len=int(row["fp_len"]),
        fingerprint=bytes(row["fingerprint"] or b""),
    )


class StreamIngest:
    """Follow one file and store each of its lines exactly once."""

    def __init__(
        self,
        settings: Settings,
        dsn: str,
        path: Path,
        group_id: int,
        *,
        on_progress: Callable[[], None] = lambda: None,
        on_rejected: Callable[[Path, Rejected], None] = lambda _p, _r: None,
        clock_offset: Callable[[], timedelta | None] = lambda: None,
    ) -> None:
        self.settings = settings
        # The daemon's latest measure of its clock (db.clock_offset), stored at registration.
        self._clock_offset = clock_offset
        self.dsn = dsn
        self.path = path
        self.group_id = group_id
        self.stats = StreamStats()
        # Set while the stream waits for the database (``waiting_for_db``), to await it.
        self.db_wait = asyncio.Event()
        self.stream_id = 0
        self._on_progress = on_progress
        self._on_rejected = on_rejected
        self._conn: asyncpg.Connection | None = None
        # --once's second COPY connection (see run_once).
        self._spare: asyncpg.Connection | None = None
        self._tailer = Tailer(
            path, max_line_bytes=settings.max_line_bytes, poll_interval=settings.poll_interval
        )
        self._parser = Parser(0)
        self._max_ts: datetime | None = None
        # The checkpoint as committed in the database (None: nothing committed yet).
        self._committed: Position | None = None
        # Where the tailer stands when every chunk it handed out is committed: while its
        # position differs, lines already read are not in the database yet.
        self._settled: Position | None = None
        self._known_days: set[date] = set()
        self._lateness = timedelta(seconds=settings.lateness_seconds)
        self._conflicts = RateLimitedReporter(
            limit=1, interval=60.0, summary_event="checkpoint conflicts suppressed"
        )
        self._late_unsaid = 0
        self._late_closed: datetime | None = None
        self._late_said_at = -LATE_REPORT_SECONDS
        # A failure that is not the connection's (a read-only database, a full disk...) may
        # repeat on every batch for as long as it lasts: said once a minute, retried ever
        # more slowly (reset by a commit).
        self._failures = RateLimitedReporter(
            limit=1, interval=60.0, level="error", summary_event="batch failures suppressed"
        )
        self._retry_delay = BACKOFF_START

    # -- connection and synchronisation -------------------------------------------------

    async def _connection(self, spare: bool = False) -> asyncpg.Connection:
        """Return a live connection, reconnecting with capped backoff while the server is away.

        ``spare`` asks for the second COPY connection of ``run_once`` instead of the main one.
        """
        delay = BACKOFF_START
        while True:
            current = self._spare if spare else self._conn
            if current is not None and not current.is_closed():
                break
            try:
                conn = await db.connect(self.dsn, application_name="puppylogd")
                db.widen_send_buffer(conn)
                try:
                    await db.use_fast_timestamps(conn)
                except BaseException:
                    conn.terminate()
                    raise
                if spare:
                    self._spare = conn
                else:
                    self._conn = conn
            except db.CONNECTION_ERRORS as exc:
                if not self.waiting_for_db:
                    log.warning("waiting for database", path=str(self.path), error=str(exc))
                self.db_wait.set()
                if isinstance(exc, db.ANSWERED_ERRORS):
                    # The server is down or full, not hung: we are alive and retrying.
                    self._on_progress()
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
        if self.waiting_for_db:
            log.info("database is back", path=str(self.path))
            self.db_wait.clear()
        return current

    @property
    def waiting_for_db(self) -> bool:
        """Tell whether the stream is waiting for the database (it is away or full)."""
        return self.db_wait.is_set()

    def _terminate_connections(self) -> None:
        """Forget the current connections (after an error their state is unknown)."""
        for conn in (self._conn, self._spare):
            if conn is not None and not conn.is_closed():
                conn.terminate()
        self._conn = self._spare = None

    def terminate(self) -> None:
        """Close the tailer and drop the connections without a word to the server (it hangs)."""
        self._tailer.close()
        self._terminate_connections()

    async def is_known(self) -> bool:
        """Return whether the database already has a stream for this file on this host."""
        conn = await self._connection()
        key = (self.group_id, self.settings.host, str(self.path))
        return await conn.fetchrow(db.query("stream_owner"), *key) is not None

    async def register(self) -> str:
        """Register the stream, open the tailer at the committed checkpoint; say what happened.

        Raises ``NotRegularFileError`` (an ``OSError``) when the path is a directory, FIFO...
        """
        conn = await self._connection()
        key = (self.group_id, self.settings.host, str(self.path))
        try:
            row = await conn.fetchrow(
                db.query("register_stream"), *key, db.seconds_ahead(self._clock_offset())
            )
        except asyncpg.InsufficientPrivilegeError as exc:
            owner = await conn.fetchrow(db.query("stream_owner"), *key)
            if owner is None or owner["owner"] == owner["me"]:
                raise
            raise StreamOwnedElsewhere(
                f"stream {self.settings.host}:{self.path} (id {owner['id']}) was registered "
                f"by database role {owner['owner']!r}, not {owner['me']!r}: run this daemon "
                f"as that role, or have the schema owner hand it over: UPDATE "
                f"puppylog.log_streams SET owner = '{owner['me']}' WHERE id = {owner['id']}"
            ) from exc
        assert row is not None
        self.stream_id = int(row["id"])
        self._parser = Parser(self.stream_id)
        self._max_ts = row["max_ts"]
        self._committed = position_from_row(row)
        decision = self._tailer.open(self._committed, from_end=self.settings.from_end)
        self._settled = self._tailer.position
        if decision == NOT_REGULAR:
            # An error, retried like an unreadable file, not a file to wait for in silence.
            raise NotRegularFileError(self.path)
        if self._committed is None and decision == "from end":
            # Make the starting point durable at once: a restart (or a rewind after a failed
            # first batch) must resume here, not skip again what was appended meanwhile.
            start = self._tailer.position
            chunk = Chunk(start=start, end=start, lines=[], too_long=[])
            await self._commit(
                Batch(chunk, [], [], None, caught_up=False, file_size=self._tailer.file_size())
            )
        log.info("stream opened", path=str(self.path), stream_id=self.stream_id, how=decision)
        self._warn_of_loss()
        return decision

    def _warn_of_loss(self) -> None:
        """Log at warning level why the tailer may have lost lines, if it may have."""
        warning = self._tailer.take_warning()
        if warning is not None:
            log.warning(warning, path=str(self.path), stream_id=self.stream_id)

    async def _resync(self) -> None:
        """Rewind the tailer to what the database has committed (after any failure)."""
        while True:
            conn = await self._connection()
            try:
                row = await conn.fetchrow(db.query("read_checkpoint"), self.stream_id)
            except db.CONNECTION_ERRORS as exc:
                log.warning(
                    "database lost while resynchronising; reconnecting",
                    path=str(self.path),
                    error=db.lost_reason(exc),
                )
                self._terminate_connections()
                continue
            assert row is not None
            position = position_from_row(row)
            self._max_ts = row["max_ts"]
            self._committed = position
            if position is None:
                # Nothing committed yet (a --from-end start is committed by ``register``):
                # the file appeared after the start, so all of it is new.
                self._tailer.close()
                self._tailer.open(None, from_end=False)
            else:
                self._tailer.rewind(position)
                self._warn_of_loss()  # a rewind to a file it no longer holds opens it again
            self._settled = self._tailer.position
            return

    # -- preparing and committing batches ------------------------------------------------

    async def _prepare(self, chunk: Chunk) -> Batch:
        """Parse a chunk; reject lines outside the retention window or far in the future.

        Parses in slices and yields to the event loop between them, so the COPY of the
        previous batch keeps streaming while this one is parsed: the daemon parses on one
        core while PostgreSQL stores on the other, instead of taking turns.
        """
        if chunk.event:
            self._warn_of_loss()  # e.g. truncated while being read, and no copy found
        # Where the reader stood when the chunk was read, before any yield: a batch's
        # watermark must not cover lines appended while it was being parsed.
        now = datetime.now(UTC)
        caught_up = self._tailer.at_eof()
        file_size = self._tailer.file_size()
        retention = self.settings.retention_days
        self._parser.set_bounds(
            now - timedelta(days=retention) if retention else None, now + FUTURE_LIMIT
        )
        rows: list[RecordRow] = []
        rejected: list[Rejected] = []
        lines = chunk.lines
        for start in range(0, len(lines), PARSE_SLICE):
            if start:
                await asyncio.sleep(0)
            got, bad = self._parser.parse_many(lines[start : start + PARSE_SLICE])
            rows += got
            rejected += bad
        for raw in chunk.too_long:
            rejected.append(
                Rejected(
                    reason="line too long",
                    detail=f"over {self.settings.max_line_bytes} bytes",
                    line=raw,
                )
            )
        min_ts, max_ts, days = split_by_day(rows)
        return Batch(
            chunk=chunk,
            rows=rows,
            rejected=rejected,
            max_ts=max_ts,
            min_ts=min_ts,
            caught_up=caught_up,
            file_size=file_size,
            days=days,
            read_at=now,
        )

    def _watermark(
        self, max_ts: datetime | None, caught_up: bool, now: datetime | None = None
    ) -> datetime | None:
        """Event time before which this stream is complete (see README, time semantics).

        Lines up to ``lateness`` out of order are waited for; while the stream is caught up
        (live, at end of file) time also advances with the wall clock, so quiet time counts
        as zero traffic. It never passes the wall clock (minus ``lateness``), whatever the
        timestamps say.
        """
        wall = (now or datetime.now(UTC)).replace(microsecond=0) - self._lateness
        data = max_ts - self._lateness if max_ts is not None else None
        if data is not None and data > wall:
            data = wall  # never ahead of the wall clock: a fast clock cannot close our seconds
        if caught_up and not self.settings.once:
            return wall if data is None else max(data, wall)
        return data

    async def _ensure_partitions(self, conn: asyncpg.Connection, batch: Batch) -> None:
        """Make sure the batch's day partitions exist (with their rollup trigger and grants)."""
        for day, _ in batch.days:
            if day not in self._known_days:
                await conn.execute(db.query("ensure_partitions"), day, day)
                self._known_days.add(day)

    async def _commit(
        self,
        batch: Batch,
        spare: bool = False,
        previous: asyncio.Task[None] | None = None,
        progress: Progress | None = None,
    ) -> None:
        """Store a batch and move the checkpoint over it, atomically.

        With ``previous`` (the commit of the batch before, on the other connection), the
        rows are copied at once but the checkpoint only moves once ``previous`` committed.
        """
        progress = progress or Progress()
        conn = await self._connection(spare)
        if previous is not None and any(day not in self._known_days for day, _ in batch.days):
            # Making a partition locks the parent table, which the transaction before may
            # still read (closing a bucket): let it end first rather than deadlock.
            await asyncio.wait({previous})
        await self._ensure_partitions(conn, batch)
        try:
            await self._guarded(conn, self._write(conn, batch, previous, progress))
        except asyncpg.UndefinedTableError:
            # A partition this daemon knew of is gone (dropped by hand, or by retention
            # while a late line for that day was in flight): make it again, once.
            self._known_days.difference_update(day for day, _ in batch.days)
            await self._ensure_partitions(conn, batch)
            await self._guarded(conn, self._write(conn, batch, previous, progress))

    async def _guarded(self, conn: asyncpg.Connection, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` on ``conn``; give up as soon as the connection is seen closed.

        A backend terminated in the middle of a COPY can leave asyncpg waiting forever on a
        closed connection; the batch then counts as failed (rewind to the checkpoint).
        """
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=CONN_CHECK_SECONDS)
                if done:
                    task.result()
                    return
                if conn.is_closed():
                    raise asyncpg.ConnectionDoesNotExistError(
                        "connection closed while a batch was being written"
                    )
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=CONN_CHECK_SECONDS)
            if not task.done():
                # A hung server: its ROLLBACK waits. The connection is of no more use (the
                # next statement would find it busy), and ending it ends the task.
                conn.terminate()
            # Its outcome is the caller's already, or of no interest.
            task.add_done_callback(db.claim_outcome)

    async def _write(
        self,
        conn: asyncpg.Connection,
        batch: Batch,
        previous: asyncio.Task[None] | None,
        progress: Progress,
    ) -> None:
        """Run the batch's transaction: COPY rows, COPY rejects, compare-and-set checkpoint."""
        start, end = batch.chunk.start, batch.chunk.end
        async with conn.transaction():
            progress.sending.set()
            for day, rows in batch.days:
                await db.copy_records(conn, partition_of(day), rows, columns=COLUMNS)
            progress.copied.set()
            if previous is not None:
                await asyncio.wait({previous})
                if previous.cancelled() or previous.exception() is not None:
                    raise PreviousBatchFailed(
                        f"batch at {start.inode}:{start.offset} follows one that failed"
                    )
            committed = self._committed
            if committed is not None and (start.inode, start.offset) != (
                committed.inode,
                committed.offset,
            ):
                # The reader is not where the database is: never skip or repeat, rewind.
                raise CheckpointConflict(
                    f"batch starts at {start.inode}:{start.offset}, "
                    f"checkpoint is at {committed.inode}:{committed.offset}"
                )
            max_ts = self._max_ts
            if batch.max_ts is not None:
                max_ts = batch.max_ts if max_ts is None else max(max_ts, batch.max_ts)
            watermark = self._watermark(max_ts, batch.caught_up, batch.read_at)
            if batch.rejected:
                await db.copy_records(
                    conn,
                    "rejected_lines",
                    [(self.stream_id, r.reason, r.detail, r.line) for r in batch.rejected],
                    columns=REJECTED_COLUMNS,
                )
            moved = await conn.fetchrow(
                db.query("commit_checkpoint"),
                self.stream_id,
                committed.inode if committed is not None else None,
                committed.offset if committed is not None else 0,
                end.dev or None,
                end.inode or None,
                end.offset,
                end.fp_len,
                end.fingerprint,
                len(batch.rows),
                len(batch.rejected),
                batch.max_ts,
                watermark,
                batch.file_size,
                batch.caught_up,
            )
            if moved is None:
                raise CheckpointConflict(
                    f"checkpoint of stream {self.stream_id} is not at {start.inode}:{start.offset}"
                )
            closed = moved["closed_through"]
            late = 0
            if closed is not None and batch.min_ts is not None and batch.min_ts < closed + SECOND:
                late = sum(1 for r in batch.rows if r[0] < closed + SECOND)
                # In this transaction, so the console's count is exact: only a batch with
                # late rows pays for the statement.
                await conn.execute(db.query("count_late"), self.stream_id, late)
        self._max_ts = max_ts
        self._committed = end if end.inode else None
        self._settled = end
        self._tailer.committed(end)
        self.stats.stored += len(batch.rows)
        self.stats.rejected += len(batch.rejected)
        if late:
            self._note_late(late, closed)
        self._say_late_when_due()
        self.stats.batches += 1
        self._retry_delay = BACKOFF_START
        if batch.file_size is not None:
            self.stats.lag_bytes = max(0, batch.file_size - end.offset)
        self.stats.last_progress = time.monotonic()
        self._on_progress()
        for rejected in batch.rejected:
            self._on_rejected(self.path, rejected)

    def _note_late(self, lines: int, closed_through: datetime) -> None:
        """Count rows stored after their second closed (said by ``_say_late_when_due``)."""
        self.stats.late += lines
        self._late_unsaid += lines
        self._late_closed = closed_through

    def _say_late_when_due(self) -> None:
        """Say the late rows not yet said, at most once a minute (the first at once)."""
        if self._late_unsaid and time.monotonic() - self._late_said_at >= LATE_REPORT_SECONDS:
            self._say_late()

    def _say_late(self) -> None:
        """Log the late rows not yet said (a warning: they are missing from the alerts)."""
        if self._late_unsaid:
            log.warning(
                "lines arrived after the group closed their second: stored and in the rollups, "
                "but not in the alert decisions or the published buckets (a stream back after "
                "its heartbeat timeout, a file loaded after newer ones, a clock set back, or "
                "lines written longer after their timestamp than --lateness-seconds allows)",
                path=str(self.path),
                stream_id=self.stream_id,
                lines=self._late_unsaid,
                closed_through=self._late_closed.isoformat() if self._late_closed else None,
                lateness_s=self.settings.lateness_seconds,
            )
        self._late_unsaid = 0
        self._late_said_at = time.monotonic()

    async def _heartbeat(self, watermark: datetime | None = None) -> None:
        """Tell the database this stream is alive and how far its time has got."""
        conn = await self._connection()
        # Caught up only if what was read is also stored: the reader may have read to the
        # end a chunk that is still being parsed (a backlog after an outage, say), and the
        # wall clock must not close the seconds of its lines before they are in.
        caught_up = self._tailer.position == self._settled and (
            self._tailer.at_eof() or self._tailer.file_size() is None
        )
        wm = watermark if watermark is not None else self._watermark(self._max_ts, caught_up)
        await conn.execute(
            db.query("heartbeat"), self.stream_id, wm, self._tailer.file_size(), caught_up
        )
        self.stats.last_progress = time.monotonic()
        self._on_progress()
        self._say_late_when_due()  # late rows counted before the stream went quiet

    # -- the loops ------------------------------------------------------------------------

    async def _produce(self, queue: asyncio.Queue[Batch]) -> None:
        """Read and parse ahead while the previous batch is being committed (uses both cores)."""
        wait = self.settings.batch_ms / 1000
        while True:
            chunk = await self._tailer.next_chunk(self.settings.batch_lines, wait)
            if chunk.event:
                log.info("file event", path=str(self.path), event_=chunk.event)
            await queue.put(await self._prepare(chunk))

    async def _handle_failure(self, exc: BaseException) -> None:
        """Log a failed commit, wait a little, then rewind to the committed checkpoint."""
        if isinstance(exc, CheckpointConflict):
            # Two daemons on one stream collide on every batch: say it, not flood with it.
            self._conflicts.report(
                log,
                "checkpoint moved by someone else; is another puppylogd tailing this file "
                "with the same group and host?",
                path=str(self.path),
                error=str(exc),
            )
        elif isinstance(exc, db.CONNECTION_ERRORS):
            log.warning(
                "database connection lost; reconnecting, then going on from the last stored line",
                path=str(self.path),
                error=db.lost_reason(exc),
            )
        else:
            self._failures.report(
                log, "batch failed; will retry", path=str(self.path), error=repr(exc)
            )
        self._terminate_connections()
        if isinstance(exc, db.CONNECTION_ERRORS):
            delay = BACKOFF_START  # reconnecting backs off by itself
        else:
            delay = self._retry_delay
            self._retry_delay = min(delay * 2, BACKOFF_MAX)
        await asyncio.sleep(delay)
        await self._resync()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the file until ``stop`` is set; then commit what is in hand and return."""
        while not stop.is_set():
            queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=2)
            producer = asyncio.create_task(self._produce(queue), name=f"read:{self.path}")
            stopper = asyncio.create_task(stop.wait(), name=f"stop-wait:{self.path}")
            failed = False
            try:
                while not stop.is_set():
                    getter = asyncio.create_task(queue.get(), name=f"next-batch:{self.path}")
                    done, _ = await asyncio.wait(
                        {getter, producer, stopper},
                        timeout=_until_next_second(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if producer in done:
                        getter.cancel()
                        producer.result()  # re-raise: a reader crash ends the daemon
                    if getter not in done:
                        getter.cancel()
                        if not stop.is_set():
                            await self._heartbeat()
                        continue
                    await self._commit(getter.result())
                await self._flush_on_stop(producer, queue)
            except FAILURES as exc:
                failed = True
                # Stop reading ahead before rewinding, so the tailer is not moved under it.
                producer.cancel()
                await asyncio.gather(producer, return_exceptions=True)
                await self._handle_failure(exc)
            finally:
                producer.cancel()
                stopper.cancel()
                await asyncio.gather(producer, stopper, return_exceptions=True)
            if not failed:
                return

    async def _flush_on_stop(
        self, producer: asyncio.Task[None], queue: asyncio.Queue[Batch]
    ) -> None:
        """Commit what was read before the stop: queued batches, then the lines in hand.

        The reader may have been cancelled while handing a batch to the full queue, so read
        again from the committed checkpoint (a few batches at most) rather than trust that
        every batch it made reached the queue.
        """
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
        while not queue.empty():
            await self._commit(queue.get_nowait())
        if self._committed is not None:
            self._tailer.rewind(self._committed)
            self._settled = self._tailer.position
        # Queue size + the batch being handed over + the one gathering: all that was read.
        for _ in range(queue.maxsize + 2):
            chunk = self._tailer.read_available(self.settings.batch_lines)
            if chunk is None:
                break
            await self._commit(await self._prepare(chunk))

    def _warn_unterminated(self) -> None:
        """Say so when the file ends in a line without its newline (left for a later run)."""
        size = self._tailer.file_size()
        left = 0 if size is None else size - self._tailer.position.offset
        if left > 0:
            # It may be half-written: storing it now could store half a line.
            log.warning(
                "the file ends in a line without a newline: not stored; the next run (or a "
                "live daemon) stores it once its newline is written",
                path=str(self.path),
                bytes=left,
            )

    async def run_once(self, connections: int = 2, stop: asyncio.Event | None = None) -> None:
        """Store what the file holds now, close its time at its last timestamp, and return.

        Once ``stop`` is set no further batch starts: the batches in flight are committed
        and it returns, its time left where the stored lines put it (not closed at the
        end of the file, which was not reached); a later run goes on from the checkpoint.

        Two connections take turns: a batch's rows are copied on one while the batch before
        finishes on the other (its rejects, its checkpoint, the group's evaluation and the
        commit), so PostgreSQL works on both cores. A batch starts copying only once the
        one before has stored all its rows (and so run its rollup trigger): the earlier
        transaction then never waits for a row the later one holds, while the later one may
        wait for the earlier, and its checkpoint moves only after the earlier committed.
        With ``connections=1`` (the server has no room for two per file) batches go one
        after the other on the main connection.
        """
        if connections not in (1, 2):
            raise ValueError(f"run_once takes 1 or 2 connections, not {connections}")
        stop = stop or asyncio.Event()
        while True:
            # In flight, oldest first (at most one per connection).
            commits: list[tuple[asyncio.Task[None], Progress]] = []
            committing: Batch | None = None
            try:
                spare = False
                chunk = self._tailer.read_available(self.settings.batch_lines)
                while chunk is not None and not stop.is_set():
                    # Parse the next batch while PostgreSQL stores the previous ones (the
                    # parse yields between slices, so the commits keep going).
                    batch = await self._prepare(chunk)
                    # Read the one after too before waiting: once a connection is free, the
                    # next commit must start at once, not after a read.
                    chunk = self._tailer.read_available(self.settings.batch_lines)
                    previous: asyncio.Task[None] | None = None
                    if commits:
                        previous, previous_progress = commits[-1]
                        await self._until(previous_progress.copied, previous)
                    if len(commits) == connections:
                        # Its connection is the one this batch is about to use.
                        await commits[0][0]
                        del commits[0]
                    progress = Progress()
                    task = asyncio.create_task(
                        self._commit(batch, spare, previous, progress), name=f"commit:{self.path}"
                    )
                    commits.append((task, progress))
                    spare = connections == 2 and not spare
                    # Let it put its rows on the wire before parsing on: its BEGIN and COPY
                    # round trips are answered at once, but a parsing daemon reads each
                    # answer only after its current slice, and PostgreSQL waits meanwhile.
                    await self._until(progress.sending, task)
                    # Release the batch stored before this one here, not as its commit
                    # ends: freeing its objects takes milliseconds, better spent while
                    # PostgreSQL is busy with this one than while it waits for it.
                    stored, committing = committing, batch
                    del stored
                while commits:
                    await commits[0][0]
                    del commits[0]
                if stop.is_set():
                    await self._heartbeat()
                    return
                self._warn_unterminated()
                # Time stops at the last timestamp: close that second too (but never a
                # second the wall clock has not reached: a fast clock must not close it).
                final = self._max_ts + timedelta(seconds=1) if self._max_ts else None
                if final is not None:
                    final = min(final, datetime.now(UTC).replace(microsecond=0))
                await self._heartbeat(final)
                return
            except FAILURES as exc:
                await self._abandon(commits)
                if stop.is_set():
                    # Not retried: a later run reads it again from the checkpoint.
                    log.warning(
                        "stopped with a batch not stored; it is read again at the next start",
                        path=str(self.path),
                        error=db.lost_reason(exc)
                        if isinstance(exc, db.CONNECTION_ERRORS)
                        else str(exc),
                    )
                    return
                await self._handle_failure(exc)
            except BaseException:
                # Cancelled (a stop that could wait no longer): the commits in flight must
                # not outlive it, to fail later on a closed connection with no one to hear.
                await self._abandon(commits)
                raise

    @staticmethod
    async def _abandon(commits: list[tuple[asyncio.Task[None], Progress]]) -> None:
        """Cancel the commits in flight and wait until they have ended; drop their outcome."""
        for task, _ in commits:
            task.add_done_callback(db.claim_outcome)
            task.cancel()
        await asyncio.gather(*(task for task, _ in commits), return_exceptions=True)

    async def _until(self, event: asyncio.Event, task: asyncio.Task[None]) -> None:
        """Wait until ``event`` is set or the commit ``task`` has ended, whichever is first."""
        if event.is_set() or task.done():
            return
        waiter = asyncio.create_task(event.wait(), name=f"commit-progress:{self.path}")
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)

    async def mark_stopped(self) -> None:
        """Record a clean exit so this stream stops holding the group's time back."""
        if self.stream_id and self._conn is not None and not self._conn.is_closed():
            try:
                await self._conn.execute(db.query("mark_stopped"), self.stream_id)
            except db.DB_ERRORS as exc:
                log.warning("could not mark stream stopped", error=str(exc))

    async def close(self) -> None:
        """Close the tailer and the connections."""
        self._conflicts.flush()
        self._say_late()
        self._failures.flush()
        self._tailer.close()
        conns, self._conn, self._spare = (self._conn, self._spare), None, None
        for conn in conns:
            if conn is not None and not conn.is_closed():
                await conn.close()
