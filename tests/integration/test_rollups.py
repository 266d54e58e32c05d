"""The rollup trigger against a plain-Python recomputation from the same records.

Random rows over two groups (three streams), several COPY statements into the parent and into
the day partition, keys longer than the 200-character cut (some equal after it), rows without
a user, every status class: after each statement, ``stats_seconds`` and ``bucket_counts`` must
equal what the records imply.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from puppylogd.ingest import partition_of
from puppylogd.parser import COLUMNS

T0 = datetime(2026, 11, 28, 4, 0, 0, tzinfo=UTC)
STATUSES = (101, 200, 204, 301, 304, 404, 499, 500, 503, 999)


def random_rows(rnd: random.Random, streams: list[int], n: int) -> list[tuple[Any, ...]]:
    """Build ``n`` record rows spread over 95 seconds, in no particular order."""
    long_a = "/" + "a" * 250  # two keys equal in their first 200 characters
    long_b = "/" + "a" * 199 + "b" * 60
    sections = ["/", "/pages", "/api", "/Ünïcode", long_a, long_b]
    methods = ["GET", "POST", "HEAD", "M" * 300]
    users = [None, None, "", "ana", "raj", "u" * 240 + "1", "u" * 240 + "2"]
    rows = []
    for _ in range(n):
        section = rnd.choice(sections)
        rows.append(
            (
                T0 + timedelta(seconds=rnd.randrange(95)),
                rnd.choice(streams),
                f"10.0.0.{rnd.randrange(9)}",
                None,
                rnd.choice(users),
                rnd.choice(methods),
                section + "/x",
                section,
                "HTTP/1.1",
                rnd.choice(STATUSES),
                rnd.choice([None, 0, 17, 10**12]),
                None,
                None,
            )
        )
    return rows


def expected(
    rows: list[tuple[Any, ...]], group_of: dict[int, int]
) -> tuple[dict[tuple[Any, ...], tuple[int, ...]], Counter[tuple[Any, ...]]]:
    """Recompute both rollups from the records."""
    seconds: dict[tuple[Any, ...], list[int]] = {}
    counts: Counter[tuple[Any, ...]] = Counter()
    for ts, sid, _h, _i, user, method, _p, section, _pr, status, size, _r, _a in rows:
        gid = group_of[sid]
        s = seconds.setdefault((gid, ts), [0] * 7)
        s[0] += 1
        s[1] += size or 0
        cls = status // 100
        s[2 + (cls - 2 if 2 <= cls <= 5 else 4)] += 1
        bucket = ts - timedelta(seconds=ts.second % 10)
        for dim, key in (("s", section), ("m", method), ("u", user)):
            if key is not None:
                counts[(gid, bucket, dim, key[:200])] += 1
    return {k: tuple(v) for k, v in seconds.items()}, counts


async def test_rollups_equal_a_recomputation_from_the_records(db: asyncpg.Connection) -> None:
    rnd = random.Random(20261128)
    group_of: dict[int, int] = {}
    for name, hosts in (("one", ["h1", "h2"]), ("two", ["h3"])):
        gid = await db.fetchval(
            "INSERT INTO puppylog.log_groups (name) VALUES ($1) RETURNING id", name
        )
        for host in hosts:
            sid = await db.fetchval(
                "INSERT INTO puppylog.log_streams (group_id, host, path) "
                "VALUES ($1, $2, '/a.log') RETURNING id",
                gid,
                host,
            )
            group_of[sid] = gid
    await db.execute("SELECT puppylog.ensure_partitions($1, $1)", T0.date())
    stored: list[tuple[Any, ...]] = []
    # Through the parent (its own trigger) and straight into the day partition (the
    # partition's trigger, as the daemon does): each statement must be counted exactly once.
    targets = ["log_records", partition_of(T0.date())] * 2
    for n, target in zip((1, 700, 2500, 40), targets, strict=True):
        batch = random_rows(rnd, list(group_of), n)
        await db.copy_records_to_table(
            target, schema_name="puppylog", columns=COLUMNS, records=batch
        )
        stored += batch
        want_seconds, want_counts = expected(stored, group_of)
        got_seconds = {
            (r["group_id"], r["ts"]): tuple(r.values())[2:]
            for r in await db.fetch(
                "SELECT group_id, ts, hits, bytes, s2xx, s3xx, s4xx, s5xx, s_other "
                "FROM puppylog.stats_seconds"
            )
        }
        got_counts = {
            (r["group_id"], r["bucket"], r["dim"].decode(), r["key"]): r["hits"]
            for r in await db.fetch(
                "SELECT group_id, bucket, dim, key, hits FROM puppylog.bucket_counts"
            )
        }
        assert got_seconds == want_seconds
        assert got_counts == dict(want_counts)
    # The data exercised what it is meant to: a cut that merges keys, users missing.
    assert any(len(k[3]) == 200 and c > 1 for k, c in want_counts.items())
    assert sum(1 for r in stored if r[4] is None) > 100


# 0002's bucket_of, which 0007 replaces with date_bin on PostgreSQL >= 14.
FORMULA_0002 = "to_timestamp(floor(date_part('epoch', t) / 10) * 10)"


async def test_bucket_of_bins_like_0002s_formula(db: asyncpg.Connection) -> None:
    """Same bucket as 0002's float formula for every timestamp a record can have.

    Whole seconds over years 1 to 9999 (the precision of a CLF timestamp), microseconds over
    1970-2100 (where the float formula is exact), and both sides of bucket edges.
    """
    await db.execute("SELECT setseed(0.42)")
    sample = f"""
        WITH t (t) AS (
            SELECT timestamptz '0001-01-01 00:00:00+00'
                   + make_interval(secs => floor(random() * 315537897600))
            FROM generate_series(1, 20000)
            UNION ALL
            SELECT timestamptz '1970-01-01 00:00:00+00'
                   + make_interval(secs => round((random() * 4102444800)::numeric, 6))
            FROM generate_series(1, 20000)
            UNION ALL
            SELECT timestamptz '2026-11-28 04:00:00+00' + make_interval(secs => 10 * i)
                   + d * interval '1 microsecond'
            FROM generate_series(-30, 30) i, (VALUES (-1), (0), (1)) v (d)
            UNION ALL
            VALUES (timestamptz '0001-01-01 00:00:00+00'), (timestamptz '9999-12-31 23:59:59+00')
        )
        SELECT count(*) AS n,
               count(*) FILTER (WHERE puppylog.bucket_of(t) IS DISTINCT FROM {FORMULA_0002})
                   AS differ,
               count(DISTINCT puppylog.bucket_of(t)) AS buckets
        FROM t
    """
    row = await db.fetchrow(sample)
    assert row is not None
    assert row["n"] == 40_185
    assert row["differ"] == 0
    assert row["buckets"] > 40_000  # the values are spread, not all in one bucket

    # A few by hand, computed here rather than by either formula.
    for text, want in [
        ("2026-11-28 04:00:09.999999+00", datetime(2026, 11, 28, 4, 0, 0, tzinfo=UTC)),
        ("2026-11-28 04:00:10+00", datetime(2026, 11, 28, 4, 0, 10, tzinfo=UTC)),
        ("2026-11-28 06:00:19+02", datetime(2026, 11, 28, 4, 0, 10, tzinfo=UTC)),
        ("0001-01-01 00:00:05+00", datetime(1, 1, 1, 0, 0, 0, tzinfo=UTC)),
    ]:
        assert await db.fetchval("SELECT puppylog.bucket_of($1::text::timestamptz)", text) == want


async def test_bucket_of_uses_date_bin_where_the_server_has_it(db: asyncpg.Connection) -> None:
    """0007 takes effect on PostgreSQL >= 14, 0002's formula stays on 13; both are inlined."""
    version = int(await db.fetchval("SHOW server_version_num"))
    body = await db.fetchval("SELECT prosrc FROM pg_proc WHERE oid = 'puppylog.bucket_of'::regproc")
    assert ("date_bin" in body) == (version >= 140000), body
    # Inlined: the plan computes the expression itself, no call per row to bucket_of.
    plan = "\n".join(
        r[0]
        for r in await db.fetch(
            "EXPLAIN (VERBOSE, COSTS OFF) SELECT puppylog.bucket_of(ts) FROM puppylog.stats_seconds"
        )
    )
    assert "bucket_of" not in plan, plan
    assert ("date_bin" in plan) == (version >= 140000), plan
