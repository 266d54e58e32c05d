"""puppylogd with no DSN: its own PostgreSQL under --state-dir, kept across restarts.

Run as root (as in CI) the server must run as the unprivileged ``puppylog`` service account,
its socket directory must be closed to others, and the daemon must stop the server it started
when it exits, leaving the data in place for the next start.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path

from puppylogd.embedded import SERVICE_ACCOUNT, Cluster

# Fixtures shared with the systemd tests.
from tests.integration.test_daemon_systemd import (  # noqa: F401
    DaemonProc,
    NotifySocket,
    append,
    assert_clean_json_logs,
    lines,
    notify,
    query,
    spawn,
    stored,
    wait_for,
    workdir,
)


def proc_uid(pid: int) -> int:
    """Return the effective uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])
    raise AssertionError("no Uid line")


def test_first_start_initialises_second_start_reuses_and_stop_stops_the_server(
    workdir: Path,  # noqa: F811
    notify: NotifySocket,  # noqa: F811
    spawn: Callable[..., DaemonProc],  # noqa: F811
) -> None:
    state = workdir / "state"
    log_file = workdir / "access.log"
    append(log_file, lines(0, 40))
    args = ["--state-dir", str(state), "--log-file", str(log_file)]
    cluster = Cluster(state)

    # First start: nothing there yet; the daemon creates the cluster and the database.
    assert not state.exists()
    first = spawn(args, notify=notify)
    ready = notify.wait("READY=1", timeout=90)
    assert (cluster.data_dir / "PG_VERSION").is_file()
    pid = cluster.postmaster_pid()
    assert pid is not None
    if os.geteuid() == 0:
        account = pwd.getpwnam(SERVICE_ACCOUNT)
        assert proc_uid(pid) == account.pw_uid  # not root
        assert cluster.data_dir.stat().st_uid == account.pw_uid
    # Unix socket only, in a directory others cannot enter.
    socket_dir_mode = stat.S_IMODE(cluster.socket_dir.stat().st_mode)
    assert socket_dir_mode & 0o007 == 0, oct(socket_dir_mode)
    assert cluster.socket_path.exists()
    dsn = cluster.dsn()
    assert query(dsn, "SHOW listen_addresses") == ""
    wait_for("the first lines", lambda: stored(dsn) == (40, 40))
    notify.wait("WATCHDOG=1", after=ready)
    assert first.stop() == 0
    # The daemon stopped the server it started.
    assert cluster.postmaster_pid() is None
    assert not cluster.is_running()
    names = first.event_names()
    assert "embedded database" in names and "stopping embedded database" in names
    assert_clean_json_logs(first)

    # Second start: the same cluster, the data intact, new lines on top (none twice).
    append(log_file, lines(40, 10))
    second = spawn(args, notify=notify)
    notify.wait("READY=1", after=ready, timeout=60)
    pid2 = cluster.postmaster_pid()
    assert pid2 is not None and pid2 != pid
    wait_for("old and new lines", lambda: stored(dsn) == (50, 50))
    assert query(dsn, "SELECT count(*) FROM puppylog.log_streams") == 1
    assert second.stop() == 0
    assert cluster.postmaster_pid() is None
    assert (cluster.data_dir / "PG_VERSION").is_file()
    events = assert_clean_json_logs(second)
    assert "migrations applied" not in [e["event"] for e in events]


def test_a_server_left_by_a_killed_daemon_is_adopted_and_one_in_use_is_not(
    workdir: Path,  # noqa: F811
    notify: NotifySocket,  # noqa: F811
    spawn: Callable[..., DaemonProc],  # noqa: F811
) -> None:
    """kill -9 leaves the server running: the next daemon stops it at its end, not before."""
    state = workdir / "state"
    log_file, other = workdir / "access.log", workdir / "other.log"
    append(log_file, lines(0, 10))
    append(other, lines(100, 5, tag="other"))
    args = ["--state-dir", str(state), "--log-file", str(log_file)]
    cluster = Cluster(state)
    crashed = spawn(args, notify=notify)
    ready = notify.wait("READY=1", timeout=90)
    wait_for("the first lines", lambda: stored(cluster.dsn()) == (10, 10))
    crashed.kill()
    orphan = cluster.postmaster_pid()
    assert orphan is not None  # nobody will ever stop it: the next daemon must adopt it

    adopter = spawn(args, notify=notify)
    notify.wait("READY=1", after=ready, timeout=60)
    assert cluster.postmaster_pid() == orphan
    adopted = [e for e in adopter.events() if "left running by a puppylogd" in e["event"]]
    assert [e["level"] for e in adopted] == ["warning"]

    # While the adopter lives, another run uses the server and leaves it running.
    user = spawn(["--state-dir", str(state), "--log-file", str(other), "--once"], notify=None)
    assert user.proc.wait(60) == 0, user.output()
    assert not [e for e in user.events() if "left running by a puppylogd" in e["event"]]
    assert cluster.postmaster_pid() == orphan
    assert stored(cluster.dsn()) == (15, 15)

    assert adopter.stop() == 0
    assert cluster.postmaster_pid() is None
