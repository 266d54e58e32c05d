"""Ingest rate with the rollup trigger vs without it, for the same file in one run.

Starts a throwaway PostgreSQL cluster, writes a seeded file (``bench/gen.py``, default 300k
lines) and ingests it with ``puppylogd --once`` into a fresh database each time: with the
statement-level rollup trigger (stats_seconds, bucket_counts and the alert/stats evaluation at
the end) and with ``ALTER TABLE puppylog.log_records DISABLE TRIGGER log_records_rollup``.
Runs alternate (on, off, on, off, ...) so drift hits both alike. Rates are lines per second of
the whole ``puppylogd --once`` run; the start-up cost (an empty file) is reported too.

Usage: ``python bench/rollup_cost.py [LINES] [RUNS]`` (default 300000 and 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from puppylogd.embedded import Cluster, quote_ident
from puppylogd.migrations import apply_migrations

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import gen  # noqa: E402  (bench/gen.py, next to this file)

TEMPLATE = "rollup_template"


def traversable_dir() -> Path:
    """A temp dir the server's unprivileged account can enter (clusters started as root)."""
    parent = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="puppylog-bench-", dir=parent))
    path.chmod(0o755)
    return path


async def admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def fresh_db(cluster: Cluster, name: str, rollups: bool) -> str:
    await admin(cluster.dsn(), f"CREATE DATABASE {quote_ident(name)} TEMPLATE {TEMPLATE}")
    dsn = cluster.dsn(name)
    if not rollups:
        await admin(dsn, "ALTER TABLE puppylog.log_records DISABLE TRIGGER log_records_rollup")
    return dsn


def ingest_once(dsn: str, log: Path) -> float:
    """Run ``puppylogd --once`` on ``log``; return its wall time in seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUPPYLOG_")}
    cmd = [
        sys.executable, "-m", "puppylogd", "run", "--once", "--dsn", dsn,
        "--log-file", str(log), "--host", "bench", "--log-level", "warning",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"puppylogd --once failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


async def stored(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM puppylog.log_records")
        seconds = await conn.fetchval("SELECT coalesce(sum(hits), 0) FROM puppylog.stats_seconds")
        return int(rows), int(seconds)
    finally:
        await conn.close()


async def run(lines: int, runs: int) -> None:
    base = traversable_dir()
    cluster = Cluster(base / "pg", fsync=False)
    try:
        await asyncio.to_thread(cluster.init)
        await asyncio.to_thread(cluster.start)
        await admin(cluster.dsn(), f"CREATE DATABASE {TEMPLATE}")
        conn = await asyncpg.connect(cluster.dsn(TEMPLATE))
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
        log = base / "access.log"
        counts = gen.write_bulk(log, lines, seed=11)
        log.chmod(0o644)
        empty = base / "empty.log"
        empty.touch()
        empty.chmod(0o644)
        print(
            f"file: {lines} lines ({log.stat().st_size / 1e6:.1f} MB) over "
            f"{counts['seconds']} s of log time"
        )

        startup = []
        for i in range(runs):
            startup.append(ingest_once(await fresh_db(cluster, f"empty_{i}", True), empty))
        times: dict[bool, list[float]] = {True: [], False: []}
        for i in range(runs):
            for rollups in (True, False):
                dsn = await fresh_db(cluster, f"run_{i}_{int(rollups)}", rollups)
                elapsed = ingest_once(dsn, log)
                rows, rolled = await stored(dsn)
                if rollups and rolled != rows:
                    raise SystemExit(f"rollup holds {rolled} hits for {rows} rows")
                times[rollups].append(elapsed)
                print(
                    f"  run {i + 1} rollups {'on ' if rollups else 'off'}: {elapsed:6.2f} s "
                    f"{rows} rows  {rows / elapsed:9.0f} lines/s",
                    file=sys.stderr,
                )
        start = statistics.median(startup)
        print(f"puppylogd --once start-up (empty file), median of {runs}: {start:.2f} s")
        result = {}
        for rollups in (True, False):
            med = statistics.median(times[rollups])
            net = max(med - start, 1e-6)
            result[rollups] = (lines / med, lines / net)
            print(
                f"rollups {'on ' if rollups else 'off'}: median {med:6.2f} s  "
                f"{lines / med:9.0f} lines/s  ({lines / net:9.0f} lines/s without start-up)  "
                f"runs: {', '.join(f'{t:.2f}' for t in times[rollups])}"
            )
        print(
            f"ratio on/off: {result[True][0] / result[False][0]:.2f} "
            f"(without start-up {result[True][1] / result[False][1]:.2f})"
        )
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(cluster.stop, "immediate")
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    asyncio.run(run(lines, runs))


if __name__ == "__main__":
    main()
