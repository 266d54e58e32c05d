"""Database faults during a steady ingest: nothing lost, nothing doubled, recovery on its own.

Each fault runs on a private cluster while a writer appends unique lines at a steady rate:

* the postmaster (and its children) SIGKILLed, then started again (crash recovery), twice;
* the server paused (SIGSTOP) for longer than the watchdog interval, then resumed: the
  daemon stops feeding the watchdog while hung, survives, and feeds it again afterwards;
* the daemon's backends terminated with ``pg_terminate_backend``, repeatedly.

Then the writer stops, every line must be stored exactly once, and SIGTERM exits 0.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from puppylogd.embedded import Cluster
from tests.conftest import ClusterFactory
from tests.integration.helpers import append, query_val, start_daemon
from tests.integration.test_daemon_systemd import NotifySocket
from tests.reliability.support import LIVE, Lines, assert_exact, record, wait_stored

RATE = 10_000  # lines per second written during the faults
SLICE = 0.05  # seconds between appends
INVALID_EVERY = 50
WATCHDOG_S = 2.0


class Writer:
    """Append unique lines to ``path`` at ``rate`` lines/s in a thread until stopped."""

    def __init__(self, path: Path, rate: int) -> None:
        self.path = path
        self.lines = Lines(invalid_every=INVALID_EVERY)
        self.per_slice = max(1, int(rate * SLICE))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            append(self.path, self.lines.make(self.per_slice))
            due += SLICE
            self._stop.wait(max(0.0, due - time.monotonic()))

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> Lines:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()
        return self.lines

    def __exit__(self, *exc: object) -> None:
        self.stop()


def kill_postmaster(cluster: Cluster) -> str:
    for _ in range(2):
        time.sleep(2.0)
        cluster.kill()  # SIGKILL of the postmaster and its children: a crash
        time.sleep(2.0)
        cluster.start()  # crash recovery; the daemon reconnects by itself
    return "postmaster SIGKILL + restart x2"


def pause_server(cluster: Cluster) -> str:
    time.sleep(2.0)
    cluster.pause()
    try:
        time.sleep(2 * WATCHDOG_S + 1.5)
    finally:
        cluster.resume()
    return f"server SIGSTOP {2 * WATCHDOG_S + 1.5:.1f} s (watchdog {WATCHDOG_S:.0f} s) + SIGCONT"


def terminate_backends(cluster: Cluster) -> str:
    terminated = 0
    for _ in range(6):
        time.sleep(0.8)
        terminated += int(
            query_val(
                cluster.dsn(),
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'puppylogd'",
            )
        )
    assert terminated >= 6
    return f"pg_terminate_backend x6 ({terminated} backends)"


FAULTS: dict[str, Callable[[Cluster], str]] = {
    "postmaster_kill": kill_postmaster,
    "pause": pause_server,
    "terminate_backend": terminate_backends,
}


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    try:
        yield sock
    finally:
        sock.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_database_fault_loses_and_doubles_nothing(
    fault: str, make_cluster: ClusterFactory, tmp_path: Path, notify: NotifySocket
) -> None:
    cluster = make_cluster()
    dsn = cluster.dsn()
    path = tmp_path / "access.log"
    started = time.monotonic()
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))}
    with start_daemon(dsn, path, env=env, log_path=tmp_path / "daemon.log", **LIVE) as daemon:
        ready = notify.wait("READY=1", timeout=30)
        with Writer(path, RATE) as writer:
            time.sleep(1.0)
            described = FAULTS[fault](cluster)
            recovered = time.monotonic()
            time.sleep(1.0)
            lines = writer.stop()
        daemon.assert_running()
        wait_stored(dsn, lines.valid, lines.invalid, 60, [daemon])
        # Healthy again: the watchdog is fed after the fault.
        notify.wait("WATCHDOG=1", after=max(ready, recovered), timeout=3 * WATCHDOG_S)
        assert daemon.stop() == 0, daemon.output()[-4000:]
    elapsed = time.monotonic() - started
    c = assert_exact(dsn, lines.valid, lines.invalid)
    record(f"database fault: {described}", lines.written, c, elapsed)
