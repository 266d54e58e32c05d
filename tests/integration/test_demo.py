"""``puppylogd demo``: daemon, embedded database, traffic and the watch, with zero setup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.helpers import daemon_env


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
    result = subprocess.run(
        [sys.executable, "-m", "puppylogd", *args],
        env=daemon_env(),
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    stats = [line for line in result.stdout.splitlines() if " stats group=default " in line]
    assert stats, result.stdout + result.stderr
    assert "daemon ready" in result.stderr
    assert log.stat().st_size > 0
    daemon_log = (state / "puppylogd.log").read_text(encoding="utf-8")
    assert '"event": "stopped"' in daemon_log
    # The daemon stopped its embedded database on the way out.
    assert not (state / "pgdata" / "postmaster.pid").exists()
