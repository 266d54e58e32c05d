"""``puppylogd demo``: the daemon, a traffic generator with a burst, and the watch, at once.

With zero configuration it starts ``puppylogd run`` as a subprocess with the same settings
(its own logs go to ``<state_dir>/puppylogd.log``), waits until the database is up and the
group exists, writes realistic CLF traffic to the first log file in real time (a quiet start,
a 60-second burst at 30 req/s that raises the high-traffic alert, then quiet traffic until it
recovers), and runs ``puppylog-watch`` in the foreground (plain lines with ``--plain`` or
when stdout is not a terminal). Ctrl-C (or ``--duration``) stops the generator, the daemon
and the watch, and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import asyncpg

from puppylogd.config import Settings
from puppylogd.traffic import DEMO_PHASES, write_live

__all__ = ["daemon_env", "run_demo"]

READY_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0


def daemon_env(settings: Settings) -> dict[str, str]:
    """Return the environment giving the daemon subprocess exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUPPYLOG_")}
    env.pop("NOTIFY_SOCKET", None)
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        key = "PUPPYLOG_" + name.upper()
        if isinstance(value, bool):
            env[key] = "true" if value else "false"
        elif isinstance(value, list):
            env[key] = ",".join(str(v) for v in value)
        else:
            env[key] = str(value)
    if settings.log_format == "auto":
        env["PUPPYLOG_LOG_FORMAT"] = "json"  # it writes to a file
    return env


def _say(text: str) -> None:
    print(f"puppylogd demo: {text}", file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def _wait_ready(
    dsn_of: str | None, settings: Settings, daemon: subprocess.Popen[bytes], deadline: float
) -> str | None:
    """Wait until the database answers and this daemon has registered; return the DSN.

    A stream counts only with a heartbeat since we first reached the database: a database
    kept from an earlier run already has streams, and its daemon may yet fail to start.
    """
    from puppylogd.embedded import Cluster

    cluster = Cluster(settings.state_dir) if dsn_of is None else None
    since: datetime | None = None  # the database's clock when first reached
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            return None
        dsn = dsn_of
        if cluster is not None and await asyncio.to_thread(cluster.is_running):
            dsn = cluster.dsn()
        if dsn is not None:
            try:
                conn = await asyncpg.connect(dsn, timeout=5)
                try:
                    if since is None:
                        since = await conn.fetchval("SELECT now()")
                    ready = await conn.fetchval(
                        "SELECT count(*) FROM puppylog.log_streams s "
                        "JOIN puppylog.log_groups g ON g.id = s.group_id "
                        "WHERE g.name = $1 AND s.heartbeat_at >= $2",
                        settings.group,
                        since,
                    )
                finally:
                    await conn.close()
                if ready:
                    return dsn
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                pass
        await asyncio.sleep(0.2)
    return None


def _stop_daemon(daemon: subprocess.Popen[bytes]) -> int:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            return daemon.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _say("the daemon did not stop in time; killing it")
            daemon.kill()
            return daemon.wait(10)
    return int(daemon.returncode)


def run_demo(settings: Settings, *, plain: bool = False, duration: float | None = None) -> int:
    """Run the demo until Ctrl-C or ``duration`` seconds; return the exit code."""
    started = time.monotonic()
    end = None if duration is None else started + duration
    state_dir = settings.state_dir
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o711 if os.geteuid() == 0 else 0o700)
    daemon_log = state_dir / "puppylogd.log"
    log_file = settings.log_files[0]
    if not settings.from_end:
        settings = settings.model_copy(update={"from_end": True})  # only the demo's traffic
    mode = "plain" if plain or not sys.stdout.isatty() else "live"

    _say(f"starting puppylogd (state {state_dir}, its log {daemon_log})")
    with open(daemon_log, "ab") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "puppylogd", "run"],
            env=daemon_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops the daemon itself
        )
    stop_traffic = threading.Event()
    traffic: threading.Thread | None = None
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        if end is not None:
            deadline = min(deadline, end)
        dsn = asyncio.run(_wait_ready(settings.resolved_dsn(), settings, daemon, deadline))
        if dsn is None:
            if daemon.poll() is not None:
                _say(f"puppylogd exited with {daemon.returncode}:\n{_tail(daemon_log)}")
                return 1
            if end is not None and time.monotonic() >= end:
                return 0
            _say(f"puppylogd did not become ready in time:\n{_tail(daemon_log)}")
            return 1
        _say(
            f"daemon ready; writing traffic to {log_file} (burst of 30 req/s after 20 s: "
            "the alert fires within about a minute and recovers about 2 minutes later)"
        )
        traffic = threading.Thread(
            target=write_live,
            args=(log_file, DEMO_PHASES),
            kwargs={"stop": stop_traffic},
            name="demo-traffic",
            daemon=True,
        )
        traffic.start()
        code = asyncio.run(_watch(dsn, settings.group, mode, end, daemon))
        if daemon.poll() not in (None, 0):
            return 1  # said in the finally clause, with where its log is
        return code
    except KeyboardInterrupt:
        return 0
    finally:
        stop_traffic.set()
        if traffic is not None:
            traffic.join(5)
        with contextlib.suppress(KeyboardInterrupt):
            code = _stop_daemon(daemon)
            if code not in (0, None):
                _say(f"puppylogd exited with {code}; see {daemon_log}")


async def _watch(
    dsn: str, group: str, mode: str, end: float | None, daemon: subprocess.Popen[bytes]
) -> int:
    """Show the watch until ``end`` or Ctrl-C; stop at once if the daemon dies meanwhile."""
    from puppylog_watch.app import watch_async
    from puppylog_watch.state import WatchState

    stop = asyncio.Event()
    if end is not None:
        asyncio.get_running_loop().call_later(max(end - time.monotonic(), 0.0), stop.set)

    async def daemon_alive() -> None:
        while daemon.poll() is None:
            await asyncio.sleep(0.5)
        stop.set()  # a watch of a dead daemon would show stale numbers forever

    monitor = asyncio.create_task(daemon_alive(), name="demo-daemon-monitor")
    try:
        return await watch_async(dsn, WatchState(group=group), mode=mode, stop=stop)
    finally:
        monitor.cancel()
