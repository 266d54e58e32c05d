"""SIGHUP reloads puppylogd's configuration (threshold and files) without losing a line.

A running process cannot see changes to its environment, so the daemon re-reads its
environment file (``$PUPPYLOG_ENV_FILE``; under systemd ``$CONFIGURATION_DIRECTORY``/
``puppylogd.env``, the unit's ``EnvironmentFile=``) on SIGHUP, on top of the environment it
started with and below its original command-line flags.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ClusterFactory
from tests.integration.helpers import catches_sighup, loaded, signal_at

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

THRESHOLD_SQL = "SELECT threshold FROM puppylog.log_groups WHERE name = 'default'"


def configure(env_file: Path, log_file: Path, threshold: float | None = None) -> None:
    """Write the daemon's environment file: one log file, and a threshold if given."""
    text = f"PUPPYLOG_LOG_FILES={log_file}\n"
    if threshold is not None:
        text += f"PUPPYLOG_THRESHOLD={threshold}\n"
    env_file.write_text(text, "utf-8")


class Writer(threading.Thread):
    """Append a few lines every 20 ms until stopped; count what was written."""

    def __init__(self, path: Path, tag: str) -> None:
        super().__init__(daemon=True)
        self.path, self.tag = path, tag
        self.written = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            append(self.path, lines(self.written, 5, tag=self.tag))
            self.written += 5
            time.sleep(0.02)

    def finish(self) -> int:
        self.halt.set()
        self.join(5)
        return self.written


def test_sighup_adds_a_file_and_changes_the_threshold_losing_nothing(
    db_dsn: str,
    workdir: Path,  # noqa: F811
    notify: NotifySocket,  # noqa: F811
    spawn: Callable[..., DaemonProc],  # noqa: F811
) -> None:
    first, second = workdir / "first.log", workdir / "second.log"
    env_file = workdir / "puppylogd.env"
    env_file.write_text(
        f"# written by the test\nPUPPYLOG_LOG_FILES={first}\nPUPPYLOG_THRESHOLD=10\n",
        encoding="utf-8",
    )
    daemon = spawn(
        ["--dsn", db_dsn, "--window-seconds", "60"],
        notify=notify,
        env={"PUPPYLOG_ENV_FILE": str(env_file), "PUPPYLOG_WINDOW_SECONDS": "30"},
    )
    ready = notify.wait("READY=1", timeout=30)
    assert query(db_dsn, THRESHOLD_SQL) == 10.0
    assert query(db_dsn, "SELECT window_s FROM puppylog.log_groups") == 60  # flag beats env
    writer = Writer(first, "first")
    writer.start()
    try:
        wait_for("lines of the first file", lambda: stored(db_dsn, "first")[0] >= 50)
        env_file.write_text(
            f"PUPPYLOG_LOG_FILES={first},{second}\nPUPPYLOG_THRESHOLD=3.5\n", encoding="utf-8"
        )
        append(second, lines(0, 25, tag="second"))
        hup = time.monotonic()
        daemon.send(signal.SIGHUP)
        reloading = notify.wait("RELOADING=1", after=hup)
        ready_again = notify.wait("READY=1", after=reloading)
        assert ready < reloading < ready_again
        wait_for("the new threshold", lambda: query(db_dsn, THRESHOLD_SQL) == 3.5)
        # The flag still wins over the file after a reload.
        assert query(db_dsn, "SELECT window_s FROM puppylog.log_groups") == 60
        wait_for("the added file's lines", lambda: stored(db_dsn, "second") == (25, 25))
        time.sleep(0.3)  # the first file keeps flowing after the reload
    finally:
        written = writer.finish()
    wait_for(
        "every line of the first file",
        lambda: stored(db_dsn, "first") == (written, written),
    )
    assert daemon.stop() == 0
    assert stored(db_dsn, "first") == (written, written)
    assert query(db_dsn, "SELECT count(*) FROM puppylog.log_streams") == 2
    events = assert_clean_json_logs(daemon)
    reloaded = [e for e in events if e["event"] == "configuration reloaded"]
    assert len(reloaded) == 1
    assert reloaded[0]["threshold"] == 3.5
    assert reloaded[0]["files"] == [str(first), str(second)]
    # Its own rule changed by its own reload: no conflict between daemons to warn of.
    assert not [e for e in events if e["event"].startswith("this daemon changed the group's")]


def test_a_bad_reload_keeps_the_running_configuration(
    db_dsn: str,
    workdir: Path,  # noqa: F811
    notify: NotifySocket,  # noqa: F811
    spawn: Callable[..., DaemonProc],  # noqa: F811
) -> None:
    log_file = workdir / "a.log"
    env_file = workdir / "puppylogd.env"
    configure(env_file, log_file, threshold=7)
    daemon = spawn(["--dsn", db_dsn], notify=notify, env={"PUPPYLOG_ENV_FILE": str(env_file)})
    notify.wait("READY=1", timeout=30)
    configure(env_file, log_file, threshold=-1)
    hup = time.monotonic()
    daemon.send(signal.SIGHUP)
    notify.wait("READY=1", after=notify.wait("RELOADING=1", after=hup))
    append(log_file, lines(0, 10))
    wait_for("lines after a failed reload", lambda: stored(db_dsn) == (10, 10))
    assert query(db_dsn, THRESHOLD_SQL) == 7.0
    assert daemon.stop() == 0
    events = assert_clean_json_logs(daemon)
    failed = [e for e in events if e["event"] == "reload failed; keeping the old configuration"]
    assert len(failed) == 1 and "threshold" in failed[0]["error"]


def test_a_sighup_during_the_imports_is_a_reload_not_the_end(
    db_dsn: str,
    workdir: Path,  # noqa: F811
    spawn: Callable[..., DaemonProc],  # noqa: F811
) -> None:
    """SIGHUP is caught before the slow imports start, and applied as a reload once running."""
    log_file = workdir / "a.log"
    append(log_file, lines(0, 20))
    env_file = workdir / "puppylogd.env"
    configure(env_file, log_file)
    daemon = spawn(["--dsn", db_dsn], env={"PUPPYLOG_ENV_FILE": str(env_file)})
    imports_begun: list[bool] = []

    def held(pid: int) -> bool:
        if catches_sighup(pid):
            imports_begun.append(loaded(pid, "pydantic_core"))
            return True
        return False

    signal_at(daemon.pid, held, signal.SIGHUP)
    assert imports_begun == [False]  # caught before the settings' imports began
    wait_for("the lines", lambda: stored(db_dsn) == (20, 20))
    assert daemon.stop() == 0
    names = [e["event"] for e in assert_clean_json_logs(daemon)]
    assert names.count("configuration reloaded") == 1, names
    assert names.count("stream opened") == 1, names


def test_ctrl_c_during_the_imports_ends_quietly_with_130(
    workdir: Path,  # noqa: F811
    spawn: Callable[..., DaemonProc],  # noqa: F811
) -> None:
    """No traceback for a Ctrl-C that comes before the daemon's handler."""
    daemon = spawn(["--dsn", "postgresql://nobody@/x?host=/nonexistent"])
    # The launcher runs (it holds SIGHUP); the daemon's imports have not begun.
    signal_at(daemon.pid, catches_sighup, signal.SIGINT)
    assert daemon.proc.wait(30) == 130
    assert daemon.output() == ""


def test_a_reload_while_the_start_waits_for_the_database_follows_each_file_once(
    make_cluster: ClusterFactory,
    workdir: Path,  # noqa: F811
    notify: NotifySocket,  # noqa: F811
    spawn: Callable[..., DaemonProc],  # noqa: F811
) -> None:
    """A SIGHUP before the start is done is applied after it, not as a second start."""
    cluster = make_cluster()
    dsn = cluster.dsn()
    cluster.stop()
    log_file = workdir / "a.log"
    append(log_file, lines(0, 50))
    env_file = workdir / "puppylogd.env"
    configure(env_file, log_file, threshold=7)
    daemon = spawn(["--dsn", dsn], notify=notify, env={"PUPPYLOG_ENV_FILE": str(env_file)})
    notify.wait("STATUS=waiting for database", timeout=30)  # READY too, under systemd
    configure(env_file, log_file, threshold=4)
    daemon.send(signal.SIGHUP)
    time.sleep(0.5)
    cluster.start()
    wait_for("the lines written before the start", lambda: stored(dsn) == (50, 50), timeout=30)
    for start in range(50, 250, 20):
        append(log_file, lines(start, 20))
        time.sleep(0.05)
    wait_for("every line", lambda: stored(dsn) == (250, 250))
    wait_for("the reloaded threshold", lambda: query(dsn, THRESHOLD_SQL) == 4.0)
    assert daemon.stop() == 0
    names = [e["event"] for e in assert_clean_json_logs(daemon)]
    assert names.count("stream opened") == 1, names
    assert "could not register stream; retrying" not in names, names
    assert not [n for n in names if n.startswith("checkpoint moved")], names
    assert names.count("configuration reloaded") == 1, names


def test_a_reload_while_the_database_is_down_reaches_the_group_once_it_is_back(
    make_cluster: ClusterFactory,
    workdir: Path,  # noqa: F811
    notify: NotifySocket,  # noqa: F811
    spawn: Callable[..., DaemonProc],  # noqa: F811
) -> None:
    """The new threshold is not only in the daemon's memory: the group gets it when it can."""
    cluster = make_cluster()
    dsn = cluster.dsn()
    log_file = workdir / "a.log"
    env_file = workdir / "puppylogd.env"
    configure(env_file, log_file, threshold=7)
    daemon = spawn(["--dsn", dsn], notify=notify, env={"PUPPYLOG_ENV_FILE": str(env_file)})
    notify.wait("READY=1", timeout=30)
    assert query(dsn, THRESHOLD_SQL) == 7.0
    cluster.stop()
    configure(env_file, log_file, threshold=3)
    hup = time.monotonic()
    daemon.send(signal.SIGHUP)
    notify.wait("READY=1", after=notify.wait("RELOADING=1", after=hup))
    time.sleep(1.0)  # a retry or two against the stopped server
    cluster.start()
    wait_for("the reloaded threshold", lambda: query(dsn, THRESHOLD_SQL) == 3.0, timeout=30)
    append(log_file, lines(0, 10))
    wait_for("lines after the outage", lambda: stored(dsn) == (10, 10), timeout=30)
    assert daemon.stop() == 0
    events = assert_clean_json_logs(daemon)
    names = [e["event"] for e in events]
    assert names.count("group updated with the reloaded settings") == 1
