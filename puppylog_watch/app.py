"""Run the watch: choose the output (live view, plain lines, NDJSON), listen until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import asyncpg
from rich.console import Console
from rich.live import Live

from puppylog_watch.listener import (
    CONNECTION_ERRORS,
    DSN_FLAGS,
    Listener,
    WatchFatal,
    explain,
    refused,
)
from puppylog_watch.models import AlertPayload, StatsPayload
from puppylog_watch.render import (
    WatchView,
    history_table,
    history_tsv,
    json_line,
    plain_alert,
    plain_stats,
    safe,
)
from puppylog_watch.state import AlertEvent, WatchState
from puppylogd import db
from puppylogd.logs import mask_dsn

__all__ = ["LineSink", "LiveSink", "OutputError", "run_history", "run_watch"]


class OutputError(Exception):
    """Writing the watch's output failed (the reader left, the disk is full): the watch ends.

    Deliberately not an ``OSError``: the listener takes those for a lost database connection
    and would reconnect forever instead of stopping.
    """


class LineSink:
    """Plain lines (or NDJSON): one per bucket and per alert/recovery, flushed at once."""

    def __init__(self, out: TextIO, err: TextIO, *, json_mode: bool = False) -> None:
        self.out = out
        self.err = err
        self.json_mode = json_mode
        self._was_connected: bool | None = None
        self._told_no_group = False
        self._told_silent = False

    def _emit(self, line: str) -> None:
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except OSError as exc:
            raise OutputError(str(exc)) from exc

    def initial(
        self,
        state: WatchState,
        latest: tuple[StatsPayload, dict[str, Any]] | None,
        active: tuple[AlertPayload, dict[str, Any]] | None,
    ) -> None:
        if latest is not None:
            self.stats(*latest)
        if active is not None:
            self.alert(*active)

    def stats(self, payload: StatsPayload, raw: dict[str, Any]) -> None:
        self._emit(json_line(raw) if self.json_mode else plain_stats(payload))

    def alert(self, payload: AlertEvent, raw: dict[str, Any]) -> None:
        self._emit(json_line(raw) if self.json_mode else plain_alert(payload))

    def status(self, state: WatchState) -> None:
        if state.connected:
            if self._was_connected is False:
                self.warn("reconnected to the database")
        else:
            self.warn(state.status_detail or state.status)  # stderr has room for all of it
        self._was_connected = state.connected
        if state.connected and not state.group_exists and not self._told_no_group:
            # Plain output is silent until a bucket closes: say why none ever may.
            self._told_no_group = True
            self.warn(
                f"no group {state.group!r} in the database yet (a daemon's --group creates it); "
                "waiting for it"
            )

    def warn(self, message: str) -> None:
        # A notice that cannot be written has nowhere else to go; the output lines, which
        # are what the watch is for, still can be.
        with contextlib.suppress(OSError):
            self.err.write(f"puppylog-watch: {safe(message)}\n")
            self.err.flush()

    def tick(self, state: WatchState) -> None:
        # Plain output just stops while the daemon is dead: say so, once, and when it is back.
        silence = state.heartbeat_silence(datetime.now(UTC))
        if silence is not None and not self._told_silent:
            self._told_silent = True
            self.warn(
                f"no daemon heartbeat for {silence:.0f} s (group {state.group!r}, heartbeat "
                f"timeout {state.heartbeat_timeout_s} s): is puppylogd running?"
            )
        elif silence is None and self._told_silent:
            self._told_silent = False
            self.warn("a daemon heartbeats again")


class LiveSink:
    """The rich live view, redrawn in place on every event and once a second."""

    def __init__(self, live: Live, state: WatchState) -> None:
        self.live = live
        self.state = state

    def _redraw(self) -> None:
        try:
            self.live.refresh()
        except OSError as exc:
            raise OutputError(str(exc)) from exc

    def initial(
        self,
        state: WatchState,
        latest: tuple[StatsPayload, dict[str, Any]] | None,
        active: tuple[AlertPayload, dict[str, Any]] | None,
    ) -> None:
        self._redraw()

    def stats(self, payload: StatsPayload, raw: dict[str, Any]) -> None:
        self._redraw()

    def alert(self, payload: AlertEvent, raw: dict[str, Any]) -> None:
        self._redraw()

    def status(self, state: WatchState) -> None:
        self._redraw()

    def warn(self, message: str) -> None:
        # Shown in the header instead of written over the screen.
        self.state.status = message if not self.state.connected else self.state.status
        self._redraw()

    def tick(self, state: WatchState) -> None:
        self._redraw()


async def _run(listener: Listener, stop: asyncio.Event) -> None:
    """Run ``listener`` until ``stop`` is set (also by Ctrl-C or SIGTERM), then at once."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(listener.run(stop))
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            # Whatever the listener awaits must not hold up the stop: a connect to a server
            # that never answers would wait for its 10 s timeout, then report it.
            task.cancel()
            await asyncio.wait({task})
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if not task.cancelled():
        task.result()  # the listener's own end: WatchFatal, OutputError


def run_watch(
    dsn: str,
    group: str,
    *,
    mode: str,
    console: Console | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stop: asyncio.Event | None = None,
    source: str = DSN_FLAGS,
) -> int:
    """Run the watch in ``mode`` ("live", "plain" or "json") until Ctrl-C; return 0.

    Return 1 after one line on stderr when the output cannot be written (0 if the reader of a
    pipe left) or the server refuses the first session (:class:`WatchFatal`; ``source`` names
    where the DSN was set).
    """
    state = WatchState(group=group)
    return asyncio.run(
        watch_async(
            dsn, state, mode=mode, console=console, out=out, err=err, stop=stop, source=source
        )
    )


async def watch_async(
    dsn: str,
    state: WatchState,
    *,
    mode: str,
    console: Console | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stop: asyncio.Event | None = None,
    source: str = DSN_FLAGS,
) -> int:
    """The watch as a coroutine (the demo runs it next to its other tasks)."""
    stop = stop or asyncio.Event()
    out = out or sys.stdout
    err = err or sys.stderr
    if mode in ("plain", "json"):
        sink = LineSink(out, err, json_mode=mode == "json")
        try:
            await _run(Listener(dsn, state, sink, source=source), stop)
        except OutputError as exc:
            return _output_failed(exc.__cause__ or exc, out, err)
        except WatchFatal as exc:
            return _fatal(exc, err)
        return 0
    console = console or Console()
    view = WatchView(state)
    try:
        with Live(
            view,
            console=console,
            screen=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:
            live.refresh()
            await _run(Listener(dsn, state, LiveSink(live, state), source=source), stop)
        if not state.connected and state.status_detail:
            # The header had room for the gist only; the whole of it outlives the screen.
            _say(err, f"puppylog-watch: {safe(state.status_detail)}")
    except OutputError as exc:
        return _output_failed(exc.__cause__ or exc, out, err)
    except OSError as exc:
        # Leaving the alternate screen writes too; the listener keeps its own errors.
        return _output_failed(exc, out, err)
    except WatchFatal as exc:
        return _fatal(exc, err)  # said after the screen is restored, so that it stays
    return 0


def _say(err: TextIO, line: str) -> None:
    with contextlib.suppress(OSError):
        err.write(line + "\n")
        err.flush()


def _fatal(exc: WatchFatal, err: TextIO) -> int:
    _say(err, f"puppylog-watch: error: {safe(str(exc))}")
    return 1


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered would fail again at exit."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _output_failed(exc: BaseException, out: TextIO, err: TextIO) -> int:
    """End the watch whose output failed: quietly (0) when the reader left, else one line (1)."""
    if out is sys.stdout:
        _quiet_stdout()
    if isinstance(exc, BrokenPipeError):
        return 0  # `puppylog-watch --plain | head`: the reader has what it wanted
    with contextlib.suppress(OSError):
        err.write(f"puppylog-watch: error: cannot write the output: {exc}\n")
        err.flush()
    return 1


_HISTORY_SQL = """
SELECT h.id, h.triggered_at, h.recovered_at, h.hits_at_trigger, h.hits_at_recovery,
       h.threshold
FROM puppylog.alert_history h JOIN puppylog.log_groups g ON g.id = h.group_id
WHERE g.name = $1 AND ($2::timestamptz IS NULL OR h.triggered_at >= $2
                       OR h.recovered_at >= $2 OR h.recovered_at IS NULL)
ORDER BY h.triggered_at
"""


HISTORY_CONNECT_TIMEOUT = 10.0


async def _fetch_history(
    dsn: str, group: str, since: datetime | None, source: str = DSN_FLAGS
) -> tuple[bool, list[dict[str, Any]]]:
    """Return whether ``group`` exists, and its alerts.

    Raise :class:`WatchFatal` with the live watch's words (and fix) when the server refuses.
    """
    try:
        conn = await asyncpg.connect(
            dsn,
            timeout=HISTORY_CONNECT_TIMEOUT,
            server_settings={"application_name": "puppylog-watch"},
        )
    except db.CONNECTION_ERRORS:
        raise  # unreachable, starting, out of slots: said by run_history
    except asyncpg.PostgresError as exc:
        raise WatchFatal(refused(dsn, exc, source)) from exc
    try:
        try:
            exists = await conn.fetchval(
                "SELECT EXISTS (SELECT FROM puppylog.log_groups WHERE name = $1)", group
            )
            rows = await conn.fetch(_HISTORY_SQL, group, since)
        except asyncpg.PostgresError as exc:
            role, _ = await db.session_role(conn)  # asked only to name it in the fix
            raise WatchFatal(await explain(conn, exc, role)) from exc
    finally:
        await conn.close()
    return bool(exists), [dict(r) for r in rows]


def run_history(
    dsn: str, group: str, since: datetime | None, console: Console, source: str = DSN_FLAGS
) -> int:
    """Print the table of past alerts and return 0 (1 if the database cannot be read).

    Ctrl-C before the table is printed ends it quietly with 130, as an interrupted command
    (the history is incomplete; the live watch, which runs until stopped, exits 0).
    """
    try:
        exists, rows = asyncio.run(_fetch_history(dsn, group, since, source))
    except KeyboardInterrupt:
        return 130
    except WatchFatal as exc:
        return _fatal(exc, sys.stderr)
    except TimeoutError:
        print(
            f"puppylog-watch: cannot read the alert history: timed out after "
            f"{HISTORY_CONNECT_TIMEOUT:g} s connecting to {mask_dsn(dsn)}",
            file=sys.stderr,
        )
        return 1
    except CONNECTION_ERRORS as exc:
        print(f"puppylog-watch: cannot read the alert history: {exc}", file=sys.stderr)
        return 1
    if not exists:
        # An empty history would otherwise look the same as a quiet group.
        print(
            f"puppylog-watch: no group {safe(repr(group))} in the database (a daemon's "
            "--group creates it)",
            file=sys.stderr,
        )
    try:
        if console.is_terminal:
            console.print(history_table(rows))
        else:  # for scripts: a table cut to 80 columns is no use in a pipe
            sys.stdout.write(history_tsv(rows))
            sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()  # `--history | head`: the reader has what it wanted
    return 0
