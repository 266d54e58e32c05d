-- Roles for least privilege:
--   puppylog_reader  read-only clients (puppylog-watch): USAGE on the schema, SELECT on every
--                    table and view, EXECUTE on the read-only functions. LISTEN needs no grant.
--   puppylog_writer  daemons (puppylogd): SELECT everywhere; INSERT records and rejected
--                    lines; INSERT/UPDATE groups and its own streams (registration,
--                    checkpoints, heartbeats; see the row-level security below); DELETE
--                    the aged rollups and rejected lines (retention).
--                    Records are never updated or deleted by a daemon: partitions are created
--                    and dropped by the SECURITY DEFINER functions ensure_partitions and
--                    drop_partitions_before, rollups and alerts written by the SECURITY
--                    DEFINER rollup_records and advance_group. Neither role owns anything, so
--                    neither can DROP, ALTER or TRUNCATE.
-- Both are NOLOGIN group roles: grant them to login roles, e.g.
--   CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE puppylog_reader;
-- The functions that write are revoked from PUBLIC (only the schema's USAGE grant kept other
-- roles away from them so far) and from the reader. A later migration adding a table or a
-- function must grant it explicitly; new tables get SELECT for both roles by default (so do
-- the day partitions, which are only ever written through their parent).
-- Roles are cluster-wide: they are created only if missing. A migration run by a role that
-- may not create roles or grant (a managed database) only gets a NOTICE.
DO $$
BEGIN
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'puppylog_reader') THEN
            CREATE ROLE puppylog_reader NOLOGIN;
        END IF;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;  -- created concurrently by a migration of another database
    END;
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'puppylog_writer') THEN
            CREATE ROLE puppylog_writer NOLOGIN;
        END IF;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
    END;

    GRANT USAGE ON SCHEMA puppylog TO puppylog_reader, puppylog_writer;
    GRANT SELECT ON ALL TABLES IN SCHEMA puppylog TO puppylog_reader, puppylog_writer;

    GRANT INSERT ON puppylog.log_records, puppylog.rejected_lines TO puppylog_writer;
    GRANT INSERT, UPDATE ON puppylog.log_groups, puppylog.log_streams TO puppylog_writer;
    GRANT DELETE ON puppylog.rejected_lines, puppylog.stats_seconds, puppylog.bucket_counts,
        puppylog.stats_buckets TO puppylog_writer;
    GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA puppylog TO puppylog_writer;

    REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA puppylog FROM PUBLIC;
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA puppylog TO puppylog_reader, puppylog_writer;
    REVOKE EXECUTE ON FUNCTION
        puppylog.ensure_partitions(date, date),
        puppylog.drop_partitions_before(timestamptz),
        puppylog.advance_group(integer),
        puppylog.rollup_records(),
        puppylog.stream_moved()
    FROM puppylog_reader;

    -- Tables created later (day partitions, future migrations) by the migrating role.
    ALTER DEFAULT PRIVILEGES IN SCHEMA puppylog
        GRANT SELECT ON TABLES TO puppylog_reader, puppylog_writer;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'puppylog roles not created or granted (insufficient privilege): %', SQLERRM;
END;
$$;

-- A daemon's role may register streams and move checkpoints of its own streams only: row-level
-- security on log_streams, keyed on the login role that registered the stream. Daemons that
-- share one login role share their streams; give each web host its own login role in
-- puppylog_writer to keep them apart. The tables' owner (who migrates) and superusers are
-- exempt, and so are the SECURITY DEFINER functions. Policies are for PUBLIC so that roles
-- granted by hand (where puppylog_writer could not be created) get the same rule.
ALTER TABLE puppylog.log_streams ENABLE ROW LEVEL SECURITY;
CREATE POLICY log_streams_read ON puppylog.log_streams FOR SELECT USING (true);
CREATE POLICY log_streams_register ON puppylog.log_streams FOR INSERT
    WITH CHECK (owner = current_user);
CREATE POLICY log_streams_own ON puppylog.log_streams FOR UPDATE
    USING (owner = current_user) WITH CHECK (owner = current_user);
