"""puppylog-watch against a real database and the real daemon (subprocesses, --plain)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from puppylog_watch.render import HISTORY_COLUMNS
from puppylogd.traffic import Phase, schedule_lines
from tests.integration.helpers import (
    append,
    daemon_env,
    query_val,
    recent,
    run_once,
    start_daemon,
    wait_for,
)
from tests.pg import run_async

ALERT = "High traffic generated an alert - hits = "
RECOVERY = "High traffic alert recovered - hits = "
# A small window and threshold keep the bursts short.
FAST: dict[str, Any] = {"window_seconds": 20, "threshold": 5, "lateness_seconds": 1}


class Watch:
    """A ``puppylog-watch`` subprocess whose output lines are collected with their times."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "puppylog_watch", *args],
            env=daemon_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read(self, stream: object, into: list[tuple[float, str]]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            into.append((time.monotonic(), line.rstrip("\n")))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line.rstrip("\n"))

    def text(self) -> list[str]:
        return [line for _, line in self.lines]

    def describe(self) -> str:
        return "stdout:\n" + "\n".join(self.text()[-40:]) + "\nstderr:\n" + "\n".join(self.errors)

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> int:
        """Wait for an output line matching ``predicate``; return its index."""

        def find() -> int | None:
            for i, (_, line) in enumerate(list(self.lines)):
                if predicate(line):
                    return i + 1
            return None

        found = wait_for(find, timeout, message=self.describe)
        assert found is not None
        return found - 1

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # Ctrl-C
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for t in self._threads:
            t.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return int(self.proc.returncode)


@pytest.fixture
def watches() -> Iterator[list[Watch]]:
    made: list[Watch] = []
    yield made
    for w in made:
        w.stop()


def burst_lines(start: datetime, quiet_after: int = 60) -> bytes:
    """Quiet 20 s at 1/s, a 20 s burst at 20/s, then quiet_after seconds at 1/s."""
    phases = [Phase("quiet", 20, 1), Phase("burst", 20, 20)]
    if quiet_after:
        phases.append(Phase("quiet", quiet_after, 1))
    return b"".join(schedule_lines(phases, start, seed=11, malformed_share=0.0))


def news_times(lines: list[str]) -> list[tuple[datetime, int]]:
    """Return when each plain line's news happened: a bucket at its end, an alert at its second.

    On a tie the alert is first (0), as a daemon that keeps up announces them.
    """
    keys = []
    for line in lines:
        if " stats group=" in line:
            start = datetime.fromisoformat(line.split(" ", 1)[0])
            keys.append((start + timedelta(seconds=10), 1))
        elif line.startswith((ALERT, RECOVERY)):
            at = datetime.fromisoformat(line.rsplit(" at ", 1)[1])
            keys.append((at + timedelta(seconds=1), 0))
    return keys


def assert_in_event_order(lines: list[str]) -> None:
    keys = news_times(lines)
    assert keys == sorted(keys), "\n".join(lines)


def with_user(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.split("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def test_watch_prints_stats_then_the_alert_and_later_the_recovery(
    db_dsn: str, tmp_path: Path, watches: list[Watch]
) -> None:
    log = tmp_path / "access.log"
    watch = Watch("--plain", "--dsn", db_dsn)
    js = Watch("--json", "--dsn", db_dsn)
    watches.extend((watch, js))
    time.sleep(0.5)  # started before the group exists: it must still pick everything up
    append(log, burst_lines(recent(200)))
    with start_daemon(db_dsn, log, **FAST) as daemon:
        alert = watch.wait_line(lambda s: s.startswith(ALERT), timeout=60)
        recovery = watch.wait_line(lambda s: s.startswith(RECOVERY), timeout=60)
        assert alert < recovery
        # One transaction closed all of it, and announced its alert events before its
        # buckets: shown in the order they happened, the buckets before the alert first.
        wait_for(lambda: sum(" stats group=default " in x for x in watch.text()) >= 15, 30)
        text = watch.text()
        assert_in_event_order(text)
        assert alert >= 2 and " stats group=" in text[alert - 1]  # the quiet 20 s before
        assert any("alert=firing" in line for line in text)
        # --json prints the same payloads, in the same order.
        wait_for(lambda: len(js.text()) >= len(text), 30, message=js.describe)
        types = [json.loads(line)["type"] for line in js.text()[: len(text)]]
        assert types == [
            "stats" if " stats group=" in x else "alert" if x.startswith(ALERT) else "recovery"
            for x in text
        ]
        # The lines are the messages verbatim, as alert_history has them.
        stored = query_val(
            db_dsn,
            "SELECT payload->>'message' FROM puppylog.alert_events WHERE kind = 'alert'",
        )
        assert text[alert] == stored
        assert daemon.stop() == 0
    assert watch.stop() == 0


def test_watch_started_mid_alert_shows_it_at_once(
    db_dsn: str, tmp_path: Path, watches: list[Watch]
) -> None:
    log = tmp_path / "access.log"
    append(log, burst_lines(recent(120), quiet_after=0))
    run_once(db_dsn, log, **FAST)  # time stops at the burst's end: the alert stays active
    assert query_val(db_dsn, "SELECT alert_state FROM puppylog.log_groups") == "firing"
    t0 = time.monotonic()
    watch = Watch("--plain", "--dsn", db_dsn)
    watches.append(watch)
    i = watch.wait_line(lambda s: s.startswith(ALERT), timeout=20)
    assert watch.lines[i][0] - t0 < 10
    assert "alert=firing" in watch.text()[0]  # the newest bucket first, then the alert
    # The JSON mode shows the same alert as its payload.
    js = Watch("--json", "--dsn", db_dsn)
    watches.append(js)
    j = js.wait_line(lambda s: '"type":"alert"' in s, timeout=20)
    assert json.loads(js.text()[j])["message"] == watch.text()[i]


def test_recovery_while_cut_off_is_shown_after_reconnect(
    db_dsn: str, tmp_path: Path, watches: list[Watch], unique_name: Callable[[str], str]
) -> None:
    # The watch logs in as a read-only role (0003_roles): SELECT and LISTEN are enough.
    role = unique_name("watcher")
    query_val(db_dsn, f"CREATE ROLE {role} LOGIN IN ROLE puppylog_reader")
    try:
        log = tmp_path / "access.log"
        start = recent(200)
        data = burst_lines(start, quiet_after=60)
        cut = data.index(b"\n", len(burst_lines(start, quiet_after=0)) - 1) + 1
        append(log, data[:cut])
        run_once(db_dsn, log, **FAST)
        watch = Watch("--plain", "--dsn", with_user(db_dsn, role))
        watches.append(watch)
        watch.wait_line(lambda s: s.startswith(ALERT), timeout=20)

        # Cut the watch off: it may not log in again, and its connection is killed.
        query_val(db_dsn, f"ALTER ROLE {role} NOLOGIN")
        killed = query_val(
            db_dsn,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'puppylog-watch'",
        )
        assert killed == 1
        wait_for(
            lambda: any("connection lost" in e for e in watch.errors),
            20,
            message=watch.describe,
        )
        before = len(watch.lines)
        # Meanwhile the traffic calms down and the alert recovers.
        append(log, data[cut:])
        run_once(db_dsn, log, **FAST)
        assert query_val(db_dsn, "SELECT alert_state FROM puppylog.log_groups") == "ok"
        time.sleep(1.0)
        assert not any(line.startswith(RECOVERY) for line in watch.text())

        query_val(db_dsn, f"ALTER ROLE {role} LOGIN")
        rec = watch.wait_line(lambda s: s.startswith(RECOVERY), timeout=30)
        assert any("reconnected" in e for e in watch.errors)
        # The catch-up: what was missed, in the order it happened, not buckets, then alerts.
        wait_for(
            lambda: any(" stats " in x for x in watch.text()[rec:]), 10, message=watch.describe
        )
        assert rec > before and " stats " in watch.text()[rec - 1]
        assert_in_event_order(watch.text()[before:])
        assert sum(line.startswith(ALERT) for line in watch.text()) == 1  # no duplicate
        assert watch.stop() == 0
    finally:
        query_val(db_dsn, f"DROP OWNED BY {role}")
        query_val(db_dsn, f"DROP ROLE IF EXISTS {role}")


def test_server_restart_during_an_alert(
    make_cluster: Callable[..., object], tmp_path: Path, watches: list[Watch]
) -> None:
    from puppylogd.embedded import Cluster

    cluster = make_cluster()
    assert isinstance(cluster, Cluster)
    dsn = cluster.dsn()
    log = tmp_path / "access.log"
    start = recent(200)
    data = burst_lines(start, quiet_after=60)
    cut = len(burst_lines(start, quiet_after=0))
    append(log, data[:cut])
    run_once(dsn, log, **FAST)
    watch = Watch("--plain", "--dsn", dsn)
    watches.append(watch)
    watch.wait_line(lambda s: s.startswith(ALERT), timeout=20)
    cluster.stop(mode="immediate")
    wait_for(lambda: any("connection lost" in e for e in watch.errors), 20, message=watch.describe)
    cluster.start()
    append(log, data[cut:])
    run_once(dsn, log, **FAST)
    watch.wait_line(lambda s: s.startswith(RECOVERY), timeout=40)
    assert watch.stop() == 0


def test_unknown_and_malformed_payloads_are_skipped(db_dsn: str, watches: list[Watch]) -> None:
    watch = Watch("--plain", "--dsn", db_dsn)
    watches.append(watch)
    wait_for(lambda: query_val(db_dsn, LISTENERS_SQL) == 1, 20, message=watch.describe)
    good = alert_payload(1)
    for payload in ("{not json", '{"v": 2, "type": "alert"}', '{"v": 1, "type": "what"}', good):
        query_val(db_dsn, "SELECT pg_notify('puppylog_alerts', $1)", payload)
    watch.wait_line(lambda s: s == json.loads(good)["message"], timeout=20)
    assert len([e for e in watch.errors if "skipped a payload" in e]) == 3
    assert watch.proc.poll() is None


# The watch LISTENs before it reads the tables: once it has run a later query, it listens.
LISTENERS_SQL = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'puppylog-watch' "
    "AND state = 'idle' AND query NOT LIKE 'LISTEN%'"
)


def alert_payload(alert_id: int) -> str:
    at = datetime.now().astimezone().replace(microsecond=0).isoformat()
    return json.dumps(
        {
            "v": 1,
            "type": "alert" if alert_id % 2 else "recovery",
            "group": "default",
            "alert_id": alert_id,
            "at": at,
            "triggered_at": at,
            "hits": 1000 + alert_id,
            "avg": 12.5,
            "threshold": 10.0,
            "window_s": 120,
            "message": f"High traffic generated an alert - hits = {1000 + alert_id}, "
            f"triggered at {at}",
        }
    )


def test_notification_to_screen_latency(db_dsn: str, watches: list[Watch]) -> None:
    """Time from NOTIFY (as a LISTENer in this test sees it) to the watch's line on stdout."""
    watch = Watch("--plain", "--dsn", db_dsn)
    watches.append(watch)
    wait_for(lambda: query_val(db_dsn, LISTENERS_SQL) == 1, 20, message=watch.describe)
    time.sleep(0.5)
    received: dict[int, float] = {}
    sent: dict[int, float] = {}

    async def go() -> None:
        conn = await asyncpg.connect(db_dsn)
        try:

            def on(_c: object, _p: int, _ch: str, payload: object) -> None:
                received[int(json.loads(str(payload))["hits"]) - 1000] = time.monotonic()

            await conn.add_listener("puppylog_alerts", on)
            for i in range(1, 41):
                before = time.monotonic()
                await conn.execute("SELECT pg_notify('puppylog_alerts', $1)", alert_payload(i))
                sent[i] = before  # delivered at the (auto)commit, before execute returns
                await _sleep(0.05)
            deadline = time.monotonic() + 10
            while len(received) < 40 and time.monotonic() < deadline:
                await _sleep(0.05)
        finally:
            await conn.close()

    run_async(go)
    wait_for(lambda: len(watch.lines) >= 40, 20, message=watch.describe)
    shown = {}
    for t, line in watch.lines:
        hits = int(line.split("hits = ")[1].split(",")[0])
        shown[hits - 1000] = t

    def summary(name: str, delays: list[float]) -> str:
        delays = sorted(delays)
        p95 = delays[int(len(delays) * 0.95) - 1]
        return (
            f"{name}, {len(delays)} trials: median {statistics.median(delays):.2f} ms, "
            f"p95 {p95:.2f} ms, max {delays[-1]:.2f} ms\n"
        )

    from_send = [(shown[i] - sent[i]) * 1000 for i in range(1, 41)]
    from_listen = [(shown[i] - received[i]) * 1000 for i in range(1, 41)]
    report = summary("pg_notify sent -> line on the watch's stdout", from_send) + summary(
        "notification seen by a LISTENer in the test -> line on the watch's stdout", from_listen
    )
    median = statistics.median(from_send)
    Path("/tmp/puppylog-watch-latency.txt").write_text(report, encoding="utf-8")
    print(report)
    assert median < 100


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


def test_history_lists_past_alerts(db_dsn: str, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    start = recent(300)
    append(log, burst_lines(start, quiet_after=60))
    run_once(db_dsn, log, **FAST)
    env = {"PUPPYLOG_DSN": db_dsn, "COLUMNS": "140"}
    out = subprocess.run(
        [sys.executable, "-m", "puppylog_watch", "--history"],
        env=daemon_env(env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    # Piped: tab-separated, a header, then one line per alert.
    header, *alerts = [line.split("\t") for line in out.stdout.splitlines()]
    assert header[:4] == ["id", "triggered_utc", "recovered_utc", "duration_s"]
    assert len(alerts) == 1 and len(alerts[0]) == len(header)
    row = dict(zip(header, alerts[0], strict=True))
    assert datetime.fromisoformat(row["recovered_utc"]) > datetime.fromisoformat(
        row["triggered_utc"]
    )
    assert 0 < int(row["duration_s"]) < 300 and row["threshold"] == "5"  # FAST
    later = (start + timedelta(hours=1)).isoformat()
    none = subprocess.run(
        [sys.executable, "-m", "puppylog_watch", "--history", "--since", later],
        env=daemon_env(env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert none.returncode == 0 and none.stdout.splitlines() == ["\t".join(HISTORY_COLUMNS)]


def test_no_dsn_and_no_embedded_database_says_so(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "puppylog_watch", "--plain"],
        env=daemon_env({"PUPPYLOG_STATE_DIR": str(tmp_path / "state")}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 1
    assert "embedded database" in out.stderr and "not running" in out.stderr
    assert os.path.exists(tmp_path) and not (tmp_path / "state").exists()


def test_watch_reads_only_the_connection_settings_and_a_bad_one_is_exit_2(
    db_dsn: str, tmp_path: Path
) -> None:
    """The daemon's own settings are none of its business; its own bad setting is one line."""

    def watch(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "puppylog_watch", *args],
            env=daemon_env(env),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    daemon_only = {"PUPPYLOG_THRESHOLD": "-1", "PUPPYLOG_LOG_FILES": ""}
    query_val(db_dsn, "INSERT INTO puppylog.log_groups (name) VALUES ('default')")
    ok = watch("--history", env={"PUPPYLOG_DSN": db_dsn, **daemon_only})
    assert (ok.returncode, ok.stderr) == (0, ""), ok
    bad = watch("--history", env={"PUPPYLOG_DSN": "host=db dbname=puppylog"})
    assert bad.returncode == 2, bad
    assert bad.stderr.startswith("puppylog-watch: error: invalid setting dsn (--dsn / ")
    assert len(bad.stderr.splitlines()) == 1
    version = watch("--version", env={})
    assert version.returncode == 0 and version.stdout.startswith("puppylog-watch ")


def test_plain_watch_says_once_that_its_group_does_not_exist(
    db_dsn: str, watches: list[Watch]
) -> None:
    """Plain output prints nothing until a bucket closes: a mistyped --group must say so."""
    watch = Watch("--plain", "--dsn", db_dsn, "--group", "nosuch")
    watches.append(watch)

    def told() -> list[str]:
        return [e for e in watch.errors if "no group 'nosuch' in the database yet" in e]

    wait_for(told, 20, message=watch.describe)
    time.sleep(6.0)  # past the health probe (every 5 s), which reads the group again
    assert len(told()) == 1, watch.describe()
    assert watch.proc.poll() is None
    assert watch.text() == []


@pytest.mark.parametrize("mode", ["--plain", "--json"])
def test_a_reader_that_leaves_ends_the_watch_quietly(db_dsn: str, mode: str) -> None:
    """`puppylog-watch --plain | head -1` exits: a broken pipe is no lost database connection."""
    with subprocess.Popen(
        [sys.executable, "-m", "puppylog_watch", mode, "--dsn", db_dsn],
        env=daemon_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            wait_for(lambda: query_val(db_dsn, LISTENERS_SQL) == 1, 20)
            assert proc.stdout is not None
            query_val(db_dsn, "SELECT pg_notify('puppylog_alerts', $1)", alert_payload(1))
            assert proc.stdout.readline()  # what `head -1` reads before it leaves
            proc.stdout.close()
            for i in (3, 5):
                query_val(db_dsn, "SELECT pg_notify('puppylog_alerts', $1)", alert_payload(i))
            _, err = proc.communicate(timeout=15)
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    # The only notice is that the group does not exist yet (pg_notify made no group).
    assert [line for line in err.decode().splitlines() if "no group" not in line] == []


def test_an_output_that_cannot_be_written_is_one_line_and_exit_1(db_dsn: str) -> None:
    """`puppylog-watch --plain > /dev/full` says why it stops instead of reconnecting forever."""
    with open("/dev/full", "w", encoding="utf-8") as full:
        proc = subprocess.Popen(
            [sys.executable, "-m", "puppylog_watch", "--plain", "--dsn", db_dsn],
            env=daemon_env(),
            stdin=subprocess.DEVNULL,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
        )
    with proc:
        try:
            wait_for(lambda: query_val(db_dsn, LISTENERS_SQL) == 1, 20)
            query_val(db_dsn, "SELECT pg_notify('puppylog_alerts', $1)", alert_payload(1))
            _, err = proc.communicate(timeout=15)
        finally:
            proc.kill()
    assert proc.returncode == 1, err
    assert err.splitlines()[-1] == (
        "puppylog-watch: error: cannot write the output: [Errno 28] No space left on device"
    )
    assert [line for line in err.splitlines()[:-1] if "no group" not in line] == []


def test_history_of_a_group_that_does_not_exist_says_so(db_dsn: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "puppylog_watch", "--history", "--group", "typo"],
        env=daemon_env({"PUPPYLOG_DSN": db_dsn}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out
    assert out.stdout.splitlines() == ["\t".join(HISTORY_COLUMNS)]
    assert out.stderr == (
        "puppylog-watch: no group 'typo' in the database (a daemon's --group creates it)\n"
    )
