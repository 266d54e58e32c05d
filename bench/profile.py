"""Profile ``puppylogd --once`` over the bulk file with py-spy; print where the time goes.

``python bench/profile.py [LINES]`` (needs ``pip install py-spy`` in the venv; it is a
profiling aid, not a dependency). Writes the collapsed stacks to
``bench/results/profile.collapsed`` and prints self and inclusive time per function, plus
how much of the wall time the daemon's process was not on the CPU (waiting on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import gen  # noqa: E402
import run  # noqa: E402

from puppylogd.embedded import Cluster  # noqa: E402


def summarise(collapsed: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text(encoding="utf-8").splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1] for f in stack.split(";") if f]
        total += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count
    out = [f"{total} samples", "", "self time:"]
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    out += ["", "inclusive time:"]
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(top)]
    return "\n".join(out)


async def amain(lines: int) -> int:
    pyspy = shutil.which("py-spy", path=str(run.VENV_BIN)) or shutil.which("py-spy")
    if pyspy is None:
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="puppylog-prof-", dir="/tmp"))
    os.chmod(base, 0o755)
    cluster = Cluster(base / "pg")
    b = run.Bench(base=base, cluster=cluster, quick=True)
    try:
        await asyncio.to_thread(cluster.start)
        path = base / "bulk.log"
        gen.write_bulk(path, lines, seed=42)
        dsn = await run.new_database(b, "prof")
        (base / "state").mkdir()
        out = BENCH / "results" / "profile.collapsed"
        out.parent.mkdir(exist_ok=True)
        args = run.daemon_args(dsn, path, "bulk", base / "state", "--once")
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            pyspy, "record", "--rate", "200", "--format", "raw", "--idle", "-o", str(out),
            "--", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await proc.wait()
        wall = time.perf_counter() - t0
        print(f"{lines} lines in {wall:.1f} s under py-spy ({lines / wall:,.0f} lines/s)")
        print(summarise(out))
    finally:
        await asyncio.to_thread(cluster.kill)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(amain(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)))
