"""The seeded traffic generator: deterministic, parseable, realistic mix, a few bad lines."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from puppylogd.parser import Parser, Rejected
from puppylogd.traffic import (
    DEMO_PHASES,
    MALFORMED_SHARE,
    SECTIONS,
    Phase,
    TrafficGenerator,
    lines,
    schedule_lines,
    write_live,
)

START = datetime(2026, 11, 28, 4, 0, tzinfo=UTC)


def test_same_seed_same_lines_other_seed_other_lines() -> None:
    a = list(lines(20, 30, START, seed=7))
    b = list(lines(20, 30, START, seed=7))
    c = list(lines(20, 30, START, seed=8))
    assert a == b
    assert a != c
    assert len(a) == 600


def test_fractional_rates_average_out() -> None:
    assert len(list(lines(2.5, 10, START))) == 25


def test_lines_parse_and_malformed_share_is_a_few_percent() -> None:
    parser = Parser(stream_id=1)
    gen = TrafficGenerator(seed=3)
    t0 = START.timestamp()
    made = [gen.line(t0 + i // 50) for i in range(20000)]
    sections: Counter[str] = Counter()
    methods: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    v6 = users = 0
    bad = 0
    for line, valid in made:
        row = parser.parse(line.rstrip(b"\n"))
        if not valid:
            assert isinstance(row, Rejected), line
            bad += 1
            continue
        assert not isinstance(row, Rejected), (line, row)
        assert row[0] >= START
        sections[row[7]] += 1
        methods[row[5]] += 1
        statuses[row[9]] += 1
        v6 += isinstance(ipaddress.ip_address(row[2]), ipaddress.IPv6Address)
        users += row[4] is not None
    share = bad / len(made)
    assert 0.5 * MALFORMED_SHARE < share < 1.5 * MALFORMED_SHARE
    assert set(sections) == set(SECTIONS)
    assert {"GET", "POST", "PUT", "DELETE"} <= set(methods)
    assert {2, 3, 4, 5} <= {s // 100 for s in statuses}
    assert 0.1 < v6 / len(made) < 0.35
    assert 0.1 < users / len(made) < 0.4


def test_phases_shape_the_rate() -> None:
    phases = [Phase("quiet", 5, 2), Phase("burst", 5, 20), Phase("busy", 5, 8)]
    parser = Parser(stream_id=1)
    per_second: Counter[datetime] = Counter()
    for line in schedule_lines(phases, START, seed=1, malformed_share=0.0):
        row = parser.parse(line.rstrip(b"\n"))
        assert not isinstance(row, Rejected)
        per_second[row[0]] += 1
    counts = [per_second[datetime.fromtimestamp(START.timestamp() + i, UTC)] for i in range(15)]
    assert counts == [2] * 5 + [20] * 5 + [8] * 5


def test_demo_burst_raises_and_recovers_the_alert() -> None:
    # Simulate the 120 s window over the demo phases: fires in the burst, recovers < 4 min.
    rate = []
    for phase in DEMO_PHASES:
        n = 400 if phase.seconds == float("inf") else int(phase.seconds)
        rate += [phase.rate] * n
    avg = [sum(rate[max(0, t - 119) : t + 1]) / 120 for t in range(len(rate))]
    fired = next(t for t, a in enumerate(avg) if a > 10)
    recovered = next(t for t, a in enumerate(avg) if t > fired and a < 10)
    assert 20 < fired < 80
    assert recovered < 200


def test_write_live_appends_current_lines(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    stop = threading.Event()
    before = int(time.time())
    written = write_live(path, [Phase("steady", 2, 10)], seed=5, stop=stop)
    data = path.read_bytes().splitlines()
    assert written == len(data) == 20
    # The same seed makes the same lines, whatever their second: which ones are valid is
    # known, so a line that should parse cannot hide among the malformed ones.
    valid = [ok for _, ok in TrafficGenerator(seed=5).second(0, 20)]
    assert any(valid)
    parser = Parser(stream_id=1)
    rows = [parser.parse(line) for line in data]
    assert [not isinstance(row, Rejected) for row in rows] == valid
    for row in rows:
        if not isinstance(row, Rejected):
            assert before - 1 <= row[0].timestamp() <= time.time()
