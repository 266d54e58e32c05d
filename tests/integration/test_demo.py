"""``puppylogd demo``: daemon, embedded database, traffic and the watch, with zero setup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from puppylogd.embedded import Cluster
from tests.integration.helpers import daemon_env, query_val


def demo(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "puppylogd", *args],
        env=daemon_env(),
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


def test_demo_runs_and_prints_stats(pg_tmp_dir: Path) -> None:
    # pg_tmp_dir is traversable by the server account when run as root.
    state = pg_tmp_dir / "state"
    log = pg_tmp_dir / "access.log"
    args = [
        "demo",
        "--plain",
        "--duration",
        "25",
        "--state-dir",
        str(state),
        "--log-file",
        str(log),
    ]
    result = demo(args)
    assert result.returncode == 0, result.stderr + result.stdout
    stats = [line for line in result.stdout.splitlines() if " stats group=default " in line]
    assert stats, result.stdout + result.stderr
    assert "daemon ready" in result.stderr
    assert log.stat().st_size > 0
    daemon_log = (state / "puppylogd.log").read_text(encoding="utf-8")
    assert '"event": "stopped"' in daemon_log
    # The daemon stopped its embedded database on the way out.
    assert not (state / "pgdata" / "postmaster.pid").exists()

    # The same state directory holding a schema from another build (an edited migration):
    # the demo says why the daemon could not start and exits 1.
    cluster = Cluster(state)
    cluster.start()
    try:
        query_val(
            cluster.dsn(),
            "UPDATE puppylog.schema_migrations SET checksum = md5(checksum) WHERE version = 1",
        )
    finally:
        cluster.stop()
    again = demo(args)
    output = again.stdout + again.stderr
    assert again.returncode == 1, output
    assert "differs from the one this puppylogd ships" in output
    assert "daemon ready" not in output


def test_demo_stops_when_its_daemon_dies(pg_tmp_dir: Path) -> None:
    """The daemon killed mid-demo: the demo says so and exits 1 at once, not at the end."""
    state = pg_tmp_dir / "state"
    args = ["demo", "--plain", "--duration", "90", "--state-dir", str(state)]
    args += ["--log-file", str(pg_tmp_dir / "access.log")]
    with subprocess.Popen(
        [sys.executable, "-m", "puppylogd", *args],
        env=daemon_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            seen = ""
            for line in proc.stderr:
                seen += line
                if "daemon ready" in line:
                    break
            assert "daemon ready" in seen, seen
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            assert len(children) == 1, children  # the daemon (the watch runs in the demo)
            os.kill(int(children[0]), signal.SIGKILL)
            started = time.monotonic()
            assert proc.wait(30) == 1
            assert time.monotonic() - started < 15
            rest = proc.stderr.read()
            assert "puppylogd exited with -9" in rest, seen + rest
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            Cluster(state).kill()  # the daemon's server, orphaned by the SIGKILL
