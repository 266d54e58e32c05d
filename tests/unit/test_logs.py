"""Tests for puppylogd.logs: rendering, journald prefixes, masking and rate limiting."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from puppylogd.logs import RateLimitedReporter, configure_logging, get_logger, mask_dsn

STABLE_KEYS = ["timestamp", "level", "logger", "event"]


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    structlog.reset_defaults()


def _json_lines(buf: io.StringIO) -> list[dict[str, Any]]:
    lines = buf.getvalue().splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]


def test_json_one_object_per_line_with_stable_keys() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    log = get_logger("puppylogd.test")
    log.info("started", files=2)
    log.warning("slow commit", ms=812.5)
    log.debug("hidden")
    records = _json_lines(buf)
    assert len(records) == 2
    for record in records:
        assert list(record)[:4] == STABLE_KEYS
        assert record["logger"] == "puppylogd.test"
        assert record["timestamp"].endswith("Z")  # ISO 8601, UTC
    assert records[0]["level"] == "info"
    assert records[0]["event"] == "started"
    assert records[0]["files"] == 2
    assert records[1]["level"] == "warning"


def test_stdlib_logging_uses_the_same_format() -> None:
    buf = io.StringIO()
    configure_logging("debug", "json", buf)
    logging.getLogger("asyncpg.pool").warning("connection %s lost", "#3")
    (record,) = _json_lines(buf)
    assert list(record)[:4] == STABLE_KEYS
    assert record["logger"] == "asyncpg.pool"
    assert record["level"] == "warning"
    assert record["event"] == "connection #3 lost"


def test_level_filters_structlog_and_stdlib() -> None:
    buf = io.StringIO()
    configure_logging("warning", "json", buf)
    get_logger("puppylogd.test").info("dropped")
    logging.getLogger("asyncpg").info("dropped too")
    get_logger("puppylogd.test").error("kept")
    assert [r["event"] for r in _json_lines(buf)] == ["kept"]


def test_exception_stays_on_one_json_line() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    log = get_logger("puppylogd.test")
    try:
        raise RuntimeError("cannot reach postgresql://ingest:hunter2@db/puppylog")
    except RuntimeError:
        log.exception("ingest failed", stream="/tmp/access.log")
        logging.getLogger("asyncpg").error("pool error", exc_info=True)
    text = buf.getvalue()
    assert text.count("\n") == 2
    first, second = _json_lines(buf)
    for record in (first, second):
        assert record["level"] == "error"
        assert "Traceback (most recent call last)" in record["exception"]
        assert "RuntimeError" in record["exception"]
        assert "hunter2" not in record["exception"]
        assert "postgresql://ingest:***@db/puppylog" in record["exception"]
    assert first["stream"] == "/tmp/access.log"


def test_masking_in_event_and_fields() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    get_logger("puppylogd.test").info(
        "connecting to postgresql://app:s3cret@db:5432/logs",
        dsn="host=db user=app password=s3cret dbname=logs",
        nested={"urls": ["postgres://u:s3cret@h/x"]},
        password="s3cret",
        error=ValueError("password=s3cret rejected"),
    )
    text = buf.getvalue()
    assert "s3cret" not in text
    (record,) = _json_lines(buf)
    assert record["event"] == "connecting to postgresql://app:***@db:5432/logs"
    assert record["dsn"] == "host=db user=app password=*** dbname=logs"
    assert record["nested"] == {"urls": ["postgres://u:***@h/x"]}
    assert record["password"] == "***"
    assert record["error"] == "ValueError: password=*** rejected"


def test_masking_of_stdlib_records() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    logging.getLogger("asyncpg").warning("retrying %s", "postgresql://a:pw@h/db")
    (record,) = _json_lines(buf)
    assert record["event"] == "retrying postgresql://a:***@h/db"


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("postgresql://user:secret@host", "postgresql://user:***@host"),
        (
            "postgresql://user:secret@host:5432/db?sslmode=require",
            "postgresql://user:***@host:5432/db?sslmode=require",
        ),
        ("postgres://u:p@ss@host/db", "postgres://u:***@host/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("postgresql:///db?host=/run/postgresql", "postgresql:///db?host=/run/postgresql"),
        (
            "postgresql://h/db?user=u&password=secret&x=1",
            "postgresql://h/db?user=u&password=***&x=1",
        ),
        ("host=h password=secret dbname=d", "host=h password=*** dbname=d"),
        ("host=h password='sec ret\\'s' dbname=d", "host=h password=*** dbname=d"),
        ("host=h PASSWORD = secret", "host=h PASSWORD = ***"),
        ("PGPASSWORD=secret", "PGPASSWORD=***"),
        ("dsn 'postgresql://a:secret@b' failed", "dsn 'postgresql://a:***@b' failed"),
        ("no secrets here: /pages/create 200", "no secrets here: /pages/create 200"),
        ("user=app dbname=logs", "user=app dbname=logs"),
    ],
)
def test_mask_dsn(raw: str, masked: str) -> None:
    assert mask_dsn(raw) == masked


def test_pretty_mode_is_readable_and_masked() -> None:
    buf = io.StringIO()
    configure_logging("info", "pretty", buf)
    get_logger("puppylogd.test").info("hello", dsn="postgresql://a:pw@h")
    text = buf.getvalue()
    assert "hello" in text
    assert "postgresql://a:***@h" in text
    assert "pw@" not in text
    assert not text.lstrip().startswith("{")


def test_auto_picks_json_off_a_terminal() -> None:
    buf = io.StringIO()
    configure_logging("info", "auto", buf)
    get_logger("puppylogd.test").info("x")
    assert _json_lines(buf)[0]["event"] == "x"


def test_auto_picks_pretty_on_a_terminal() -> None:
    class FakeTTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    buf = FakeTTY()
    configure_logging("info", "auto", buf)
    get_logger("puppylogd.test").info("ready", files=2)
    text = buf.getvalue()
    # Written to the stream given (no output would pass for "not JSON"), coloured, one line.
    assert text.count("\n") == 1 and not text.startswith("{")
    assert "ready" in text and "puppylogd.test" in text
    assert "\x1b[" in text


def test_reconfigure_replaces_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first)
    configure_logging("info", "json", second)
    get_logger("puppylogd.test").info("once")
    assert first.getvalue() == ""
    assert len(_json_lines(second)) == 1


def test_bad_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("loud")


def test_journald_priority_prefix_when_stream_is_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal"
    with path.open("w", encoding="utf-8") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        configure_logging("debug", "json", stream)
        log = get_logger("puppylogd.test")
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        log.critical("c")
        logging.getLogger("asyncpg").warning("stdlib")
        stream.flush()
    lines = path.read_text(encoding="utf-8").splitlines()
    prefixes = [line[: line.index("{")] for line in lines]
    assert prefixes == ["<7>", "<6>", "<4>", "<3>", "<2>", "<4>"]
    assert json.loads(lines[2][3:])["event"] == "w"


def test_no_prefix_when_journal_stream_is_another_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    other.touch()
    st = other.stat()
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    path = tmp_path / "out"
    with path.open("w", encoding="utf-8") as stream:
        configure_logging("info", "json", stream)
        get_logger("puppylogd.test").warning("w")
    assert path.read_text(encoding="utf-8").startswith("{")


class FakeClock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingLog:
    """Collect (level, event, fields) calls like a structlog logger would receive them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def record(event: str, **fields: Any) -> None:
            self.calls.append((level, event, fields))

        return record


def test_rate_limit_exact_counts() -> None:
    clock, log = FakeClock(), RecordingLog()
    reporter = RateLimitedReporter(limit=5, interval=10.0, clock=clock)
    logged = [reporter.report(log, "rejected line", line_no=i) for i in range(12)]
    assert logged == [True] * 5 + [False] * 7
    assert [c[2]["line_no"] for c in log.calls] == [0, 1, 2, 3, 4]
    assert reporter.suppressed == 7

    clock.now += 9.999  # still inside the window
    assert reporter.report(log, "rejected line", line_no=12) is False
    assert len(log.calls) == 5

    clock.now += 0.001  # window rolls over: summary first, then the new line
    assert reporter.report(log, "rejected line", line_no=13) is True
    summary, line = log.calls[5], log.calls[6]
    assert summary[0] == "warning"
    assert summary[1] == "rejected lines suppressed"
    assert summary[2]["suppressed"] == 8
    assert summary[2]["suppressed_event"] == "rejected line"
    assert line[1:] == ("rejected line", {"line_no": 13})
    assert reporter.suppressed == 0


def test_rate_limit_flush_and_tick() -> None:
    clock, log = FakeClock(), RecordingLog()
    reporter = RateLimitedReporter(limit=2, interval=10.0, clock=clock)
    for i in range(5):
        reporter.report(log, "rejected line", line_no=i)
    reporter.tick()  # interval not over yet: nothing
    assert len(log.calls) == 2
    clock.now += 10
    reporter.tick()
    assert log.calls[-1][1] == "rejected lines suppressed"
    assert log.calls[-1][2]["suppressed"] == 3
    reporter.tick()
    reporter.flush()
    assert len(log.calls) == 3  # nothing pending: no empty summaries

    reporter.report(log, "rejected line", line_no=5)
    reporter.report(log, "rejected line", line_no=6)
    reporter.report(log, "rejected line", line_no=7)
    reporter.flush()
    assert log.calls[-1][2]["suppressed"] == 1
    assert reporter.suppressed == 0


def test_rate_limit_is_per_key() -> None:
    clock, log = FakeClock(), RecordingLog()
    reporter = RateLimitedReporter(limit=1, interval=10.0, clock=clock)
    assert reporter.report(log, "rejected line", rate_key="/a", file="/a")
    assert reporter.report(log, "rejected line", rate_key="/b", file="/b")
    assert not reporter.report(log, "rejected line", rate_key="/a", file="/a")
    reporter.flush()
    summaries = [c for c in log.calls if c[1] == "rejected lines suppressed"]
    assert len(summaries) == 1
    assert summaries[0][2]["rate_key"] == "/a"
    assert summaries[0][2]["suppressed"] == 1


def test_rate_limit_through_real_logging() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    clock = FakeClock()
    reporter = RateLimitedReporter(clock=clock)
    log = get_logger("puppylogd.tailer")
    for i in range(8):
        reporter.report(log, "rejected line", reason="bad request line", line_no=i)
    reporter.flush()
    records = _json_lines(buf)
    assert [r["event"] for r in records] == ["rejected line"] * 5 + ["rejected lines suppressed"]
    assert records[-1]["suppressed"] == 3
    assert records[-1]["level"] == "warning"
