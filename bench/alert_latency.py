"""Time from a line being written to its alert notification reaching a LISTENing connection.

Starts a throwaway PostgreSQL cluster and a live ``puppylogd`` on one file with a 1-second
window (``--window-seconds 1 --threshold 5 --lateness-seconds 0``). Each trial writes, at a
random moment of a second S, ten lines stamped S (avg 10 > 5); the alert for S can only be
decided once S has closed, so the latency is reported both from the write and from the end of
S. The trial then waits for the recovery (second S+1 is empty) before the next one.

Usage: ``python bench/alert_latency.py [TRIALS]`` (default 100).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from puppylogd.embedded import Cluster

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def clf(i: int, ts: datetime) -> bytes:
    """One Common Log Format line stamped ``ts``."""
    when = f"{ts.day:02d}/{MONTHS[ts.month - 1]}/{ts.year}:{ts:%H:%M:%S} +0000"
    return f'10.0.0.{i % 250} - - [{when}] "GET /bench/{i} HTTP/1.1" 200 512\n'.encode()


def traversable_dir() -> Path:
    """A temp dir the server's unprivileged account can enter (clusters started as root)."""
    parent = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="puppylog-bench-", dir=parent))
    path.chmod(0o755)
    return path


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


class Listener:
    """Collects alert payloads with their arrival (wall) time."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[float, dict[str, object]]] = asyncio.Queue()

    def on_alert(self, _c: object, _pid: int, _ch: str, payload: object) -> None:
        self.events.put_nowait((time.time(), json.loads(str(payload))))


async def stream_ready(conn: asyncpg.Connection) -> bool:
    """True once the daemon has migrated and its stream reports a watermark."""
    try:
        return bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM puppylog.log_streams WHERE watermark IS NOT NULL)"
            )
        )
    except asyncpg.UndefinedTableError:
        return False


async def run(trials: int) -> None:
    base = traversable_dir()
    cluster = Cluster(base / "pg", fsync=False)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(cluster.init)
        await asyncio.to_thread(cluster.start)
        dsn = cluster.dsn()
        log = base / "access.log"
        log.touch()
        log.chmod(0o644)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PUPPYLOG_")}
        env["PUPPYLOG_LOG_FORMAT"] = "json"
        with open(base / "daemon.log", "wb") as out:
            daemon = subprocess.Popen(
                [
                    sys.executable, "-m", "puppylogd", "run", "--dsn", dsn,
                    "--log-file", str(log), "--host", "bench", "--window-seconds", "1",
                    "--threshold", "5", "--lateness-seconds", "0", "--log-level", "warning",
                ],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        conn = await asyncpg.connect(dsn)
        listener = Listener()
        await conn.add_listener("puppylog_alerts", listener.on_alert)
        deadline = time.monotonic() + 60
        while not await stream_ready(conn):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((base / "daemon.log").read_text(errors="replace"))
            await asyncio.sleep(0.1)

        from_write: list[float] = []
        from_close: list[float] = []
        n = 0
        missed = 0
        for trial in range(trials):
            # Write at a random moment of a second.
            now = time.time()
            # Not too close to the second's end: with lateness 0 the daemon must read the
            # lines before its next heartbeat closes the second, or they are late (no alert).
            target = int(now) + 1 + random.uniform(0.02, 0.7)
            await asyncio.sleep(target - now)
            written = time.time()
            second = datetime.fromtimestamp(int(written), UTC)
            with log.open("ab") as f:
                f.write(b"".join(clf(n + i, second) for i in range(10)))
            n += 10
            try:
                arrived, payload = await asyncio.wait_for(listener.events.get(), 5)
            except TimeoutError:
                missed += 1  # the lines came in after their second had closed
                continue
            assert payload["type"] == "alert", payload
            assert payload["at"] == second.isoformat(), (payload, second)
            from_write.append(arrived - written)
            from_close.append(arrived - (int(written) + 1))
            _, recovery = await asyncio.wait_for(listener.events.get(), 15)
            assert recovery["type"] == "recovery", recovery
            if (trial + 1) % 20 == 0:
                print(f"  {trial + 1} trials", file=sys.stderr)
        await conn.close()

        print(
            f"alert latency over {len(from_write)} trials (window 1 s, lateness 0 s; "
            f"{missed} of {trials} writes read after their second closed: no alert)"
        )
        for name, values in (("from the write", from_write), ("from the second's end", from_close)):
            print(
                f"  {name:>22}: median {statistics.median(values) * 1000:7.1f} ms   "
                f"p99 {percentile(values, 0.99) * 1000:7.1f} ms   "
                f"min {min(values) * 1000:6.1f} ms   max {max(values) * 1000:7.1f} ms"
            )
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.wait(20)
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(cluster.stop, "immediate")
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    asyncio.run(run(trials))


if __name__ == "__main__":
    main()
