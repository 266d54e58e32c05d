"""Database faults during a steady ingest: nothing lost, nothing doubled, recovery on its own.

Each fault runs on a private cluster while a writer appends unique lines at a steady rate:

* the postmaster (and its children) SIGKILLed, then started again (crash recovery), twice;
* the server paused (SIGSTOP) for longer than the watchdog interval, then resumed: the
  daemon stops feeding the watchdog while hung, survives, and feeds it again afterwards;
* the daemon's backends terminated with ``pg_terminate_backend``, repeatedly.

The writer alternates busy and quiet 2-second phases around a 1-second alert window, so the
alert fires and recovers every couple of seconds, also while the fault lasts. A
``puppylog-watch --plain`` follows along from the start; at the end it must have printed
every transition in ``alert_history`` exactly once, whether its connection died with the
server, hung with it, or survived.

Then the writer stops, every line must be stored exactly once, and SIGTERM exits 0.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from puppylogd.embedded import Cluster
from tests.conftest import ClusterFactory
from tests.integration.helpers import (
    append,
    journal_noise,
    query_rows,
    query_val,
    start_daemon,
    wait_for,
)
from tests.integration.test_daemon_systemd import NotifySocket
from tests.integration.test_watch import Watch
from tests.reliability.support import LIVE, Lines, assert_exact, record, wait_stored

RATE = 12_000  # lines per second written during the busy phases
QUIET_RATE = 4_000  # ... and during the quiet ones
PHASE_S = 2  # length of a phase, in wall-clock seconds
SLICE = 0.05  # seconds between appends
INVALID_EVERY = 50
WATCHDOG_S = 2.0
# The alert: above 8,000 lines in one second fires, below recovers. Lateness 2 s (the default):
# a second closes only once lines of 2 s later arrived, so a busy second is complete when judged.
ALERTS = {"window_seconds": 1, "threshold": 8000, "lateness_seconds": 2}
TRANSITION = re.compile(
    r"^High traffic (generated an alert|alert recovered) - hits = (\d+), "
    r"(?:triggered|recovered) at (\S+)"
)


class Writer:
    """Append unique lines to ``path`` in a thread until stopped, busy and quiet in turn."""

    def __init__(self, path: Path, rate: int, quiet_rate: int) -> None:
        self.path = path
        self.lines = Lines(invalid_every=INVALID_EVERY)
        self.per_slice = (max(1, int(rate * SLICE)), max(1, int(quiet_rate * SLICE)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            quiet = int(time.time()) // PHASE_S % 2
            append(self.path, self.lines.make(self.per_slice[quiet]))
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
    settings = {**LIVE, **ALERTS}
    with start_daemon(dsn, path, env=env, log_path=tmp_path / "daemon.log", **settings) as daemon:
        ready = notify.wait("READY=1", timeout=30)
        watch = Watch("--plain", "--dsn", dsn)
        try:
            wait_for(
                lambda: query_val(
                    dsn,
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = 'puppylog-watch'",
                ),
                30,
                message=watch.describe,
            )
            with Writer(path, RATE, QUIET_RATE) as writer:
                time.sleep(1.0)
                fault_from = time.time()
                described = FAULTS[fault](cluster)
                fault_to = time.time()
                recovered = time.monotonic()
                time.sleep(1.0)
                lines = writer.stop()
            daemon.assert_running()
            wait_stored(dsn, lines.valid, lines.invalid, 60, [daemon])
            # Healthy again: the watchdog is fed after the fault.
            notify.wait("WATCHDOG=1", after=max(ready, recovered), timeout=3 * WATCHDOG_S)
            transitions = every_transition_shown(dsn, watch)
        finally:
            watch.stop()
        assert daemon.stop() == 0, daemon.output()[-4000:]
        # Each recovered fault is said in the daemon's own words: no traceback, no report
        # from asyncio or asyncpg, nothing at error level.
        assert journal_noise(daemon.output()) == []
    elapsed = time.monotonic() - started
    c = assert_exact(dsn, lines.valid, lines.invalid)
    during = [t for t in transitions if fault_from <= t[2].timestamp() <= fault_to]
    assert during, f"no alert transition while the fault lasted: {transitions}"
    record(
        f"database fault: {described}",
        lines.written,
        c,
        elapsed,
        f"watch showed all {len(transitions)} alert transitions, {len(during)} in the fault",
    )


def every_transition_shown(dsn: str, watch: Watch) -> list[tuple[str, int, datetime]]:
    """Wait until the watch has printed each alert transition of the database exactly once."""

    def in_database() -> list[tuple[str, int, datetime]]:
        out = []
        for r in query_rows(dsn, "SELECT * FROM puppylog.alert_history ORDER BY id"):
            out.append(("generated an alert", r["hits_at_trigger"], r["triggered_at"]))
            if r["recovered_at"] is not None:
                out.append(("alert recovered", r["hits_at_recovery"], r["recovered_at"]))
        return out

    def expected() -> list[tuple[str, int, str]]:
        return [(kind, hits, iso(t)) for kind, hits, t in in_database()]

    def shown() -> list[tuple[str, int, str]]:
        got = [TRANSITION.match(line) for line in watch.text()]
        return [(m[1], int(m[2]), m[3]) for m in got if m is not None]

    def complete() -> bool:
        want = expected()
        # Traffic has stopped: the last alert recovers from the wall clock within seconds.
        return bool(want) and want[-1][0] == "alert recovered" and shown() == want

    wait_for(
        complete,
        40,
        message=lambda: f"database: {expected()}\nwatch: {shown()}\n{watch.describe()}",
    )
    transitions = in_database()
    assert len(transitions) >= 2  # at least one whole alert: fired and recovered
    # No second was judged before all its lines were in: the history is the one the
    # per-second rollup alone implies (the stateless query).
    history = "SELECT triggered_at, hits_at_trigger, recovered_at, hits_at_recovery "
    assert [
        tuple(r) for r in query_rows(dsn, history + "FROM puppylog.alert_history ORDER BY id")
    ] == [
        tuple(r)
        for r in query_rows(
            dsn, history + "FROM puppylog.alert_intervals((SELECT id FROM puppylog.log_groups))"
        )
    ]
    return transitions


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


# systemd's TimeoutStopSec in packaging/systemd/puppylogd.service: SIGKILL after this long.
STOP_TIMEOUT_S = 30.0


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["down", "hung"])
def test_sigterm_while_the_database_is_away_stops_in_time_and_loses_nothing(
    fault: str, make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    """SIGTERM with the server killed, or SIGSTOPped mid-commit: exit 0 before systemd's kill."""
    cluster = make_cluster()
    dsn = cluster.dsn()
    path = tmp_path / "access.log"
    lines = Lines(invalid_every=INVALID_EVERY)
    append(path, lines.make(500))
    with start_daemon(dsn, path, log_path=tmp_path / "daemon.log", **LIVE) as daemon:
        wait_stored(dsn, lines.valid, lines.invalid, 30, [daemon])
        if fault == "down":
            cluster.kill()
        else:
            cluster.pause()
        try:
            append(path, lines.make(500))
            if fault == "down":
                wait_for(lambda: "waiting for database" in daemon.output(), 30)
            else:
                time.sleep(2.0)  # the batch of these lines is stuck in a commit
            daemon.assert_running()
            started = time.monotonic()
            code = daemon.stop(timeout=STOP_TIMEOUT_S + 15)
            took = time.monotonic() - started
        finally:
            if fault == "down":
                cluster.start()
            else:
                cluster.resume()
    assert code == 0, daemon.output()[-4000:]
    assert journal_noise(daemon.output()) == []
    # One warning for the hung stream, not a second one for its connection.
    assert "closing the stream's connection timed out" not in daemon.output()
    # Down: nothing could be stored, so nothing to wait for. Hung: the last commit's grace and
    # the bounded closes, with room before systemd's SIGKILL.
    limit = 5.0 if fault == "down" else STOP_TIMEOUT_S - 5
    assert took < limit, f"stopping took {took:.1f} s:\n{daemon.output()[-4000:]}"
    # The next start stores what the outage held back, once.
    with start_daemon(dsn, path, **LIVE) as again:
        wait_stored(dsn, lines.valid, lines.invalid, 30, [again])
        assert again.stop() == 0, again.output()[-4000:]
    c = assert_exact(dsn, lines.valid, lines.invalid)
    record(
        f"SIGTERM while the server is {fault}", lines.written, c, took, f"stopped in {took:.1f} s"
    )
