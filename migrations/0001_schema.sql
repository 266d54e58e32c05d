-- Puppylog's data model: groups, streams (with their checkpoints), time-partitioned records and
-- rejected lines. Everything lives in schema puppylog; stock PostgreSQL >= 13, no extensions.

CREATE SCHEMA IF NOT EXISTS puppylog;

-- A site or service; alerts are evaluated on a group's total traffic.
CREATE TABLE puppylog.log_groups (
    id                  integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                text NOT NULL UNIQUE,
    threshold           double precision NOT NULL DEFAULT 10 CHECK (threshold >= 0),
    recovery_threshold  double precision CHECK (recovery_threshold >= 0),
    window_s            integer NOT NULL DEFAULT 120 CHECK (window_s > 0),
    heartbeat_timeout_s integer NOT NULL DEFAULT 30 CHECK (heartbeat_timeout_s > 0),
    -- Evaluation state, owned by puppylog.advance_group().
    closed_through      timestamptz,          -- last closed (evaluated) second, inclusive
    alert_state         text NOT NULL DEFAULT 'ok' CHECK (alert_state IN ('ok', 'firing')),
    current_alert_id    bigint,
    rejected_reported   bigint NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- One file on one host; holds that file's checkpoint, written in the same transaction as the
-- rows it covers.
CREATE TABLE puppylog.log_streams (
    id             integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_id       integer NOT NULL REFERENCES puppylog.log_groups (id) ON DELETE CASCADE,
    host           text NOT NULL,
    path           text NOT NULL,
    dev            bigint,
    inode          bigint,
    byte_offset    bigint NOT NULL DEFAULT 0,
    fp_len         integer NOT NULL DEFAULT 0,
    fingerprint    bytea,
    lines_stored   bigint NOT NULL DEFAULT 0,
    lines_rejected bigint NOT NULL DEFAULT 0,
    max_ts         timestamptz,      -- newest event timestamp stored
    watermark      timestamptz,      -- event time before which this stream is complete
    file_size      bigint,           -- size of the file when last read (lag = file_size - byte_offset)
    caught_up      boolean NOT NULL DEFAULT false,
    stopped        boolean NOT NULL DEFAULT false,  -- its daemon exited cleanly
    heartbeat_at   timestamptz,
    owner          text NOT NULL DEFAULT current_user,  -- role that registered it (see 0003)
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (group_id, host, path)
);

-- One row per valid line. A "-" size is stored as NULL. No foreign key to log_streams: a
-- per-row check would cost more than the whole COPY; streams are never deleted while in use.
CREATE TABLE puppylog.log_records (
    ts          timestamptz NOT NULL,
    stream_id   integer NOT NULL,
    remote_host text NOT NULL,
    ident       text,
    auth_user   text,
    method      text NOT NULL,
    path        text NOT NULL,
    section     text NOT NULL,
    protocol    text NOT NULL,
    status      smallint NOT NULL,
    bytes       bigint,
    referer     text,
    user_agent  text
) PARTITION BY RANGE (ts);

-- B-tree, not BRIN: a BRIN index only covers block ranges summarised by VACUUM, so the
-- 10-second slices read when a bucket closes would scan every fresh row; appending to a
-- time-ordered B-tree is cheap.
CREATE INDEX log_records_ts ON puppylog.log_records (ts);

-- Lines that could not be parsed, kept raw (bytea: they may be invalid UTF-8), truncated to
-- 1 KiB by the daemon.
CREATE TABLE puppylog.rejected_lines (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id integer NOT NULL REFERENCES puppylog.log_streams (id) ON DELETE CASCADE,
    read_at   timestamptz NOT NULL DEFAULT now(),
    reason    text NOT NULL,
    detail    text,
    line      bytea NOT NULL
);
CREATE INDEX rejected_lines_stream_read_at ON puppylog.rejected_lines (stream_id, read_at);

-- Create the daily partitions covering [p_from, p_to]; safe to call concurrently.
CREATE FUNCTION puppylog.ensure_partitions(p_from date, p_to date)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = puppylog, pg_temp AS $$
DECLARE
    d date;
    created integer := 0;
    part text;
BEGIN
    -- Serialise creators: two daemons meeting a new day at once must not both CREATE.
    PERFORM pg_advisory_xact_lock(hashtext('puppylog.ensure_partitions'));
    FOR d IN SELECT generate_series(p_from, p_to, interval '1 day')::date LOOP
        part := format('log_records_p%s', to_char(d, 'YYYYMMDD'));
        IF to_regclass(format('puppylog.%I', part)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE puppylog.%I PARTITION OF puppylog.log_records '
                'FOR VALUES FROM (%L) TO (%L)',
                part, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END;
$$;

-- Drop record partitions wholly older than p_cutoff; return their names.
CREATE FUNCTION puppylog.drop_partitions_before(p_cutoff timestamptz)
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = puppylog, pg_temp AS $$
DECLARE
    part record;
    upper_bound timestamptz;
BEGIN
    -- Retention is at least one day: refuse a cut-off that would drop today's data (this runs
    -- with the owner's rights, so a writer role must not be able to wipe the table with it).
    IF p_cutoff > now() - interval '1 day' THEN
        RAISE EXCEPTION 'refusing to drop partitions newer than one day (cut-off %)', p_cutoff;
    END IF;
    FOR part IN
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'puppylog.log_records'::regclass
    LOOP
        upper_bound := substring(part.bound FROM 'TO \(''([^'']+)''\)')::timestamptz;
        IF upper_bound IS NOT NULL AND upper_bound <= p_cutoff THEN
            EXECUTE format('DROP TABLE puppylog.%I', part.relname);
            RETURN NEXT part.relname;
        END IF;
    END LOOP;
END;
$$;
