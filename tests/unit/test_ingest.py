"""The pure helpers of the ingest: naming and splitting a batch by day partition."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from puppylogd.ingest import partition_of, split_by_day
from puppylogd.parser import RecordRow

MIDNIGHT = datetime(2026, 11, 29, tzinfo=UTC)


def row(ts: datetime, i: int = 0) -> RecordRow:
    return (ts, 1, "10.0.0.1", None, None, "GET", f"/p/{i}", "/p", "HTTP/1.1", 200, 1, None, None)


def test_partition_names_follow_ensure_partitions() -> None:
    assert partition_of(date(2026, 1, 2)) == "log_records_p20260102"


def test_an_empty_batch_has_no_day() -> None:
    assert split_by_day([]) == (None, None, [])


def test_a_one_day_batch_is_passed_through_whole() -> None:
    rows = [row(MIDNIGHT + timedelta(seconds=s)) for s in (5, 1, 9)]
    oldest, newest, days = split_by_day(rows)
    assert (oldest, newest) == (MIDNIGHT + timedelta(seconds=1), MIDNIGHT + timedelta(seconds=9))
    assert days == [(MIDNIGHT.date(), rows)]
    assert days[0][1] is rows  # no copy in the common case


@given(st.lists(st.integers(min_value=-3 * 86400, max_value=3 * 86400), max_size=60))
def test_rows_are_grouped_by_utc_day_in_order(offsets: list[int]) -> None:
    rows = [row(MIDNIGHT + timedelta(seconds=s), i) for i, s in enumerate(offsets)]
    oldest, newest, days = split_by_day(rows)
    assert oldest == (min(r[0] for r in rows) if rows else None)
    assert newest == (max(r[0] for r in rows) if rows else None)
    assert [d for d, _ in days] == sorted({r[0].date() for r in rows})
    for day, group in days:
        assert group == [r for r in rows if r[0].date() == day]  # input order kept
