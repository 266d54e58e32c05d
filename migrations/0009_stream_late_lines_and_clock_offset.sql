-- Per-host problems the console shows on a stream's line, not only in that host's daemon log.
--   lines_late      rows stored after the group had closed their second: in the rollups, but
--                   in no alert decision and no published bucket. Added to in the
--                   transaction that stores them (only a batch that has any pays the one
--                   extra statement), so it is exact like lines_stored.
--   late_at         when late rows were last added (the console shows an old count dimmed).
--   clock_offset_s  this host's clock minus the database's, in seconds (positive: ahead), as
--                   its daemon measured it at start and last hourly check; NULL: unknown (a
--                   daemon older than this migration).
-- All are metadata-only additions (a constant default): no table rewrite.
ALTER TABLE puppylog.log_streams
    ADD COLUMN lines_late bigint NOT NULL DEFAULT 0,
    ADD COLUMN late_at timestamptz,
    ADD COLUMN clock_offset_s double precision;
