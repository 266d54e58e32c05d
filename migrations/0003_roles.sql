-- Roles for least privilege:
--   puppylog_reader  read-only clients (puppylog-watch): USAGE on the schema, SELECT on every
--                    table and view, EXECUTE on its functions. LISTEN needs no grant.
--   puppylog_writer  daemons (puppylogd): read and write the tables.
-- Both are NOLOGIN group roles: grant them to login roles, e.g.
--   CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE puppylog_reader;
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
    GRANT SELECT ON ALL TABLES IN SCHEMA puppylog TO puppylog_reader;
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA puppylog TO puppylog_reader;
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA puppylog TO puppylog_writer;
    GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA puppylog TO puppylog_writer;
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA puppylog TO puppylog_writer;
    -- Tables created later (new day partitions, future migrations) by the migrating role.
    ALTER DEFAULT PRIVILEGES IN SCHEMA puppylog GRANT SELECT ON TABLES TO puppylog_reader;
    ALTER DEFAULT PRIVILEGES IN SCHEMA puppylog
        GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO puppylog_writer;
    ALTER DEFAULT PRIVILEGES IN SCHEMA puppylog
        GRANT USAGE, SELECT ON SEQUENCES TO puppylog_writer;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'puppylog roles not created or granted (insufficient privilege): %', SQLERRM;
END;
$$;
