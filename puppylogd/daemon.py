"""Run puppylogd: database, migrations, one ingest task per file, status, signals, watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import structlog

from puppylogd import db
from puppylogd.config import Settings
from puppylogd.embedded import Cluster
from puppylogd.ingest import StreamIngest
from puppylogd.logs import RateLimitedReporter, mask_dsn
from puppylogd.migrations import apply_migrations
from puppylogd.parser import Rejected
from puppylogd.systemd import Systemd, get_systemd

log = structlog.get_logger("puppylogd")

STATUS_SECONDS = 5.0
HOUSEKEEPING_SECONDS = 3600.0
STOP_GRACE_SECONDS = 20.0


class DaemonError(Exception):
    """A failure that ends the daemon with a clear message (and a non-zero exit)."""


async def open_embedded(settings: Settings) -> tuple[Cluster, str, bool]:
    """Start (or reuse) the embedded PostgreSQL under the state directory; return its DSN."""
    cluster = Cluster(settings.state_dir)
    was_running = await asyncio.to_thread(cluster.is_running)
    await asyncio.to_thread(cluster.init)
    if not was_running:
        await asyncio.to_thread(cluster.start)
    await cluster.ensure_database("puppylog")
    return cluster, cluster.dsn(), not was_running


async def connect_with_retry(
    dsn: str, systemd: Systemd, stop: asyncio.Event, application_name: str = "puppylogd"
) -> asyncpg.Connection | None:
    """Connect, waiting (and saying so) while the database is unreachable; None if stopped."""
    delay = 0.25
    warned = False
    while not stop.is_set():
        try:
            return await db.connect(dsn, application_name=application_name)
        except db.CONNECTION_ERRORS as exc:
            if not warned:
                log.warning("waiting for database", dsn=mask_dsn(dsn), error=str(exc))
                systemd.status("waiting for database")
                warned = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(delay * 2, 10.0)
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
        self._control: asyncpg.Connection | None = None
        self._rejects = RateLimitedReporter()
        self._last_progress = time.monotonic()
        self._partition_days: set[date] = set()

    # -- callbacks --------------------------------------------------------------------

    def _progress(self) -> None:
        self._last_progress = time.monotonic()

    def _rejected(self, path: Path, rejected: Rejected) -> None:
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
        self._control = await connect_with_retry(dsn, self.systemd, self.stop)
        if self._control is None:
            return False
        applied = await apply_migrations(self._control)
        if applied:
            log.info("migrations applied", migrations=applied)
        await self._register_group()
        await self._housekeeping_once()
        return True

    async def _register_group(self) -> None:
        """Create the group and apply this daemon's alert settings to it."""
        assert self._control is not None
        s = self.settings
        self.group_id = await self._control.fetchval(
            db.query("register_group"),
            s.group,
            s.threshold,
            s.recovery_threshold,
            s.window_seconds,
            s.heartbeat_timeout_seconds,
        )

    async def _housekeeping_once(self) -> None:
        """Create partitions ahead (today and the next two days) and apply retention."""
        assert self._control is not None
        today = datetime.now(UTC).date()
        await self._control.execute(
            db.query("ensure_partitions"), today - timedelta(days=1), today + timedelta(days=2)
        )
        if self.settings.retention_days:
            cutoff = datetime.now(UTC) - timedelta(days=self.settings.retention_days)
            dropped = await self._control.fetchval(db.query("apply_retention"), cutoff)
            if dropped:
                log.info("old partitions dropped", count=dropped, before=cutoff.isoformat())

    async def _start_stream(self, path: Path) -> None:
        """Register one file's stream and start following it in its own named task."""
        ingest = StreamIngest(
            self.settings,
            self.dsn,
            path,
            self.group_id,
            on_progress=self._progress,
            on_rejected=self._rejected,
        )
        await ingest.register()
        stop = asyncio.Event()
        task = asyncio.create_task(self._run_stream(ingest, stop), name=f"ingest:{path}")
        self.streams[path] = (ingest, stop, task)

    async def _run_stream(self, ingest: StreamIngest, stop: asyncio.Event) -> None:
        try:
            await ingest.run(stop)
        finally:
            await ingest.mark_stopped()
            await ingest.close()

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
            self.systemd.status(self._status_text(rate))
            self._rejects.tick()
            # Progress means a database round trip finished recently (or the server is
            # plainly down and we are retrying); a hung server stops the pings.
            if period is None or now - self._last_progress < period:
                self.systemd.watchdog_ping()

    def _stored(self) -> int:
        return sum(ingest.stats.stored for ingest, _, _ in self.streams.values())

    def _status_text(self, rate: float) -> str:
        stats = [ingest.stats for ingest, _, _ in self.streams.values()]
        if any(s.waiting_for_db for s in stats):
            return "waiting for database"
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
        """Re-read the configuration: alert settings and the set of files, losing no line."""
        if self._reload is None:
            return
        self.systemd.reloading()
        try:
            new = self._reload()
        except Exception as exc:  # a bad new config must not kill a running daemon
            log.error("reload failed; keeping the old configuration", error=str(exc))
            self.systemd.ready()
            return
        self.settings = new
        try:
            if self._control is None or self._control.is_closed():
                self._control = await db.connect(self.dsn, application_name="puppylogd")
            await self._register_group()
        except db.DB_ERRORS as exc:
            log.error("reload could not update the group", error=str(exc))
        wanted = set(new.log_files)
        for path in list(self.streams):
            if path not in wanted:
                _, stop, task = self.streams.pop(path)
                stop.set()
                await task
                log.info("stopped following", path=str(path))
        for path in sorted(wanted - set(self.streams)):
            await self._start_stream(path)
        log.info("configuration reloaded", files=[str(p) for p in wanted])
        self.systemd.ready()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        def on_stop(signame: str) -> None:
            log.info("stopping", signal=signame)
            self.systemd.stopping()
            self.stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))

    # -- main -------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until stopped (or, with ``once``, until the files are stored); return exit code."""
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        try:
            if not await self._prepare_database():
                return 0
            if self.settings.once:
                return await self._run_once()
            return await self._run_forever()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if self._control is not None and not self._control.is_closed():
                await self._control.close()
            if self.cluster is not None and self._own_cluster:
                await asyncio.to_thread(self.cluster.stop)

    async def _run_once(self) -> int:
        ingests = []
        for path in self.settings.log_files:
            ingest = StreamIngest(
                self.settings, self.dsn, path, self.group_id, on_rejected=self._rejected
            )
            await ingest.register()
            ingests.append(ingest)
        try:
            await asyncio.gather(
                *(asyncio.create_task(i.run_once(), name=f"once:{i.path}") for i in ingests)
            )
        finally:
            for ingest in ingests:
                await ingest.mark_stopped()
                await ingest.close()
            self._rejects.flush()
        stored = sum(i.stats.stored for i in ingests)
        rejected = sum(i.stats.rejected for i in ingests)
        log.info("once: done", stored=stored, rejected=rejected)
        return 0

    async def _run_forever(self) -> int:
        for path in self.settings.log_files:
            await self._start_stream(path)
        helpers = [
            asyncio.create_task(self._status_loop(), name="status"),
            asyncio.create_task(self._housekeeping_loop(), name="housekeeping"),
        ]
        self.systemd.ready(self._status_text(0.0))
        log.info(
            "ready",
            files=[str(p) for p in self.settings.log_files],
            group=self.settings.group,
            threshold=self.settings.threshold,
        )
        stopper = asyncio.create_task(self.stop.wait(), name="stop-wait")
        exit_code = 0
        try:
            while not self.stop.is_set():
                tasks = {t for _, _, t in self.streams.values()} | set(helpers) | {stopper}
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stopper}:
                    if task.cancelled() or (task.exception() is None and task in helpers):
                        continue
                    exc = task.exception()
                    if exc is not None:
                        log.error("task died", task=task.get_name(), error=repr(exc), exc_info=exc)
                        exit_code = 1
                        self.stop.set()
                    else:
                        # A stream ended on its own (reload removed it): forget it.
                        self.streams = {p: v for p, v in self.streams.items() if v[2] is not task}
        finally:
            for _, stop, _ in self.streams.values():
                stop.set()
            stream_tasks = [t for _, _, t in self.streams.values()]
            if stream_tasks:
                _, pending = await asyncio.wait(stream_tasks, timeout=STOP_GRACE_SECONDS)
                for task in pending:
                    log.error("stream did not stop in time", task=task.get_name())
                    task.cancel()
                await asyncio.gather(*stream_tasks, return_exceptions=True)
            stopper.cancel()
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, stopper, return_exceptions=True)
            self._rejects.flush()
        log.info("stopped", exit_code=exit_code)
        return exit_code
