"""Puppylog benchmarks: each figure next to the limit it is held against, in the same run.

Run ``python bench/run.py`` (``--quick`` for a short smoke run, ``--json PATH`` for where the
results go, default ``bench/results/latest.json``). It starts its own throwaway PostgreSQL
cluster (durable settings: fsync and synchronous_commit on) in a temporary directory under
/tmp, generates seeded traffic with ``bench/gen.py`` and runs ``puppylogd`` as a subprocess,
exactly as a user would. See BENCHMARKS.md for what each figure measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from puppylogd.embedded import Cluster, ensure_database
from puppylogd.ingest import partition_of, split_by_day
from puppylogd.parser import COLUMNS, Parser, RecordRow

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import gen  # noqa: E402  (bench/gen.py, next to this file)

VENV_BIN = Path(sys.executable).parent
PUPPYLOGD = str(VENV_BIN / "puppylogd") if (VENV_BIN / "puppylogd").exists() else "puppylogd"
BATCH_LINES = 20000  # the daemon's default batch_lines, used by the raw-COPY limit too

TARGETS = {
    "bulk_lines_per_s": 300_000,
    "bulk_vs_copy": 0.5,
    "p99_10k_s": 0.3,
    "p99_50k_s": 1.0,
    "rss_mb": 100.0,
    "rss_growth_mb": 10.0,
}


@dataclass
class Bench:
    """Where the run lives and what it found."""

    base: Path
    cluster: Cluster
    quick: bool
    results: dict[str, Any] = field(default_factory=dict)

    def dsn(self, db: str = "puppylog") -> str:
        return self.cluster.dsn(db)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def new_database(b: Bench, name: str) -> str:
    """Create and migrate a fresh database; return its DSN."""
    await ensure_database(b.dsn(), name)
    dsn = b.dsn(name)
    proc = await asyncio.create_subprocess_exec(
        PUPPYLOGD,
        "migrate",
        "--dsn",
        dsn,
        "--log-format",
        "json",
        "--log-level",
        "warning",
        stdout=asyncio.subprocess.DEVNULL,
    )
    if await proc.wait() != 0:
        raise RuntimeError(f"puppylogd migrate failed for {name}")
    return dsn


async def drop_database(b: Bench, name: str) -> None:
    conn = await asyncpg.connect(b.dsn())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def daemon_args(dsn: str, path: Path, group: str, state: Path, *extra: str) -> list[str]:
    return [
        PUPPYLOGD, "run", "--dsn", dsn, "--log-file", str(path), "--group", group,
        "--host", "bench", "--state-dir", str(state), "--log-format", "json",
        "--log-level", "warning", *extra,
    ]  # fmt: skip


# -- 1. bulk ingest and its two limits ------------------------------------------------------


def read_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


def machine_busy_cpu() -> float:
    """Return the CPU seconds all cores have spent busy since boot (``/proc/stat``)."""
    with open("/proc/stat", encoding="ascii") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    # user, nice, system, irq, softirq; not idle, iowait, or steal (another guest's time).
    user, nice, system, _idle, _iowait, irq, softirq = ticks[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """Return the user + system CPU seconds of the reaped child processes."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def parse_only(lines: list[bytes]) -> tuple[float, list[RecordRow]]:
    """Parse the file's lines as the daemon does (batches, same bounds); return (s, rows)."""
    now = datetime.now(UTC)
    parser = Parser(1, min_ts=now - timedelta(days=7), max_ts=now + timedelta(days=1))
    rows: list[RecordRow] = []
    # The daemon frees each batch's rows after its COPY and raises the GC threshold
    # (cli.fewer_gc_passes), so no collection pass ever visits them; keeping every row here
    # for the raw-COPY limit would set off passes over them that the daemon never pays.
    gc.disable()
    try:
        t0 = time.perf_counter()
        for i in range(0, len(lines), BATCH_LINES):
            got, _ = parser.parse_many(lines[i : i + BATCH_LINES])
            rows += got
        return time.perf_counter() - t0, rows
    finally:
        gc.enable()


async def raw_copy(b: Bench, name: str, rows: list[RecordRow]) -> float:
    """Binary COPY of pre-parsed rows in daemon-sized transactions, rollup trigger included."""
    dsn = await new_database(b, name)
    conn = await asyncpg.connect(dsn)
    try:
        gid = await conn.fetchval(
            "INSERT INTO puppylog.log_groups (name) VALUES ('copy') RETURNING id"
        )
        sid = await conn.fetchval(
            "INSERT INTO puppylog.log_streams (group_id, host, path) "
            "VALUES ($1, 'bench', '/copy') RETURNING id",
            gid,
        )
        days = sorted({rows[0][0].date(), rows[-1][0].date()})
        await conn.execute("SELECT puppylog.ensure_partitions($1, $2)", days[0], days[-1])
        if sid != 1:
            rows = [(r[0], sid, *r[2:]) for r in rows]
        t0 = time.perf_counter()
        for i in range(0, len(rows), BATCH_LINES):
            # Into the day partitions, as the daemon does (the parent would insert row by row).
            _, _, by_day = split_by_day(rows[i : i + BATCH_LINES])
            async with conn.transaction():
                for day, day_rows in by_day:
                    await conn.copy_records_to_table(
                        partition_of(day), schema_name="puppylog", columns=COLUMNS, records=day_rows
                    )
        return time.perf_counter() - t0
    finally:
        await conn.close()
        await drop_database(b, name)


async def bulk_once(b: Bench, name: str, path: Path, keep: bool) -> dict[str, Any]:
    """Time ``puppylogd --once`` over the file, start to exit, on a fresh migrated database."""
    dsn = await new_database(b, name)
    state = b.base / "state"
    state.mkdir(exist_ok=True)
    args = daemon_args(dsn, path, "bulk", state, "--once")
    with (b.base / f"{name}.daemon.log").open("wb") as daemon_log:
        busy0, children0 = machine_busy_cpu(), children_cpu()
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*args, stdout=daemon_log, stderr=daemon_log)
        rc = await proc.wait()
        elapsed = time.perf_counter() - t0
        # The daemon is the only child reaped meanwhile; the rest of the machine's busy time
        # is PostgreSQL (backend, WAL writer, checkpointer) plus whatever else ran.
        daemon_cpu = children_cpu() - children0
        other_cpu = machine_busy_cpu() - busy0 - daemon_cpu
    if rc != 0:
        raise RuntimeError(f"puppylogd --once exited {rc}")
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM puppylog.log_records")
        rejected = await conn.fetchval("SELECT count(*) FROM puppylog.rejected_lines")
        buckets = await conn.fetchval("SELECT count(*) FROM puppylog.stats_buckets")
        out: dict[str, Any] = {
            "seconds": elapsed,
            "daemon_cpu_s": daemon_cpu,
            "other_cpu_s": other_cpu,
            "rows": rows,
            "rejected": rejected,
            "stats_buckets": buckets,
        }
        if keep:
            size = await conn.fetchval(
                "SELECT sum(pg_total_relation_size(i.inhrelid)) FROM pg_inherits i "
                "WHERE i.inhparent = 'puppylog.log_records'::regclass"
            )
            heap = await conn.fetchval(
                "SELECT sum(pg_relation_size(i.inhrelid)) FROM pg_inherits i "
                "WHERE i.inhparent = 'puppylog.log_records'::regclass"
            )
            out["storage"] = {
                "rows": rows,
                "total_bytes": int(size),
                "heap_bytes": int(heap),
                "bytes_per_record": int(size) / rows,
                "heap_bytes_per_record": int(heap) / rows,
            }
    finally:
        await conn.close()
    await drop_database(b, name)
    return out


async def bulk(b: Bench, runs: int, n_lines: int) -> None:
    path = b.base / "bulk.log"
    log(f"generating {n_lines} lines")
    info = gen.write_bulk(path, n_lines, seed=42)
    lines = read_lines(path)
    res: dict[str, Any] = {"lines": len(lines), "file_bytes": path.stat().st_size, **info}
    ingest, parse, copy = [], [], []
    for i in range(runs):
        log(f"bulk run {i + 1}/{runs}: puppylogd --once")
        r = await bulk_once(b, f"bulk_{i}", path, keep=i == 0)
        if "storage" in r:
            res["storage"] = r.pop("storage")
        ingest.append(r)
        log(
            f"  {len(lines) / r['seconds']:,.0f} lines/s ({r['seconds']:.2f} s, {r['rows']} rows;"
            f" CPU daemon {r['daemon_cpu_s']:.2f} s, rest of machine {r['other_cpu_s']:.2f} s)"
        )
        log(f"bulk run {i + 1}/{runs}: parse only")
        seconds, rows = parse_only(lines)
        parse.append(seconds)
        log(f"  {len(lines) / seconds:,.0f} lines/s")
        log(f"bulk run {i + 1}/{runs}: raw binary COPY of {len(rows)} rows")
        seconds = await raw_copy(b, f"copy_{i}", rows)
        copy.append(seconds)
        log(f"  {len(lines) / seconds:,.0f} lines/s ({len(rows) / seconds:,.0f} rows/s)")
        del rows
    n = len(lines)
    med_ingest = statistics.median(n / r["seconds"] for r in ingest)
    med_parse = statistics.median(n / s for s in parse)
    med_copy = statistics.median(n / s for s in copy)
    # What both cores could do if neither ever waited for the other: the CPU one line costs
    # in the daemon plus in PostgreSQL, spread over all cores.
    daemon_us = statistics.median(r["daemon_cpu_s"] for r in ingest) / n * 1e6
    other_us = statistics.median(r["other_cpu_s"] for r in ingest) / n * 1e6
    cores = os.cpu_count() or 1
    cpu_ceiling = cores / ((daemon_us + other_us) / 1e6)
    res.update(
        runs=runs,
        ingest_runs=ingest,
        ingest_lines_per_s=[n / r["seconds"] for r in ingest],
        parse_lines_per_s=[n / s for s in parse],
        copy_lines_per_s=[n / s for s in copy],
        median_ingest_lines_per_s=med_ingest,
        median_parse_lines_per_s=med_parse,
        median_copy_lines_per_s=med_copy,
        ratio_vs_parse=med_ingest / med_parse,
        ratio_vs_copy=med_ingest / med_copy,
        daemon_cpu_us_per_line=daemon_us,
        server_cpu_us_per_line=other_us,
        cores=cores,
        cpu_ceiling_lines_per_s=cpu_ceiling,
        ratio_vs_cpu_ceiling=med_ingest / cpu_ceiling,
        rows_expected=ingest[0]["rows"],
    )
    b.results["bulk"] = res


# -- 2 and 3. live latency and sustained load ------------------------------------------------


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


async def live(b: Bench, name: str, rate: int, seconds: float) -> dict[str, Any]:
    """Run a live daemon on a file appended at ``rate`` lines/s; measure what a client sees."""
    dsn = await new_database(b, name)
    path = b.base / f"{name}.log"
    path.touch()
    state = b.base / "state"
    state.mkdir(exist_ok=True)
    events: list[tuple[float, str, dict[str, Any]]] = []

    def on_notify(_c: object, _pid: int, channel: str, payload: object) -> None:
        events.append((time.time(), channel, json.loads(str(payload))))

    listener = await asyncpg.connect(dsn)
    await listener.add_listener("puppylog_stats", on_notify)
    await listener.add_listener("puppylog_alerts", on_notify)
    daemon_log = (b.base / f"{name}.daemon.log").open("wb")
    daemon = subprocess.Popen(
        daemon_args(dsn, path, name, state, "--lateness-seconds", "0"),
        stdout=daemon_log,
        stderr=subprocess.STDOUT,
    )
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + 30
        while not await conn.fetchval("SELECT count(*) FROM puppylog.log_streams"):
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError(f"daemon for {name} did not start")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        rss_idle = rss_mb(daemon.pid)
        out_json = b.base / f"{name}.writer.json"
        writer = await asyncio.create_subprocess_exec(
            sys.executable, str(BENCH / "gen.py"), "live", str(path), str(rate), str(seconds),
            str(out_json),
        )  # fmt: skip
        rss_samples: list[tuple[float, float]] = []
        t0 = time.monotonic()
        while writer.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(writer.wait(), timeout=5.0)
            r = rss_mb(daemon.pid)
            if r is not None:
                rss_samples.append((time.monotonic() - t0, r))
        if writer.returncode != 0:
            raise RuntimeError("writer failed")
        # Lag the moment the writer stops, then how long the daemon needs to catch up.
        size = path.stat().st_size
        offset = await conn.fetchval("SELECT byte_offset FROM puppylog.log_streams")
        stop_at = time.monotonic()
        while (
            await conn.fetchval("SELECT byte_offset FROM puppylog.log_streams") < size
            and time.monotonic() - stop_at < 120
        ):
            await asyncio.sleep(0.05)
        catch_up = time.monotonic() - stop_at
        await asyncio.sleep(2.0)  # the buckets the last lines fall in close on the wall clock
        rss_end = rss_mb(daemon.pid)
        written_info = json.loads(out_json.read_text(encoding="utf-8"))
        rows = await conn.fetchval("SELECT count(*) FROM puppylog.log_records")
        rejected = await conn.fetchval("SELECT count(*) FROM puppylog.rejected_lines")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(daemon.wait, 30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        daemon_log.close()
        await conn.close()
        await listener.close()
    await drop_database(b, name)

    last_write = {int(k): v for k, v in written_info["last_write"].items()}
    first_sec, last_sec = min(last_write), max(last_write)
    stats_lat: list[float] = []
    alert_lat: list[float] = []
    for arrival, channel, p in events:
        if p.get("group") != name:
            continue
        if channel == "puppylog_stats":
            start = int(datetime.fromisoformat(p["bucket"]).timestamp())
            secs = range(start, start + 10)
            # Only buckets the writer covered whole (not its first or last partial bucket).
            if start > first_sec and start + 9 < last_sec and all(s in last_write for s in secs):
                stats_lat.append(arrival - max(last_write[s] for s in secs))
        elif p.get("type") == "alert":
            t = int(datetime.fromisoformat(p["at"]).timestamp())
            if t in last_write:
                alert_lat.append(arrival - last_write[t])
    written = int(written_info["written"])
    res: dict[str, Any] = {
        "rate": rate,
        "seconds": seconds,
        "lines_written": written,
        "rows": rows,
        "rejected": rejected,
        "lost": written - rows - rejected,
        "lag_bytes_at_end": size - offset,
        "catch_up_s": catch_up,
        "rss_idle_mb": rss_idle,
        "rss_start_mb": rss_samples[0][1] if rss_samples else None,
        "rss_end_mb": rss_end,
        "rss_max_mb": max((r for _, r in rss_samples), default=None),
        "rss_samples": rss_samples,
        "stats_samples": len(stats_lat),
        "alert_samples": alert_lat,
    }
    if stats_lat:
        res.update(
            p50_s=statistics.median(stats_lat),
            p99_s=pct(stats_lat, 99),
            max_s=max(stats_lat),
            latencies_s=stats_lat,
        )
    log(
        f"  {name}: {written} written, {rows} rows + {rejected} rejected, lost {res['lost']}, "
        f"lag {res['lag_bytes_at_end']} B, p50 {res.get('p50_s', float('nan')):.3f} s, "
        f"p99 {res.get('p99_s', float('nan')):.3f} s, RSS {res['rss_start_mb']} -> {rss_end} MB"
    )
    return res


# -- report -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_mb": mem,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def code_info() -> dict[str, str]:
    """Which puppylogd was measured: its package directory and the git commit (+dirty)."""
    import puppylogd

    pkg = Path(puppylogd.__file__).resolve().parent
    head = subprocess.run(
        ["git", "-C", str(BENCH), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {"puppylogd": str(pkg), "git": head or "unknown"}


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def table(r: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str]] = []
    bk = r.get("bulk")
    if bk:
        ing, par, cp = (
            bk["median_ingest_lines_per_s"],
            bk["median_parse_lines_per_s"],
            bk["median_copy_lines_per_s"],
        )
        rows += [
            (
                f"bulk ingest, puppylogd --once, {bk['lines']:,} lines (median of {bk['runs']})",
                f"{ing:,.0f} lines/s",
                "≥ 300,000 lines/s",
                verdict(ing >= TARGETS["bulk_lines_per_s"]),
            ),
            ("  limit: parse only (Parser.parse_many)", f"{par:,.0f} lines/s",
             f"ingest = {bk['ratio_vs_parse']:.0%} of it", ""),
            ("  limit: raw binary COPY + rollup trigger", f"{cp:,.0f} lines/s",
             f"ingest = {bk['ratio_vs_copy']:.0%} of it (≥ 50 %)",
             verdict(bk["ratio_vs_copy"] >= TARGETS["bulk_vs_copy"])),
        ]  # fmt: skip
        rows.append(
            (
                f"  limit: CPU, {bk['daemon_cpu_us_per_line']:.2f} µs daemon + "
                f"{bk['server_cpu_us_per_line']:.2f} µs server per line, {bk['cores']} cores",
                f"{bk['cpu_ceiling_lines_per_s']:,.0f} lines/s",
                f"ingest = {bk['ratio_vs_cpu_ceiling']:.0%} of it",
                "",
            )
        )
        st = bk.get("storage")
        if st:
            rows.append(
                (
                    f"storage after {st['rows']:,} rows (table + indexes)",
                    f"{st['bytes_per_record']:.0f} B/record",
                    f"heap alone {st['heap_bytes_per_record']:.0f} B",
                    "",
                )
            )
    for key, limit in (("live_10k", TARGETS["p99_10k_s"]), ("sustained_50k", TARGETS["p99_50k_s"])):
        lv = r.get(key)
        if not lv:
            continue
        if "p99_s" in lv:
            rows.append(
                (
                    f"live latency at {lv['rate']:,} lines/s ({lv['stats_samples']} buckets)",
                    f"p50 {lv['p50_s'] * 1000:.0f} ms, p99 {lv['p99_s'] * 1000:.0f} ms, "
                    f"max {lv['max_s'] * 1000:.0f} ms",
                    f"p99 ≤ {limit * 1000:.0f} ms",
                    verdict(lv["p99_s"] <= limit),
                )
            )
    sus = r.get("sustained_50k")
    if sus:
        start, end = sus["rss_start_mb"] or 0.0, sus["rss_end_mb"] or 0.0
        peak = sus["rss_max_mb"] or 0.0
        rss_ok = peak <= TARGETS["rss_mb"] and end - start <= TARGETS["rss_growth_mb"]
        rows += [
            (
                f"sustained {sus['rate']:,} lines/s for {sus['seconds']:.0f} s: lag at end",
                f"{sus['lag_bytes_at_end']:,} B, caught up in {sus['catch_up_s']:.2f} s",
                "",
                "",
            ),
            (
                "  daemon RSS start -> end (peak)",
                f"{start:.0f} -> {end:.0f} MB ({peak:.0f})",
                "≤ 100 MB, growth ≤ 10 MB",
                verdict(rss_ok),
            ),
            (
                "  rows lost",
                f"{sus['lost']} of {sus['lines_written']:,}",
                "0",
                verdict(sus["lost"] == 0),
            ),
        ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    head = ("figure", "value", "limit / target", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, head, strict=True)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> int:
    parent = Path(args.tmpdir)
    base = Path(tempfile.mkdtemp(prefix="puppylog-bench-", dir=parent))
    os.chmod(base, 0o755)
    cluster = Cluster(base / "pg")  # durable: fsync, full_page_writes, synchronous_commit on
    b = Bench(base=base, cluster=cluster, quick=args.quick)
    started = datetime.now(UTC)
    try:
        log(f"starting PostgreSQL in {base}")
        await asyncio.to_thread(cluster.start)
        conn = await asyncpg.connect(b.dsn())
        pg_version = await conn.fetchval("SHOW server_version")
        await conn.close()
        b.results["machine"] = {**machine(), "postgresql": pg_version, "tmpdir": str(parent)}
        b.results["code"] = code_info()
        b.results["quick"] = args.quick
        b.results["started"] = started.isoformat()
        runs = args.runs or (1 if args.quick else 3)
        n_lines = args.lines or (200_000 if args.quick else 1_000_000)
        live_s = 20.0 if args.quick else 90.0
        sustained_s = 30.0 if args.quick else 300.0
        if "bulk" in args.only:
            await bulk(b, runs, n_lines)
        if "live" in args.only:
            log(f"live latency at 10,000 lines/s for {live_s:.0f} s")
            b.results["live_10k"] = await live(b, "live_10k", 10_000, live_s)
        if "sustained" in args.only:
            log(f"sustained 50,000 lines/s for {sustained_s:.0f} s (also: live latency at 50k)")
            b.results["sustained_50k"] = await live(b, "sustained_50k", 50_000, sustained_s)
        b.results["finished"] = datetime.now(UTC).isoformat()
        b.results["table"] = table(b.results)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(cluster.stop, "fast", 30.0)
        if args.keep:
            log(f"kept {base}")
        else:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(cluster.kill)
            shutil.rmtree(base, ignore_errors=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(b.results, indent=1, default=str) + "\n", encoding="utf-8")
    print()
    print(b.results.get("table", "(incomplete)"))
    print(f"\nresults written to {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 2 minutes)")
    parser.add_argument("--json", default=str(BENCH / "results" / "latest.json"), metavar="PATH")
    parser.add_argument("--runs", type=int, default=0, help="bulk runs (default 3, quick 1)")
    parser.add_argument("--lines", type=int, default=0, help="bulk lines (default 1,000,000)")
    parser.add_argument(
        "--only",
        nargs="+",
        default=["bulk", "live", "sustained"],
        choices=["bulk", "live", "sustained"],
    )
    parser.add_argument("--tmpdir", default="/tmp", help="parent of the throwaway cluster")
    parser.add_argument("--keep", action="store_true", help="keep the cluster directory")
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
