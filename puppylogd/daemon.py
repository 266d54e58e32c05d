"""Run puppylogd: database, migrations, one ingest task per file, status, signals, watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import structlog

from puppylogd import db, launch
from puppylogd.config import Settings
from puppylogd.embedded import Cluster, EmbeddedError
from puppylogd.ingest import StreamIngest
from puppylogd.logs import RateLimitedReporter, mask_dsn
from puppylogd.migrations import apply_migrations
from puppylogd.parser import Rejected
from puppylogd.systemd import Systemd, get_systemd
from puppylogd.tailer import NOT_REGULAR, NotRegularFileError

log = structlog.get_logger("puppylogd")

T = TypeVar("T")

STATUS_SECONDS = 5.0
HOUSEKEEPING_SECONDS = 3600.0
# Stopping against a hung server must end before systemd's TimeoutStopSec=30 (then SIGKILL):
# the streams' last commits get STOP_GRACE_SECONDS, then marking them stopped and closing the
# daemon's own connection CLOSE_SECONDS each, 16 s in all.
STOP_GRACE_SECONDS = 10.0
CLOSE_SECONDS = 3.0
# How long a stopped --once may take to commit the batches in flight before it is cancelled
# (then its streams close as in run, CLOSE_SECONDS each).
STOP_ONCE_SECONDS = 10.0
# How often a log file that cannot be opened (permissions, symlink loop...) is tried again.
REOPEN_SECONDS = 5.0
WAITING_FOR_DB = "waiting for database"
# Delays while registering a stream at start-up fails on the database.
REGISTER_RETRY_START = 0.25
REGISTER_RETRY_MAX = 5.0


CLOSE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *db.DB_ERRORS)

# This host's clock differing from the database's by more than this is warned of: a record
# counts at its host's timestamp, so hosts whose clocks disagree shift their traffic against
# each other's, and a slow one holds the whole group's stats and alerts back.
CLOCK_SKEW_WARN = timedelta(seconds=5)


def clock_warning(offset: timedelta) -> str | None:
    """Return what to tell the operator of a clock ``offset`` behind the database's, if anything."""
    if abs(offset) <= CLOCK_SKEW_WARN:
        return None
    seconds = round(abs(offset.total_seconds()))
    if offset > timedelta(0):
        return (
            f"this host's clock is {seconds} s behind the database's: its lines are dated "
            f"{seconds} s before they happened and the group's stats and alerts wait for them, "
            f"{seconds} s behind, for every host of the group; set the clock right (NTP)"
        )
    return (
        f"this host's clock is {seconds} s ahead of the database's: its lines are dated "
        f"{seconds} s after they happened and count when the group's time, which follows the "
        "database's clock, gets there; set the clock right (NTP)"
    )


def is_file_error(exc: BaseException) -> bool:
    """Return whether ``exc`` is about a log file (not the database connection)."""
    return isinstance(exc, OSError) and not isinstance(exc, ConnectionError | TimeoutError)


def _missing(path: Path) -> bool:
    """Return whether nothing is at ``path`` (other errors are left to the tailer to report)."""
    try:
        path.stat()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


class DaemonError(Exception):
    """A failure that ends the daemon with a clear message (and a non-zero exit)."""


def embedded_max_connections(files: int) -> int:
    """Return ``max_connections`` for an embedded server started for ``files`` log files.

    Room for the daemon's connection per file (two with ``--once``), a ``--once`` run beside
    it, files added on reload, and watch clients; never below PostgreSQL's default.
    """
    return max(100, 3 * files + 20)


def connections_per_file(files: int, once: bool, budget: db.ConnectionBudget) -> int:
    """Return how many connections each file's stream may use (two only for ``--once``).

    A stream holds one connection (``--once`` a second, for speed, when the server has room
    for it now). Raises DaemonError with the limit to raise when the files cannot all have one:
    ever, or, for ``--once``, given the sessions connected now.
    """
    if files > budget.at_most:
        raise DaemonError(
            f"{files} log files need {files} database connections besides the daemon's own "
            f"(one per file), but the server allows at most {budget.at_most} more "
            f"({budget.limit}): raise that limit, or split the files over several daemons"
        )
    if not once:
        return 1
    if files > budget.now:
        raise DaemonError(
            f"--once over {files} log files needs {files} free database connections, but only "
            f"{budget.now} are free now ({budget.limit}; other sessions hold the rest)"
        )
    return 2 if 2 * files <= budget.now else 1


async def open_embedded(settings: Settings) -> tuple[Cluster, str, bool]:
    """Start (or reuse) the embedded PostgreSQL under the state directory; return its DSN."""
    try:
        cluster = Cluster(
            settings.state_dir, max_connections=embedded_max_connections(len(settings.log_files))
        )
        was_running = await asyncio.to_thread(cluster.is_running)
        await asyncio.to_thread(cluster.init)
    except OSError as exc:
        # e.g. a state directory under a file, or where this user may not create it.
        where = f" ({exc.filename})" if exc.filename else ""
        raise EmbeddedError(
            f"cannot use the state directory {settings.state_dir}: {exc.strerror or exc}{where} "
            "(set --state-dir / PUPPYLOG_STATE_DIR, or give a DSN)"
        ) from exc
    # Claimed before starting: a second puppylogd that comes now must not adopt it.
    owner = await asyncio.to_thread(cluster.claim)
    if not was_running:
        await asyncio.to_thread(cluster.start)
    elif owner:
        log.warning(
            "the embedded database was left running by a puppylogd that is gone: adopting "
            "it (this process stops it when it ends)",
            state_dir=str(settings.state_dir),
        )
    await cluster.ensure_database("puppylog")
    return cluster, cluster.dsn(), owner or not was_running


async def connect_with_retry(
    dsn: str,
    systemd: Systemd,
    stop: asyncio.Event,
    *,
    application_name: str = "puppylogd",
    on_wait: Callable[[BaseException], None] = lambda _exc: None,
    max_delay: float = 10.0,
    source: str = "--dsn / PUPPYLOG_DSN",
) -> asyncpg.Connection | None:
    """Connect, waiting (and saying so) while the database is unreachable; None if stopped.

    ``on_wait`` is called with the error of every attempt that failed and will be retried;
    attempts are at most ``max_delay`` seconds apart. ``source`` says where the DSN was set.
    """
    delay = 0.25
    warned = False
    while not stop.is_set():
        try:
            return await db.connect(dsn, application_name=application_name)
        except db.CONNECTION_ERRORS as exc:
            on_wait(exc)
            if not warned:
                log.warning("waiting for database", dsn=mask_dsn(dsn), error=str(exc))
                systemd.status(WAITING_FOR_DB)
                warned = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(delay * 2, max_delay)
        except asyncpg.PostgresError as exc:
            # The server answered and refused (no such database or role, a wrong password,
            # pg_hba.conf): retrying cannot help until the setting is fixed.
            raise DaemonError(f"cannot connect to {mask_dsn(dsn)}: {exc} (check {source})") from exc
    return None


class Daemon:
    """Everything one puppylogd process does, from start to clean stop."""

    def __init__(self, settings: Settings, reload: Callable[[], Settings] | None = None) -> None:
        self.settings = settings
        self._reload = reload
        self.systemd = get_systemd()
        self.stop = asyncio.Event()
        self.streams: dict[Path, tuple[StreamIngest, asyncio.Event, asyncio.Task[None]]] = {}
        self.group_id = 0
        self.dsn = ""
        self.cluster: Cluster | None = None
        self._own_cluster = False
        # Connections per stream in --once (see connections_per_file).
        self._once_connections = 2
        self._control: asyncpg.Connection | None = None
        # This host's clock against the database's, as last measured (see _check_clock).
        self._clock_offset: timedelta | None = None
        self._rejects = RateLimitedReporter()
        self._rejected_reasons: Counter[str] = Counter()
        self._last_progress = time.monotonic()
        self._partition_days: set[date] = set()
        # Wakes the supervisor when reload adds or removes streams, so it watches them all.
        self._streams_changed = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._reload_tasks: set[asyncio.Task[None]] = set()
        # Applies a reload's alert settings once the database is back (see reload).
        self._group_retry: asyncio.Task[None] | None = None
        self._ready_sent = False
        # The start waits for the daemon's own connection to the database.
        self._start_waiting = False
        # The start has registered the group and started the streams (see reload).
        self._started = False
        self._reload_deferred = False
        # The group's alert rule as this daemon last applied it (see _register_group).
        self._group_rule: dict[str, Any] | None = None
        # The first SIGTERM/SIGINT received (--once then exits 128 + its number).
        self._stop_signal: signal.Signals | None = None

    # -- callbacks --------------------------------------------------------------------

    def _progress(self) -> None:
        self._last_progress = time.monotonic()

    def _rejected(self, path: Path, rejected: Rejected) -> None:
        self._rejected_reasons[rejected.reason] += 1
        self._rejects.report(
            log,
            "rejected line",
            rate_key=str(path),
            path=str(path),
            reason=rejected.reason,
            detail=rejected.detail,
            line=rejected.line[:200].decode("utf-8", "backslashreplace"),
        )

    # -- start ------------------------------------------------------------------------

    async def _prepare_database(self) -> bool:
        """Find or start the database, migrate it and register the group; False if stopped."""
        dsn = self.settings.resolved_dsn()
        if dsn is None:
            self.systemd.status("starting embedded database")
            self.cluster, dsn, self._own_cluster = await open_embedded(self.settings)
            log.info("embedded database", state_dir=str(self.settings.state_dir))
        self.dsn = dsn
        delay = REGISTER_RETRY_START
        while True:
            self._control = await connect_with_retry(
                dsn,
                self.systemd,
                self.stop,
                on_wait=self._waiting_at_start,
                # Each failed attempt counts as progress: often enough to feed the watchdog.
                max_delay=self._reopen_seconds(),
                source=self.settings.dsn_source(),
            )
            self._start_waiting = False
            if self._control is None:
                return False
            try:
                await self._set_up_database()
                return True
            except db.CONNECTION_ERRORS as exc:
                if is_file_error(exc):
                    raise  # e.g. a migration file that cannot be read
                # The server ended the session (a restart, pg_terminate_backend): what was
                # done is done (each migration is one transaction), the rest is done again.
                log.warning(
                    "database connection lost while starting; reconnecting",
                    error=db.lost_reason(exc),
                )
                self._control.terminate()
                self._control = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=delay)
            delay = min(delay * 2, REGISTER_RETRY_MAX)

    async def _set_up_database(self) -> None:
        """Migrate the database, register the group, check the clock and the connections."""
        assert self._control is not None
        applied = await apply_migrations(self._control)
        if applied:
            log.info("migrations applied", migrations=applied)
        try:
            await self._register_group()
            await self._housekeeping_once()
            await self._check_connection_budget()
        except asyncpg.InsufficientPrivilegeError as exc:
            # A reader's role, or a login role not yet given the writer's: restarting
            # cannot help, so one line with the grant rather than a traceback.
            role, _ = await db.session_role(self._control)
            raise DaemonError(
                f"role {role} may not write to schema puppylog ({exc}): "
                f"GRANT puppylog_writer TO {role}"
            ) from exc

    def _waiting_at_start(self, exc: BaseException) -> None:
        self._start_waiting = True
        if isinstance(exc, db.ANSWERED_ERRORS):
            # Down or starting, not hung: the daemon is alive and retrying (watchdog).
            self._progress()

    async def _check_connection_budget(self) -> None:
        """Refuse to start when the server cannot give every file its connection."""
        assert self._control is not None
        budget = await db.connection_budget(self._control)
        files = len(self.settings.log_files)
        try:
            per_file = connections_per_file(files, self.settings.once, budget)
        except DaemonError as exc:
            if self.cluster is not None and not self._own_cluster:
                # Its max_connections was set by whoever started it, for their files.
                raise DaemonError(
                    f"{exc} (the running embedded database was started for fewer files: stop "
                    "the puppylogd that runs it, and this one starts it with room for its own)"
                ) from exc
            raise
        if self.settings.once:
            self._once_connections = per_file
            if per_file == 1:
                log.info(
                    "once: one connection per file (no free connections for two)",
                    files=files,
                    free=budget.now,
                )
        elif files > budget.now:
            log.warning(
                "not enough free database connections for every file now; "
                "the streams that cannot connect retry",
                files=files,
                free=budget.now,
                limit=budget.limit,
            )

    async def _register_group(self) -> None:
        """Create the group and apply this daemon's alert settings to it."""
        assert self._control is not None
        s = self.settings
        mine = {
            "threshold": s.threshold,
            "recovery_threshold": s.recovery_threshold,
            "window_s": s.window_seconds,
            "heartbeat_timeout_s": s.heartbeat_timeout_seconds,
        }
        row = await self._control.fetchrow(db.query("register_group"), s.group, *mine.values())
        assert row is not None
        self.group_id = row["id"]
        changed = {k: [row[k], v] for k, v in mine.items() if row["existed"] and row[k] != v}
        # A reload changing the rule this daemon set itself is no conflict (it is logged
        # as "configuration reloaded").
        own = self._group_rule is not None and all(row[k] == self._group_rule[k] for k in mine)
        self._group_rule = mine
        if changed and not own:
            # Every daemon of a group applies its settings at start and reload, so daemons
            # configured differently overwrite each other's in turn: say so, or the alert
            # rule changes with whichever host restarted last and nobody knows why.
            log.warning(
                "this daemon changed the group's alert settings (the last daemon to start or "
                "reload sets them: give every daemon of the group the same)",
                group=s.group,
                host=s.host,
                changed={k: f"{old} -> {new}" for k, (old, new) in changed.items()},
            )

    async def _housekeeping_once(self) -> None:
        """Create partitions ahead (today and the next two days) and apply retention."""
        assert self._control is not None
        today = datetime.now(UTC).date()
        await self._control.execute(
            db.query("ensure_partitions"), today - timedelta(days=1), today + timedelta(days=2)
        )
        await self._check_clock()
        if self.settings.retention_days:
            cutoff = datetime.now(UTC) - timedelta(days=self.settings.retention_days)
            dropped = await self._control.fetchval(db.query("apply_retention"), cutoff)
            if dropped:
                log.info("old partitions dropped", count=dropped, before=cutoff.isoformat())

    async def _check_clock(self) -> None:
        """Measure this host's clock against the database's; store it; warn when they differ.

        Stored on the streams for the console: on those registered now, and by the others
        when they register. The warning names this host and its files.
        """
        assert self._control is not None
        offset = await db.clock_offset(self._control)
        self._clock_offset = offset  # for the streams that register later
        registered = [i.stream_id for i, _, _ in self.streams.values() if i.stream_id]
        if registered:
            await db.record_clock_offset(self._control, registered, offset)
        warning = clock_warning(offset)
        if warning is not None:
            log.warning(
                warning,
                host=self.settings.host,
                group=self.settings.group,
                files=[str(p) for p in self.settings.log_files],
                offset_s=round(offset.total_seconds(), 1),
            )

    def _new_ingest(self, path: Path) -> StreamIngest:
        """Return the (not yet registered) stream of ``path`` with this daemon's callbacks."""
        return StreamIngest(
            self.settings,
            self.dsn,
            path,
            self.group_id,
            on_progress=self._progress,
            on_rejected=self._rejected,
            clock_offset=lambda: self._clock_offset,
        )

    async def _start_stream(self, path: Path) -> None:
        """Register one file's stream and start following it in its own named task.

        The tailer is open when this returns, unless the file cannot be opened (permissions,
        a symlink loop...): that is logged as an error and retried every few seconds in the
        stream's task, while the other files carry on. A missing file is simply waited for.
        Registering that has to wait for the database (the server away, every connection
        slot taken) goes on in the stream's task, so that neither the other files nor the
        start or reload wait for it.
        """
        ingest = self._new_ingest(path)
        registering = asyncio.create_task(self._register(ingest), name=f"register:{path}")
        waiting = asyncio.create_task(ingest.db_wait.wait(), name=f"register:{path}:db-wait")
        try:
            await asyncio.wait({registering, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        stop = asyncio.Event()
        task = asyncio.create_task(
            self._run_stream(ingest, stop, registering), name=f"ingest:{path}"
        )
        self.streams[path] = (ingest, stop, task)
        self._streams_changed.set()

    async def _register(self, ingest: StreamIngest) -> str | None:
        """Register the stream and open its file; return what the tailer found at the path.

        None (logged) if the file cannot be opened. Database errors are retried (the database
        was reachable a moment ago) until stop. A stop also ends the wait for a connection
        (the server gone, or every slot taken): None, and the stream's task ends as soon as
        it starts.
        """
        delay = REGISTER_RETRY_START
        while True:
            try:
                decision = await self._unless_stopped(
                    ingest.register(), name=f"register:{ingest.path}"
                )
            except db.DB_ERRORS as exc:
                if is_file_error(exc):
                    await self._file_failed(ingest, exc)
                    return None
                if self.stop.is_set():
                    raise
                log.warning(
                    "could not register stream; retrying", path=str(ingest.path), error=str(exc)
                )
                await ingest.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=delay)
                delay = min(delay * 2, REGISTER_RETRY_MAX)
                continue
            if decision == "waiting for file":
                # Followed from the moment it appears; a mistyped path must not wait unnoticed.
                log.warning("log file does not exist yet; waiting for it", path=str(ingest.path))
            return decision

    async def _unless_stopped(self, work: Coroutine[Any, Any, T], name: str) -> T | None:
        """Return what ``work`` returns (its exception propagates), or None once stopped."""
        task = asyncio.create_task(work, name=name)
        stopper = asyncio.create_task(self.stop.wait(), name=f"{name}:stop-wait")
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(stopper, task, return_exceptions=True)
        return None if task.cancelled() else task.result()

    async def _file_failed(self, ingest: StreamIngest, exc: BaseException) -> None:
        log.error(
            "cannot open log file; other files carry on, retrying",
            path=str(ingest.path),
            error=str(exc),
            retry_s=self._reopen_seconds(),
        )
        # The database part of registering worked: that was a finished round trip. The
        # stream must not hold the group's time back while its file is unreadable.
        self._progress()
        await ingest.mark_stopped()

    def _reopen_seconds(self) -> float:
        period = self.systemd.watchdog_period()
        return min(REOPEN_SECONDS, period / 3) if period else REOPEN_SECONDS

    async def _reopen(self, ingest: StreamIngest, stop: asyncio.Event) -> bool:
        """Retry opening an unreadable file until it works (True) or stop is set (False)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._reopen_seconds())
            if stop.is_set():
                break
            try:
                await ingest.register()
            except db.DB_ERRORS as exc:
                if is_file_error(exc):
                    self._progress()
                    await ingest.mark_stopped()
                    log.debug(
                        "log file still cannot be opened", path=str(ingest.path), error=str(exc)
                    )
                else:
                    log.warning(
                        "could not register stream; retrying", path=str(ingest.path), error=str(exc)
                    )
                    await ingest.close()
                continue
            log.info("log file can be opened now", path=str(ingest.path))
            return True
        return False

    async def _run_stream(
        self, ingest: StreamIngest, stop: asyncio.Event, registering: asyncio.Task[str | None]
    ) -> None:
        try:
            decision = await registering
            if decision is not None or await self._reopen(ingest, stop):
                await ingest.run(stop)
        finally:
            await self._close_stream(ingest)

    @staticmethod
    async def _close_stream(ingest: StreamIngest) -> None:
        """Mark the stream stopped and close it; a hung server gets a bounded time for each."""
        try:
            await asyncio.wait_for(ingest.mark_stopped(), timeout=CLOSE_SECONDS)
            await asyncio.wait_for(ingest.close(), timeout=CLOSE_SECONDS)
        except TimeoutError:
            log.warning("closing the stream's connection timed out", path=str(ingest.path))
            ingest.terminate()

    # -- periodic work ----------------------------------------------------------------

    async def _status_loop(self) -> None:
        """Keep STATUS= current and ping the watchdog while the ingest makes real progress."""
        period = self.systemd.watchdog_period()
        interval = min(STATUS_SECONDS, period / 2) if period else STATUS_SECONDS
        last_stored = self._stored()
        last_time = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            stored = self._stored()
            rate = (stored - last_stored) / max(now - last_time, 1e-6)
            last_stored, last_time = stored, now
            stalled = now - self._last_progress
            healthy = stalled < (period if period is not None else 2 * STATUS_SECONDS)
            text = self._status_text(rate)
            if not self._ready_sent:
                if text == WAITING_FOR_DB:
                    # A start that waits for the database is not a start that hangs: without
                    # READY, systemd would fail it after TimeoutStartSec, restart it in a loop
                    # and hold up what is ordered after it. The files keep the lines meanwhile.
                    self._send_ready(text)
                # Otherwise the start is under way and says itself what it is doing.
            elif not healthy and text != WAITING_FOR_DB:
                self.systemd.status(f"database not responding for {stalled:.0f}s; {text}")
            else:
                self.systemd.status(text)
            self._rejects.tick()
            # Progress means a database round trip finished recently (or the server is
            # plainly down and we are retrying); a hung server stops the pings, and systemd
            # restarts us.
            if period is None or now - self._last_progress < period:
                self.systemd.watchdog_ping()

    def _stored(self) -> int:
        return sum(ingest.stats.stored for ingest, _, _ in self.streams.values())

    def _send_ready(self, status: str) -> None:
        """Send READY=1 the first time, STATUS= after that."""
        if self._ready_sent:
            self.systemd.status(status)
        else:
            self.systemd.ready(status)
            self._ready_sent = True

    def _status_text(self, rate: float) -> str:
        stats = [ingest.stats for ingest, _, _ in self.streams.values()]
        waiting = any(ingest.waiting_for_db for ingest, _, _ in self.streams.values())
        if self._start_waiting or waiting:
            return WAITING_FOR_DB
        lag = sum(s.lag_bytes for s in stats)
        rejected = sum(s.rejected for s in stats)
        return (
            f"{rate:.0f} lines/s, {len(stats)} files, lag {lag} bytes, "
            f"{rejected} rejected, group {self.settings.group}"
        )

    async def _housekeeping_loop(self) -> None:
        """Create tomorrow's partitions and apply retention every hour."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                if self._control is None or self._control.is_closed():
                    self._control = await db.connect(self.dsn, application_name="puppylogd")
                await self._housekeeping_once()
            except db.DB_ERRORS as exc:
                log.warning("housekeeping failed; will retry", error=str(exc))
                self._control = None

    # -- reload and stop ---------------------------------------------------------------

    async def reload(self) -> None:
        """Re-read the configuration: alert settings and the set of files, losing no line.

        Streams that stay are not touched; removed ones commit what they hold and stop; new
        ones start. The database, group and state directory are fixed for the process
        (changing them needs a restart, which is logged).
        """
        if self._reload is None or self.stop.is_set():
            return
        if not self._started:
            # The start (which may wait long for the database) registers the group and
            # starts a stream per file itself: a reload now would start a second stream per
            # file beside them. It is applied once the start is done.
            if not self._reload_deferred:
                log.info("reload requested while starting: applied once started")
            self._reload_deferred = True
            return
        async with self._reload_lock:
            if self.stop.is_set():
                return
            self.systemd.reloading()
            try:
                await self._reload_locked(self._reload)
            except Exception as exc:  # a failed reload must not kill a running daemon
                log.error("reload failed", error=repr(exc), exc_info=exc)
            self.systemd.ready(self._status_text(0.0))

    async def _reload_locked(self, reload: Callable[[], Settings]) -> None:
        old = self.settings
        try:
            new = reload()
        except Exception as exc:  # a bad new config keeps the old one
            log.error("reload failed; keeping the old configuration", error=str(exc))
            return
        fixed = ("group", "state_dir", "host")
        changed = [name for name in fixed if getattr(new, name) != getattr(old, name)]
        try:
            new_dsn = new.resolved_dsn()
        except (OSError, ValueError) as exc:
            new_dsn = None
            log.warning("reload could not read dsn_file", error=str(exc))
        if new_dsn != old.resolved_dsn():
            changed.append("dsn")
        if changed:
            log.warning("these settings only change on restart", settings=changed)
            new = new.model_copy(update={name: getattr(old, name) for name in fixed})
        self.settings = new
        try:
            await self._update_group()
        except db.CONNECTION_ERRORS as exc:
            # Not lost: applied as soon as the database answers again.
            log.warning(
                "reload could not update the group now; retrying until the database is back",
                error=str(exc),
            )
            self._retry_group_update()
        except db.DB_ERRORS as exc:
            log.error("reload could not update the group", error=str(exc))
        wanted = set(new.log_files)
        for path in list(self.streams):
            if path not in wanted:
                ingest, stop, task = self.streams.pop(path)
                self._streams_changed.set()
                stop.set()
                if ingest.waiting_for_db:
                    # As at stop: it could store nothing now, and reload must not hang on it.
                    task.cancel()
                (result,) = await asyncio.gather(task, return_exceptions=True)
                if isinstance(result, BaseException) and not task.cancelled():
                    log.error("stream failed while stopping", path=str(path), error=repr(result))
                log.info("stopped following", path=str(path))
        added = sorted(wanted - set(self.streams))
        if added:
            await self._warn_if_short_of_connections(len(added))
        for path in added:
            if self.stop.is_set():
                break
            await self._start_stream(path)
            log.info("following", path=str(path))
        log.info(
            "configuration reloaded",
            files=[str(p) for p in new.log_files],
            threshold=new.threshold,
            recovery_threshold=new.recovery_threshold,
            window_seconds=new.window_seconds,
        )

    async def _update_group(self) -> None:
        """Apply the current alert settings to the group on the daemon's own connection."""
        try:
            if self._control is None or self._control.is_closed():
                self._control = await db.connect(self.dsn, application_name="puppylogd")
            await self._register_group()
        except db.DB_ERRORS:
            if self._control is not None:
                self._control.terminate()
            self._control = None
            raise

    def _retry_group_update(self) -> None:
        """Keep applying the alert settings a reload read until the database takes them."""
        if self._group_retry is None or self._group_retry.done():
            task = asyncio.create_task(self._group_retry_loop(), name="group-update")
            self._group_retry = task
            self._reload_tasks.add(task)
            task.add_done_callback(self._reload_tasks.discard)

    async def _group_retry_loop(self) -> None:
        delay = REGISTER_RETRY_START
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=delay)
            delay = min(delay * 2, REGISTER_RETRY_MAX)
            # Not beside a reload: both use the daemon's own connection (and a newer reload
            # applies its settings itself).
            async with self._reload_lock:
                if self.stop.is_set():
                    return
                try:
                    await self._update_group()
                except db.CONNECTION_ERRORS:
                    continue
                except db.DB_ERRORS as exc:
                    log.error("reload could not update the group", error=str(exc))
                    return
            log.info(
                "group updated with the reloaded settings",
                threshold=self.settings.threshold,
                recovery_threshold=self.settings.recovery_threshold,
                window_seconds=self.settings.window_seconds,
            )
            return

    async def _warn_if_short_of_connections(self, added: int) -> None:
        """Warn when the files a reload adds cannot all have a connection now."""
        if self._control is None:
            return  # reload already said the database is away
        try:
            budget = await db.connection_budget(self._control)
        except db.DB_ERRORS as exc:
            log.warning("reload could not read the connection limits", error=str(exc))
            return
        if added > budget.now:
            hint = (
                "; a restart starts the embedded database with room for every file"
                if self._own_cluster
                else ""
            )
            log.warning(
                "not enough free database connections for the files added; the streams "
                f"that cannot connect wait for a slot{hint}",
                files=added,
                free=budget.now,
                limit=budget.limit,
            )

    def _on_reload_signal(self) -> None:
        task = asyncio.create_task(self.reload(), name="reload")
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        def on_stop(signame: str) -> None:
            log.info("stopping", signal=signame)
            self.systemd.stopping()
            self._stop_signal = self._stop_signal or signal.Signals[signame]
            self.stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)

    # -- main -------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until stopped (or, with ``once``, until the files are stored); return exit code."""
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        if launch.take_early_reload():
            self._on_reload_signal()  # it came during the imports (see puppylogd.launch)
        status: asyncio.Task[None] | None = None
        try:
            if not self.settings.once:
                # From the very start: it feeds the watchdog and, should the database keep the
                # start waiting, says READY (see _status_loop).
                status = asyncio.create_task(self._status_loop(), name="status")
            if not await self._prepare_database():
                return self._once_stopped_code() if self.settings.once else 0
            if status is None:
                return await self._run_once()
            return await self._run_forever(status)
        finally:
            if status is not None:
                status.cancel()
                await asyncio.gather(status, return_exceptions=True)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for task in list(self._reload_tasks):
                task.cancel()
            await asyncio.gather(*self._reload_tasks, return_exceptions=True)
            if self._control is not None and not self._control.is_closed():
                try:
                    await asyncio.wait_for(self._control.close(), timeout=CLOSE_SECONDS)
                except CLOSE_ERRORS:
                    self._control.terminate()
            if self.cluster is not None and self._own_cluster:
                log.info("stopping embedded database", state_dir=str(self.settings.state_dir))
                await asyncio.to_thread(self.cluster.stop)
            if self.cluster is not None:
                self.cluster.release()

    async def _run_once(self) -> int:
        ingests: list[StreamIngest] = []
        readable: list[StreamIngest] = []
        missing: list[str] = []
        try:
            for path in self.settings.log_files:
                ingest = self._new_ingest(path)
                ingests.append(ingest)
                if _missing(path) and not await ingest.is_known():
                    # Most likely a mistyped path: say so without leaving a stream for it in
                    # the database (a known one may have been rotated away: register reads it).
                    log.error("no such log file", path=str(path))
                    missing.append(str(path))
                    continue
                try:
                    decision = await self._register_once(ingest)
                    if decision is None:
                        break  # stopped: the summary says so, with 128 + the signal
                except NotRegularFileError:
                    decision = NOT_REGULAR
                except OSError as exc:
                    if not is_file_error(exc):
                        raise
                    # Like a missing file: said, and the others are stored all the same.
                    log.error("cannot open log file", path=str(path), error=str(exc))
                    missing.append(str(path))
                    continue
                if decision in ("waiting for file", NOT_REGULAR):
                    # A live daemon waits for it; a one-shot run has nothing to read: most
                    # likely a wrong path, which must not pass for an empty log.
                    log.error("no such log file (or not a regular file)", path=str(path))
                    missing.append(str(path))
                    continue
                readable.append(ingest)
            if not self.stop.is_set():
                await self._store_once(readable)
        finally:
            for ingest in ingests:
                await self._close_stream(ingest)
            self._rejects.flush()
        stored = sum(i.stats.stored for i in ingests)
        rejected = sum(i.stats.rejected for i in ingests)
        # Said only when there are any: each stream has said where and why already.
        late = {"late": n} if (n := sum(i.stats.late for i in ingests)) else {}
        reasons = dict(self._rejected_reasons.most_common())
        too_old = self._rejected_reasons["timestamp too old"]
        if too_old:
            # Loading an old log is a common first try; the default retention rejects it.
            log.warning(
                "lines older than the retention were rejected: to load an old log, raise "
                "--retention-days (0 keeps everything)",
                lines=too_old,
                retention_days=self.settings.retention_days,
            )
        if self._stop_signal is not None:
            # Stopped before the end of the files: not "done", and a script must see it.
            log.warning(
                "once: stopped before the end of the files; a later run goes on from there",
                stored=stored,
                rejected=rejected,
                rejected_reasons=reasons,
                signal=self._stop_signal.name,
                **late,
            )
            return self._once_stopped_code()
        if missing:
            log.error(
                "once: done, but some files could not be read",
                stored=stored,
                rejected=rejected,
                rejected_reasons=reasons,
                unread=missing,
                **late,
            )
            return 1
        log.info("once: done", stored=stored, rejected=rejected, rejected_reasons=reasons, **late)
        return 0

    async def _register_once(self, ingest: StreamIngest) -> str | None:
        """Register a stream for --once, again after a lost connection (as at start).

        Return None when stopped first: a server that went away or hangs is waited for, and
        only a stop ends that wait (nothing was read yet, nothing is lost).
        """
        delay = REGISTER_RETRY_START
        while not self.stop.is_set():
            try:
                return await self._unless_stopped(ingest.register(), name=f"register:{ingest.path}")
            except db.CONNECTION_ERRORS as exc:
                if is_file_error(exc):
                    raise
                log.warning(
                    "database connection lost while registering the stream; reconnecting",
                    path=str(ingest.path),
                    error=db.lost_reason(exc),
                )
                ingest.terminate()  # register opens the file again
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=delay)
            delay = min(delay * 2, REGISTER_RETRY_MAX)
        return None

    def _once_stopped_code(self) -> int:
        """Return --once's exit status when stopped before the end: 128 + the signal's number."""
        return 128 + (self._stop_signal or signal.SIGTERM)

    async def _store_once(self, ingests: list[StreamIngest]) -> None:
        """Run every file's ``run_once``; on a stop, give them a moment to commit, then cancel.

        A stopped ``run_once`` starts no new batch and commits those in flight; one waiting
        for an unreachable database would wait for ever, so it is cancelled (what it has not
        committed is read again by a later run, from the checkpoint).
        """
        tasks = [
            asyncio.create_task(
                i.run_once(self._once_connections, self.stop), name=f"once:{i.path}"
            )
            for i in ingests
        ]
        if not tasks:
            return
        stopping = asyncio.create_task(self.stop.wait(), name="once-stop-wait")
        try:
            pending: set[asyncio.Task[None]] = set(tasks)
            while pending and not stopping.done():
                done, _ = await asyncio.wait(
                    pending | {stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done - {stopping}:
                    task.result()  # a file's failure ends the run, as it always did
                pending -= done
            if pending:
                _, pending = await asyncio.wait(pending, timeout=STOP_ONCE_SECONDS)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                for task in tasks:
                    if not task.cancelled():
                        task.result()
        finally:
            stopping.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(stopping, *tasks, return_exceptions=True)

    def _task_died(self, task: asyncio.Task[Any], helpers: list[asyncio.Task[None]]) -> bool:
        """Handle a finished task; return True (after logging why) if the daemon must end."""
        current = any(v[2] is task for v in self.streams.values())
        if not current and task not in helpers:
            return False  # a stream that reload removed: reload reports how it ended
        if task.cancelled():
            log.error("task cancelled", task=task.get_name())
            return True
        exc = task.exception()
        if exc is not None:
            log.error("task died", task=task.get_name(), error=repr(exc), exc_info=exc)
            return True
        if task in helpers:
            log.error("task ended unexpectedly", task=task.get_name())
            return True
        # A stream ended on its own (it only does when told to stop): forget it.
        self.streams = {p: v for p, v in self.streams.items() if v[2] is not task}
        return False

    async def _run_forever(self, status: asyncio.Task[None]) -> int:
        for path in self.settings.log_files:
            if self.stop.is_set():
                break
            await self._start_stream(path)
        helpers = [status, asyncio.create_task(self._housekeeping_loop(), name="housekeeping")]
        if not self.stop.is_set():
            self._send_ready(self._status_text(0.0))
        log.info(
            "ready",
            files=[str(p) for p in self.settings.log_files],
            group=self.settings.group,
            threshold=self.settings.threshold,
        )
        self._started = True
        if self._reload_deferred:
            self._on_reload_signal()
        stopper = asyncio.create_task(self.stop.wait(), name="stop-wait")
        exit_code = 0
        try:
            while not self.stop.is_set():
                self._streams_changed.clear()
                changed = asyncio.create_task(self._streams_changed.wait(), name="streams-changed")
                tasks = {t for _, _, t in self.streams.values()} | set(helpers) | {stopper}
                try:
                    done, _ = await asyncio.wait(
                        tasks | {changed}, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    changed.cancel()
                for task in done - {stopper, changed}:
                    if self._task_died(task, helpers):
                        exit_code = 1
                        self.stop.set()
        finally:
            for ingest, stop, task in self.streams.values():
                stop.set()
                if ingest.waiting_for_db:
                    # The server is away: there is nothing it could store now, and what the
                    # stream holds is read again from the file on the next start.
                    task.cancel()
            stream_tasks = {t: i for i, _, t in self.streams.values()}
            if stream_tasks:
                _, pending = await asyncio.wait(stream_tasks, timeout=STOP_GRACE_SECONDS)
                for task in pending:
                    # A hung server: nothing is lost, only not stored by this run.
                    ingest = stream_tasks[task]
                    log.warning(
                        "stream did not stop in time: the database does not answer; the lines "
                        "it had not stored are read again at the next start",
                        path=str(ingest.path),
                        waited_s=STOP_GRACE_SECONDS,
                    )
                    # Closing its connection would wait for the server too.
                    ingest.terminate()
                    task.cancel()
                await asyncio.gather(*stream_tasks, return_exceptions=True)
            stopper.cancel()
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, stopper, return_exceptions=True)
            self._rejects.flush()
        log.info("stopped", exit_code=exit_code)
        return exit_code
