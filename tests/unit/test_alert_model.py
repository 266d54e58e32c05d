"""The reference model of the alert rule, on its edges."""

from __future__ import annotations

from tests.alert_model import (
    AlertModel,
    ModelState,
    Transition,
    evaluate,
    intervals,
    per_second,
)


def steady(rate: int, start: int, seconds: int) -> dict[int, int]:
    """``rate`` hits in each second of ``[start, start + seconds)``."""
    return {s: rate for s in range(start, start + seconds)}


def test_exactly_at_the_threshold_changes_nothing() -> None:
    # 10 req/s for ever: hits = 1200, avg = 10.0, not above 10.
    assert evaluate(steady(10, 0, 1000), 1000) == []
    # One more record tips it over, at the second it arrives.
    hits = steady(10, 0, 1000)
    hits[500] += 1
    # At 620 the extra record has left the window: exactly 1200 again, which does not
    # recover; only the end of traffic (window 881..1000 holds 1190) does.
    assert evaluate(hits, 1000) == [
        Transition("alert", 500, 1201),
        Transition("recovery", 1000, 1190),
    ]


def test_equal_to_the_threshold_does_not_recover() -> None:
    # Firing at 1201, then exactly 1200 for a long time: still firing.
    hits = {0: 1201, **steady(10, 120, 500)}
    # t=119: window [0, 119] holds 1201 + 0; t=120 drops second 0 and adds second 120.
    trs = evaluate(hits, 300)
    assert trs == [Transition("alert", 0, 1201), Transition("recovery", 120, 10)]
    hits2 = {0: 1201, 1: 0, **{s: 10 for s in range(1, 700)}}
    # From t=120 on the window is 120 x 10 = 1200 exactly: no recovery while it lasts.
    trs2 = evaluate(hits2, 500)
    assert trs2 == [Transition("alert", 0, 1201)]


def test_a_record_counts_for_exactly_120_seconds() -> None:
    hits = {0: 1201}
    # Second 119 is the 120th second of the window: the record still counts.
    assert evaluate(hits, 119) == [Transition("alert", 0, 1201)]
    # Second 120 (the 121st) no longer holds it: recovery with hits = 0.
    assert evaluate(hits, 120) == [Transition("alert", 0, 1201), Transition("recovery", 120, 0)]


def test_ramp_fires_at_the_first_second_above() -> None:
    # 11 req/s from second 0: hits(t) = 11 (t + 1) > 1200 first at t = 109.
    trs = evaluate(steady(11, 0, 300), 299)
    assert trs == [Transition("alert", 109, 1210)]


def test_gap_in_traffic() -> None:
    # 21 req/s for 60 s: 21 (t + 1) > 1200 first at t = 57.
    burst = steady(21, 0, 60)
    # Then nothing: hits(t) = 21 (179 - t) < 1200 first at t = 122 (hits 1197).
    assert evaluate(burst, 400) == [
        Transition("alert", 57, 1197 + 21),
        Transition("recovery", 122, 1197),
    ]
    # A short gap (traffic again from 100 on) keeps the window above: one long alert.
    short_gap = {**burst, **steady(21, 100, 60)}
    trs = evaluate(short_gap, 600)
    assert [t.kind for t in trs] == ["alert", "recovery"]
    assert trs[0].t == 57
    # hits(t) = 21 * (159 - t + 120) < 1200 first at t = 222.
    assert trs[1] == Transition("recovery", 222, 21 * 57)
    # A gap longer than the window: two separate alerts.
    long_gap = {**burst, **steady(21, 300, 60)}
    assert [(t.kind, t.t) for t in evaluate(long_gap, 700)] == [
        ("alert", 57),
        ("recovery", 122),
        ("alert", 357),
        ("recovery", 422),
    ]


def test_traffic_stopping_for_good_recovers() -> None:
    # The scenario: 20 req/s for 180 s then nothing.
    hits = steady(20, 0, 180)
    assert evaluate(hits, 239) == [Transition("alert", 60, 1220)]
    assert evaluate(hits, 240) == [
        Transition("alert", 60, 1220),
        Transition("recovery", 240, 1180),
    ]
    assert evaluate(hits, 10_000) == evaluate(hits, 240)
    assert intervals(evaluate(hits, 240)) == [(60, 1220, 240, 1180)]


def test_out_of_order_lines() -> None:
    timestamps = [s for s in range(180) for _ in range(20)]
    shuffled = timestamps[::-1]
    assert per_second(shuffled) == per_second(timestamps)
    # Lines arriving up to 2 s out of order, seconds closed as a 2 s lateness allows: the
    # incremental evaluation sees complete seconds and agrees with a single pass.
    lateness = 2
    arrival = sorted(timestamps, key=lambda s: (s + (s % 3) * 1, s))
    model = AlertModel()
    seen: dict[int, int] = {}
    trs: list[Transition] = []
    newest = None
    for ts in arrival:
        seen[ts] = seen.get(ts, 0) + 1
        newest = ts if newest is None else max(newest, ts)
        trs += model.close_through(seen, newest - lateness - 1)
    trs += model.close_through(seen, 400)
    assert trs == evaluate(per_second(timestamps), 400)


def test_restart_in_the_middle_of_an_alert() -> None:
    hits = {**steady(20, 0, 180), **steady(15, 500, 300)}
    whole = evaluate(hits, 1200)
    for cut in (60, 100, 239, 240, 600, 799):
        first = AlertModel()
        part1 = first.close_through(hits, cut)
        saved = ModelState(first.state.closed_through, first.state.firing)
        second = AlertModel(state=saved)
        part2 = second.close_through(hits, 1200)
        assert part1 + part2 == whole, cut
    assert [t.kind for t in whole] == ["alert", "recovery", "alert", "recovery"]


def test_recovery_threshold_is_hysteresis() -> None:
    hits = steady(20, 0, 180)
    trs = evaluate(hits, 400, recovery_threshold=5.0)
    # avg < 5  <=>  hits < 600  <=>  20 (299 - t) < 600  <=>  t > 269.
    assert trs == [Transition("alert", 60, 1220), Transition("recovery", 270, 580)]


def test_nothing_before_the_first_record() -> None:
    assert evaluate({}, 100) == []
    assert evaluate({50: 5}, 10) == []
    model = AlertModel(window=1, threshold=0.5)
    assert model.close_through({5: 1}, 7) == [
        Transition("alert", 5, 1),
        Transition("recovery", 6, 0),
    ]
    assert model.state.closed_through == 7
