-- Publish all the buckets one evaluation closes with one query instead of one
-- bucket_payload call each. Replaying history closes many buckets per checkpoint (a 2-hour
-- file read in seconds: about 14 per 20,000-line batch), and every call paid the start-up of
-- its own seven small queries. On the 718 buckets of bench/'s 1M-line file, alternated four
-- times: 1.01-1.10 s as single calls, 0.46-0.49 s as 52 calls of 14; publishing had been
-- about a fifth of PostgreSQL's CPU in `puppylogd --once`. The payloads are the same, byte
-- for byte (tests/integration/test_publication.py holds bucket_payloads to bucket_payload,
-- which stays as the one-bucket reference).

-- The stats payloads of the given buckets, in the order given, the first one carrying
-- p_rejected and the others 0: for each, what bucket_payload returns, from the same functions
-- (bucket_top, window_hits) and LATERAL subqueries, so each bucket reads only its own slices
-- whatever the gaps between them. Planner settings as in bucket_payload, for the same
-- reasons; PL/pgSQL so that the plan is cached (a SQL function with SET clauses is planned
-- on every call).
CREATE FUNCTION puppylog.bucket_payloads(p_group integer, p_buckets timestamptz[],
                                         p_rejected bigint)
RETURNS TABLE (bucket timestamptz, payload jsonb)
LANGUAGE plpgsql STABLE SET enable_seqscan = off SET enable_sort = off AS $$
BEGIN
    RETURN QUERY
    SELECT b.b, jsonb_build_object(
        'v', 1, 'type', 'stats', 'group', g.name, 'bucket', puppylog.iso(b.b),
        'seconds', 10, 'hits', a.hits, 'rps', round(a.hits / 10.0, 2), 'bytes', a.bytes,
        'sections', puppylog.bucket_top(p_group, b.b, 's', 10),
        'status', jsonb_build_object('2xx', a.s2, '3xx', a.s3, '4xx', a.s4,
                                     '5xx', a.s5, 'other', a.so),
        'error_rate', CASE WHEN a.hits = 0 THEN 0
                           ELSE round((a.s4 + a.s5)::numeric / a.hits, 4) END,
        'methods', puppylog.bucket_top(p_group, b.b, 'm', 5),
        'unique_hosts', h.n,
        'users', puppylog.bucket_top(p_group, b.b, 'u', 5),
        'rejected', CASE WHEN b.n = 1 THEN p_rejected ELSE 0 END,
        'avg', round(puppylog.window_hits(p_group, b.b + interval '9 seconds', g.window_s)::numeric
                     / g.window_s, 3),
        'alert', CASE WHEN f.firing THEN 'firing' ELSE 'ok' END,
        'threshold', g.threshold)
    FROM unnest(p_buckets) WITH ORDINALITY AS b (b, n)
    CROSS JOIN (SELECT lg.name, lg.window_s, lg.threshold,
                       array(SELECT st.id FROM puppylog.log_streams st
                             WHERE st.group_id = lg.id) AS streams
                FROM puppylog.log_groups lg WHERE lg.id = p_group) AS g
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(s.hits), 0) AS hits, coalesce(sum(s.bytes), 0) AS bytes,
               coalesce(sum(s.s2xx), 0) AS s2, coalesce(sum(s.s3xx), 0) AS s3,
               coalesce(sum(s.s4xx), 0) AS s4, coalesce(sum(s.s5xx), 0) AS s5,
               coalesce(sum(s.s_other), 0) AS so
        FROM puppylog.stats_seconds s
        WHERE s.group_id = p_group AND s.ts >= b.b AND s.ts <= b.b + interval '9 seconds') AS a
    CROSS JOIN LATERAL (
        SELECT EXISTS (SELECT 1 FROM puppylog.alert_history ah
                       WHERE ah.group_id = p_group
                         AND ah.triggered_at <= b.b + interval '9 seconds'
                         AND (ah.recovered_at IS NULL
                              OR ah.recovered_at > b.b + interval '9 seconds')) AS firing) AS f
    CROSS JOIN LATERAL (
        SELECT count(*) AS n FROM (
            SELECT DISTINCT r.remote_host FROM puppylog.log_records r
            WHERE r.ts >= b.b AND r.ts < b.b + interval '10 seconds'
              AND r.stream_id = ANY (g.streams)) AS d) AS h
    ORDER BY b.n;
END;
$$;

-- Read-only, like bucket_payload: the reader and the writer may run it, PUBLIC may not
-- (0003 revoked PUBLIC from the functions that existed then; new ones must do it themselves).
REVOKE EXECUTE ON FUNCTION puppylog.bucket_payloads(integer, timestamptz[], bigint) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'puppylog_reader')
       AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'puppylog_writer') THEN
        GRANT EXECUTE ON FUNCTION puppylog.bucket_payloads(integer, timestamptz[], bigint)
            TO puppylog_reader, puppylog_writer;
    END IF;
END;
$$;

-- advance_group as in 0002, except that the closed buckets' payloads come from one
-- bucket_payloads query (the alert evaluation above it is unchanged).
CREATE OR REPLACE FUNCTION puppylog.advance_group(p_group integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = puppylog, pg_temp AS $$
DECLARE
    g puppylog.log_groups;
    wm timestamptz;
    new_ct timestamptz;
    old_ct timestamptz;
    lv record;
    h puppylog.alert_history;
    first_bucket timestamptz;
    buckets timestamptz[];
    rejected_total bigint;
    p record;
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
    SELECT array_agg(x.b ORDER BY x.b) INTO buckets FROM (
        SELECT gs AS b FROM generate_series(
            greatest(first_bucket,
                     puppylog.bucket_of(new_ct - interval '9 seconds') - interval '1 hour'),
            new_ct - interval '9 seconds', interval '10 seconds') gs
        UNION
        SELECT DISTINCT puppylog.bucket_of(s.ts) FROM puppylog.stats_seconds s
        WHERE s.group_id = p_group AND s.ts >= first_bucket AND s.ts <= new_ct
          AND puppylog.bucket_of(s.ts) + interval '9 seconds' <= new_ct
    ) x
    WHERE x.b >= first_bucket;
    IF buckets IS NULL THEN
        RETURN 0;
    END IF;
    closed := 0;
    -- Stored and announced in bucket order, one notification each, as before.
    FOR p IN SELECT * FROM puppylog.bucket_payloads(
            p_group, buckets, rejected_total - g.rejected_reported) AS x
        ORDER BY x.bucket
    LOOP
        INSERT INTO puppylog.stats_buckets (group_id, bucket, payload)
        VALUES (p_group, p.bucket, p.payload)
        ON CONFLICT (group_id, bucket) DO UPDATE SET payload = excluded.payload;
        PERFORM pg_notify('puppylog_stats', p.payload::text);
        closed := closed + 1;
    END LOOP;
    UPDATE puppylog.log_groups SET rejected_reported = rejected_total WHERE id = p_group;
    RETURN closed;
END;
$$;

