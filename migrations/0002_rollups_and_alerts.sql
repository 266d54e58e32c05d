-- Incremental rollups, watermark-driven evaluation of the high-traffic alert and the 10-second
-- stats, announced with pg_notify. Time semantics are described in README.md.

-- Per group and second of event time: the alert's input.
CREATE TABLE puppylog.stats_seconds (
    group_id integer NOT NULL REFERENCES puppylog.log_groups (id) ON DELETE CASCADE,
    ts       timestamptz NOT NULL,
    hits     bigint NOT NULL,
    bytes    bigint NOT NULL,
    s2xx     bigint NOT NULL,
    s3xx     bigint NOT NULL,
    s4xx     bigint NOT NULL,
    s5xx     bigint NOT NULL,
    s_other  bigint NOT NULL,
    PRIMARY KEY (group_id, ts)
);

-- Per group, 10-second bucket and dimension ('s' section, 'm' method, 'u' user): hits.
-- Keys are cut to 200 characters to keep index entries small. Unique clients are counted from
-- log_records when a bucket closes.
CREATE TABLE puppylog.bucket_counts (
    group_id integer NOT NULL REFERENCES puppylog.log_groups (id) ON DELETE CASCADE,
    bucket   timestamptz NOT NULL,
    dim      "char" NOT NULL,
    key      text NOT NULL,
    hits     bigint NOT NULL,
    PRIMARY KEY (group_id, bucket, dim, key)
);

-- Every published stats summary, for late joiners.
CREATE TABLE puppylog.stats_buckets (
    group_id integer NOT NULL REFERENCES puppylog.log_groups (id) ON DELETE CASCADE,
    bucket   timestamptz NOT NULL,
    payload  jsonb NOT NULL,
    PRIMARY KEY (group_id, bucket)
);

-- One row per alert: when it fired and when (if yet) it recovered.
CREATE TABLE puppylog.alert_history (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_id           integer NOT NULL REFERENCES puppylog.log_groups (id) ON DELETE CASCADE,
    triggered_at       timestamptz NOT NULL,
    hits_at_trigger    bigint NOT NULL,
    avg_at_trigger     double precision NOT NULL,
    threshold          double precision NOT NULL,
    recovery_threshold double precision NOT NULL,
    window_s           integer NOT NULL,
    recovered_at       timestamptz,
    hits_at_recovery   bigint,
    avg_at_recovery    double precision,
    notified_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX alert_history_group_triggered ON puppylog.alert_history (group_id, triggered_at);

-- Format a timestamp as ISO 8601 in UTC with an explicit offset, as the messages show it.
CREATE FUNCTION puppylog.iso(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"')
$$;

-- Start of the 10-second bucket holding t (date_bin needs PostgreSQL 14; we support 13).
-- STABLE (date_part on timestamptz is) so the planner inlines it: a per-row function call
-- would dominate the rollup trigger's cost.
CREATE FUNCTION puppylog.bucket_of(t timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_timestamp(floor(date_part('epoch', t) / 10) * 10)
$$;

-- Keep the rollups current, in the ingest transaction, once per COPY statement.
CREATE FUNCTION puppylog.rollup_records() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = puppylog, pg_temp AS $$
BEGIN
    -- ORDER BY: concurrent daemons upsert the same rows in the same order, so they queue
    -- rather than deadlock.
    INSERT INTO puppylog.stats_seconds AS s
        (group_id, ts, hits, bytes, s2xx, s3xx, s4xx, s5xx, s_other)
    SELECT st.group_id, n.ts, count(*), coalesce(sum(n.bytes), 0),
           count(*) FILTER (WHERE n.status BETWEEN 200 AND 299),
           count(*) FILTER (WHERE n.status BETWEEN 300 AND 399),
           count(*) FILTER (WHERE n.status BETWEEN 400 AND 499),
           count(*) FILTER (WHERE n.status BETWEEN 500 AND 599),
           count(*) FILTER (WHERE n.status < 200 OR n.status > 599)
    FROM new_rows n
    JOIN puppylog.log_streams st ON st.id = n.stream_id
    GROUP BY st.group_id, n.ts
    ORDER BY st.group_id, n.ts
    ON CONFLICT (group_id, ts) DO UPDATE SET
        hits = s.hits + excluded.hits,
        bytes = s.bytes + excluded.bytes,
        s2xx = s.s2xx + excluded.s2xx,
        s3xx = s.s3xx + excluded.s3xx,
        s4xx = s.s4xx + excluded.s4xx,
        s5xx = s.s5xx + excluded.s5xx,
        s_other = s.s_other + excluded.s_other;

    -- The bucket is computed once per row (not once per row and dimension), keys are
    -- grouped and ordered bytewise (COLLATE "C": a locale-aware sort costs several times more).
    WITH rows AS MATERIALIZED (
        SELECT n.stream_id, puppylog.bucket_of(n.ts) AS bucket,
               n.section, n.method, n.auth_user
        FROM new_rows n
    ), keyed AS (
        SELECT r.stream_id, r.bucket, v.dim, left(v.key, 200) COLLATE "C" AS key,
               count(*) AS hits
        FROM rows r
        CROSS JOIN LATERAL (VALUES ('s'::"char", r.section), ('m', r.method),
                                   ('u', r.auth_user)) AS v (dim, key)
        WHERE v.key IS NOT NULL
        GROUP BY 1, 2, 3, 4
    )
    INSERT INTO puppylog.bucket_counts AS b (group_id, bucket, dim, key, hits)
    SELECT st.group_id, k.bucket, k.dim, k.key, sum(k.hits)
    FROM keyed k
    JOIN puppylog.log_streams st ON st.id = k.stream_id
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (group_id, bucket, dim, key) DO UPDATE SET hits = b.hits + excluded.hits;
    RETURN NULL;
END;
$$;

CREATE TRIGGER log_records_rollup
    AFTER INSERT ON puppylog.log_records
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION puppylog.rollup_records();

-- Hits in the window ending at second t: records with timestamp in [t - window + 1 s, t].
CREATE FUNCTION puppylog.window_hits(p_group integer, p_t timestamptz, p_window integer)
RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(hits), 0)::bigint
    FROM puppylog.stats_seconds
    WHERE group_id = p_group
      AND ts > p_t - make_interval(secs => p_window) AND ts <= p_t
$$;

-- The level of every second in (p_from, p_to] at which the alert rule can change its mind:
-- +1 above the threshold, -1 below the recovery threshold, 0 in between. Seconds whose window
-- holds no traffic are skipped except the first one after traffic (where a recovery can
-- happen), so long idle gaps cost nothing. One pass: the candidate seconds are the islands
-- [first traffic, last traffic + window] of the traffic, and each window's hits is a running
-- sum over a RANGE frame (no per-second subquery).
CREATE FUNCTION puppylog.second_levels(
    p_group integer, p_from timestamptz, p_to timestamptz, p_window integer,
    p_threshold double precision, p_recovery double precision)
RETURNS TABLE (t timestamptz, hits bigint, avg double precision, level integer)
LANGUAGE sql STABLE AS $$
    WITH traffic AS (
        SELECT s.ts, s.hits
        FROM puppylog.stats_seconds s
        WHERE s.group_id = p_group
          AND s.ts > p_from - make_interval(secs => p_window)
          AND s.ts <= p_to
    ), marked AS (
        -- A new island starts where the previous second with traffic is out of reach.
        SELECT tr.ts,
               CASE WHEN lag(tr.ts) OVER (ORDER BY tr.ts)
                         >= tr.ts - make_interval(secs => p_window + 1)
                    THEN 0 ELSE 1 END AS starts
        FROM traffic tr
    ), islands AS (
        SELECT m.ts, sum(m.starts) OVER (ORDER BY m.ts) AS island FROM marked m
    ), spans AS (
        SELECT min(i.ts) AS lo, max(i.ts) + make_interval(secs => p_window) AS hi
        FROM islands i GROUP BY i.island
    ), timeline AS (
        -- Every candidate second (with its own hits), plus the traffic before p_from that
        -- still lies in the first candidates' windows.
        SELECT c.t, coalesce(tr.hits, 0) AS hits, true AS candidate
        FROM spans sp
        CROSS JOIN LATERAL generate_series(greatest(sp.lo, p_from + interval '1 second'),
                                           least(sp.hi, p_to), interval '1 second') AS c (t)
        LEFT JOIN traffic tr ON tr.ts = c.t
        UNION ALL
        SELECT tr.ts, tr.hits, false FROM traffic tr WHERE tr.ts <= p_from
    ), summed AS (
        SELECT tl.t, tl.candidate,
               sum(tl.hits) OVER (ORDER BY tl.t RANGE BETWEEN
                                  make_interval(secs => p_window - 1) PRECEDING
                                  AND CURRENT ROW)::bigint AS hits
        FROM timeline tl
    )
    SELECT sm.t, sm.hits, sm.hits::double precision / p_window,
           CASE WHEN sm.hits::double precision / p_window > p_threshold THEN 1
                WHEN sm.hits::double precision / p_window < p_recovery THEN -1
                ELSE 0 END
    FROM summed sm
    WHERE sm.candidate
    ORDER BY sm.t
$$;

-- Stateless: the alert intervals implied by the per-second rollup alone, evaluated with the
-- group's current settings over all of its history. Agrees with alert_history when no line
-- arrived later than the allowed lateness and the settings did not change.
CREATE FUNCTION puppylog.alert_intervals(p_group integer)
RETURNS TABLE (triggered_at timestamptz, hits_at_trigger bigint,
               recovered_at timestamptz, hits_at_recovery bigint)
LANGUAGE sql STABLE AS $$
    WITH g AS (
        SELECT id, window_s, threshold, coalesce(recovery_threshold, threshold) AS recovery,
               closed_through
        FROM puppylog.log_groups WHERE id = p_group
    ), lv AS (
        SELECT l.* FROM g, puppylog.second_levels(
            g.id, (SELECT min(ts) - interval '1 second' FROM puppylog.stats_seconds
                   WHERE group_id = p_group),
            g.closed_through, g.window_s, g.threshold, g.recovery) AS l
        WHERE l.level <> 0
    ), changes AS (
        SELECT lv.*, lag(lv.level) OVER (ORDER BY lv.t) AS prev FROM lv
    ), edges AS (
        -- A transition is a level different from the last non-zero level; the state starts OK.
        SELECT c.t, c.hits, c.level FROM changes c
        WHERE (c.level = 1 AND c.prev IS DISTINCT FROM 1) OR (c.level = -1 AND c.prev = 1)
    ), paired AS (
        SELECT e.*, lead(e.t) OVER (ORDER BY e.t) AS next_t,
               lead(e.hits) OVER (ORDER BY e.t) AS next_hits
        FROM edges e
    )
    SELECT p.t, p.hits, p.next_t, p.next_hits FROM paired p WHERE p.level = 1 ORDER BY p.t
$$;

-- The versioned JSON announced for an alert ('alert') or its recovery ('recovery').
CREATE FUNCTION puppylog.alert_payload(h puppylog.alert_history, p_kind text, p_group text)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_kind = 'alert' THEN jsonb_build_object(
        'v', 1, 'type', 'alert', 'group', p_group, 'alert_id', h.id,
        'at', puppylog.iso(h.triggered_at), 'hits', h.hits_at_trigger,
        'avg', round(h.avg_at_trigger::numeric, 3), 'threshold', h.threshold,
        'window_s', h.window_s,
        'message', format('High traffic generated an alert - hits = %s, triggered at %s',
                          h.hits_at_trigger, puppylog.iso(h.triggered_at)))
    ELSE jsonb_build_object(
        'v', 1, 'type', 'recovery', 'group', p_group, 'alert_id', h.id,
        'at', puppylog.iso(h.recovered_at), 'triggered_at', puppylog.iso(h.triggered_at),
        'hits', h.hits_at_recovery, 'avg', round(h.avg_at_recovery::numeric, 3),
        'threshold', h.recovery_threshold, 'window_s', h.window_s,
        'message', format('High traffic alert recovered - hits = %s, recovered at %s',
                          h.hits_at_recovery, puppylog.iso(h.recovered_at)))
    END
$$;

-- Every alert and recovery, with the payload that was notified: what a client replays after
-- (re)connecting.
CREATE VIEW puppylog.alert_events AS
    SELECT g.name AS group_name, h.id AS alert_id, 'alert'::text AS kind,
           h.triggered_at AS at, puppylog.alert_payload(h, 'alert', g.name) AS payload
    FROM puppylog.alert_history h JOIN puppylog.log_groups g ON g.id = h.group_id
    UNION ALL
    SELECT g.name, h.id, 'recovery', h.recovered_at, puppylog.alert_payload(h, 'recovery', g.name)
    FROM puppylog.alert_history h JOIN puppylog.log_groups g ON g.id = h.group_id
    WHERE h.recovered_at IS NOT NULL;

-- The summary of one closed 10-second bucket.
-- enable_seqscan off: a 10-second slice of log_records must use the index on ts; with the
-- bucket as a parameter and a fresh (unanalysed) partition the planner may otherwise scan the
-- whole day's partition for every bucket (seen: 25 ms instead of 1 ms per bucket at 300k
-- rows, growing with the partition). enable_sort off: the planner expects a handful of rows
-- and sorts a busy bucket's clients to count them, on disk; hashing them is twice as fast
-- (500k rows, 5,000 clients: 95 ms instead of 200 ms; the top-n lists still sort, there is
-- no other way for them).
CREATE FUNCTION puppylog.bucket_payload(p_group integer, p_bucket timestamptz,
                                        p_rejected bigint)
RETURNS jsonb
LANGUAGE plpgsql STABLE SET enable_seqscan = off SET enable_sort = off AS $$
DECLARE
    g puppylog.log_groups;
    agg record;
    top_of jsonb;
    t_end timestamptz := p_bucket + interval '9 seconds';
    win_hits bigint;
    firing boolean;
BEGIN
    SELECT * INTO g FROM puppylog.log_groups WHERE id = p_group;
    SELECT coalesce(sum(hits), 0) AS hits, coalesce(sum(bytes), 0) AS bytes,
           coalesce(sum(s2xx), 0) AS s2, coalesce(sum(s3xx), 0) AS s3,
           coalesce(sum(s4xx), 0) AS s4, coalesce(sum(s5xx), 0) AS s5,
           coalesce(sum(s_other), 0) AS so
      INTO agg
      FROM puppylog.stats_seconds
     WHERE group_id = p_group AND ts >= p_bucket AND ts <= t_end;
    win_hits := puppylog.window_hits(p_group, t_end, g.window_s);
    SELECT EXISTS (SELECT 1 FROM puppylog.alert_history h
                   WHERE h.group_id = p_group AND h.triggered_at <= t_end
                     AND (h.recovered_at IS NULL OR h.recovered_at > t_end))
      INTO firing;
    RETURN jsonb_build_object(
        'v', 1, 'type', 'stats', 'group', g.name, 'bucket', puppylog.iso(p_bucket),
        'seconds', 10, 'hits', agg.hits, 'rps', round(agg.hits / 10.0, 2), 'bytes', agg.bytes,
        'sections', puppylog.bucket_top(p_group, p_bucket, 's', 10),
        'status', jsonb_build_object('2xx', agg.s2, '3xx', agg.s3, '4xx', agg.s4,
                                     '5xx', agg.s5, 'other', agg.so),
        'error_rate', CASE WHEN agg.hits = 0 THEN 0
                           ELSE round((agg.s4 + agg.s5)::numeric / agg.hits, 4) END,
        'methods', puppylog.bucket_top(p_group, p_bucket, 'm', 5),
        -- Counted once when the bucket closes rather than kept per client in bucket_counts:
        -- one row per client and bucket made the rollup cost about half of all COPY time.
        -- A DISTINCT subquery, not count(DISTINCT), which always sorts.
        'unique_hosts', (SELECT count(*) FROM (
                             SELECT DISTINCT r.remote_host FROM puppylog.log_records r
                             WHERE r.ts >= p_bucket
                               AND r.ts < p_bucket + interval '10 seconds'
                               AND r.stream_id IN (SELECT st.id FROM puppylog.log_streams st
                                                   WHERE st.group_id = p_group)) AS d),
        'users', puppylog.bucket_top(p_group, p_bucket, 'u', 5),
        'rejected', p_rejected,
        'avg', round(win_hits::numeric / g.window_s, 3),
        'alert', CASE WHEN firing THEN 'firing' ELSE 'ok' END,
        'threshold', g.threshold);
END;
$$;

-- The top n keys of one dimension in a bucket as [[key, hits], ...]; keys cut to 64 characters
-- so a payload stays far below NOTIFY's 8000-byte limit.
CREATE FUNCTION puppylog.bucket_top(p_group integer, p_bucket timestamptz, p_dim "char",
                                    p_n integer)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_array(left(x.key, 64), x.hits)
                              ORDER BY x.hits DESC, x.key), '[]'::jsonb)
    FROM (SELECT key, hits FROM puppylog.bucket_counts
          WHERE group_id = p_group AND bucket = p_bucket AND dim = p_dim
          ORDER BY hits DESC, key LIMIT p_n) x
$$;

-- The event time before which every live stream of the group is complete.
CREATE FUNCTION puppylog.group_watermark(p_group integer) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT min(s.watermark)
    FROM puppylog.log_streams s JOIN puppylog.log_groups g ON g.id = s.group_id
    WHERE s.group_id = p_group AND NOT s.stopped AND s.watermark IS NOT NULL
      AND s.heartbeat_at > now() - make_interval(secs => g.heartbeat_timeout_s)
$$;

-- Close every second the group's watermark has passed: evaluate the alert rule second by
-- second, record and announce transitions, then publish each closed 10-second bucket.
CREATE FUNCTION puppylog.advance_group(p_group integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = puppylog, pg_temp AS $$
DECLARE
    g puppylog.log_groups;
    wm timestamptz;
    new_ct timestamptz;
    old_ct timestamptz;
    lv record;
    h puppylog.alert_history;
    b timestamptz;
    first_bucket timestamptz;
    rejected_total bigint;
    payload jsonb;
    closed integer;
BEGIN
    -- One evaluator per group at a time; the others wait here, then see its result.
    SELECT * INTO g FROM puppylog.log_groups WHERE id = p_group FOR NO KEY UPDATE;
    wm := puppylog.group_watermark(p_group);
    IF wm IS NULL THEN
        RETURN 0;
    END IF;
    new_ct := date_trunc('second', wm) - interval '1 second';
    old_ct := g.closed_through;
    IF old_ct IS NULL THEN
        -- First evaluation: history starts one second before the group's first record.
        SELECT puppylog.bucket_of(min(ts)) - interval '1 second' INTO old_ct
        FROM puppylog.stats_seconds WHERE group_id = p_group AND ts <= new_ct;
        IF old_ct IS NULL THEN
            RETURN 0;
        END IF;
    END IF;
    IF new_ct <= old_ct THEN
        RETURN 0;
    END IF;

    FOR lv IN SELECT * FROM puppylog.second_levels(
            p_group, old_ct, new_ct, g.window_s, g.threshold,
            coalesce(g.recovery_threshold, g.threshold))
        WHERE level <> 0
    LOOP
        IF lv.level = 1 AND g.alert_state = 'ok' THEN
            INSERT INTO puppylog.alert_history
                (group_id, triggered_at, hits_at_trigger, avg_at_trigger, threshold,
                 recovery_threshold, window_s)
            VALUES (p_group, lv.t, lv.hits, lv.avg, g.threshold,
                    coalesce(g.recovery_threshold, g.threshold), g.window_s)
            RETURNING * INTO h;
            g.alert_state := 'firing';
            g.current_alert_id := h.id;
            PERFORM pg_notify('puppylog_alerts',
                              puppylog.alert_payload(h, 'alert', g.name)::text);
        ELSIF lv.level = -1 AND g.alert_state = 'firing' THEN
            UPDATE puppylog.alert_history
               SET recovered_at = lv.t, hits_at_recovery = lv.hits, avg_at_recovery = lv.avg
             WHERE id = g.current_alert_id
            RETURNING * INTO h;
            g.alert_state := 'ok';
            g.current_alert_id := NULL;
            PERFORM pg_notify('puppylog_alerts',
                              puppylog.alert_payload(h, 'recovery', g.name)::text);
        END IF;
    END LOOP;

    UPDATE puppylog.log_groups
       SET closed_through = new_ct, alert_state = g.alert_state,
           current_alert_id = g.current_alert_id
     WHERE id = p_group;

    -- Buckets whose last second closed now. Empty ones are published too, but after a long
    -- idle gap only the most recent hour of empty buckets, plus every bucket with traffic.
    SELECT coalesce(sum(lines_rejected), 0) INTO rejected_total
    FROM puppylog.log_streams WHERE group_id = p_group;
    -- The bucket holding the first newly closed second is the first one not yet published.
    first_bucket := puppylog.bucket_of(old_ct + interval '1 second');
    closed := 0;
    FOR b IN
        SELECT x.b FROM (
            SELECT gs AS b FROM generate_series(
                greatest(first_bucket,
                         puppylog.bucket_of(new_ct - interval '9 seconds') - interval '1 hour'),
                new_ct - interval '9 seconds', interval '10 seconds') gs
            UNION
            SELECT DISTINCT puppylog.bucket_of(s.ts) FROM puppylog.stats_seconds s
            WHERE s.group_id = p_group AND s.ts >= first_bucket AND s.ts <= new_ct
              AND puppylog.bucket_of(s.ts) + interval '9 seconds' <= new_ct
        ) x
        WHERE x.b >= first_bucket
        ORDER BY x.b
    LOOP
        payload := puppylog.bucket_payload(p_group, b, rejected_total - g.rejected_reported);
        g.rejected_reported := rejected_total;
        INSERT INTO puppylog.stats_buckets (group_id, bucket, payload)
        VALUES (p_group, b, payload)
        ON CONFLICT (group_id, bucket) DO UPDATE SET payload = excluded.payload;
        PERFORM pg_notify('puppylog_stats', payload::text);
        closed := closed + 1;
    END LOOP;
    UPDATE puppylog.log_groups SET rejected_reported = g.rejected_reported WHERE id = p_group;
    RETURN closed;
END;
$$;

-- A stream's watermark moved or its daemon stopped: the group's time may advance.
CREATE FUNCTION puppylog.stream_moved() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM puppylog.advance_group(NEW.group_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER log_streams_advance
    AFTER UPDATE OF watermark, stopped, heartbeat_at ON puppylog.log_streams
    FOR EACH ROW
    WHEN (NEW.watermark IS DISTINCT FROM OLD.watermark OR NEW.stopped IS DISTINCT FROM OLD.stopped
          OR NEW.heartbeat_at IS DISTINCT FROM OLD.heartbeat_at)
    EXECUTE FUNCTION puppylog.stream_moved();
