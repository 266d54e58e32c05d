-- The connection limits that apply to this session's role in this database, and what is in use.
-- Superusers ignore role and database limits and may use the slots reserved for them; on
-- PostgreSQL >= 16 members of pg_use_reserved_connections may use reserved_connections.
SELECT current_setting('max_connections')::integer AS max_connections,
       CASE WHEN r.rolsuper THEN 0
            ELSE current_setting('superuser_reserved_connections')::integer
                 + CASE WHEN coalesce(pg_has_role(to_regrole('pg_use_reserved_connections'),
                                                  'member'), false)
                        THEN 0
                        ELSE coalesce(current_setting('reserved_connections', true), '0')::integer
                   END
       END AS reserved,
       r.rolname AS role_name,
       CASE WHEN r.rolsuper THEN -1 ELSE r.rolconnlimit END AS role_limit,
       d.datname AS database_name,
       CASE WHEN r.rolsuper THEN -1 ELSE d.datconnlimit END AS database_limit,
       count(a.*) AS used,
       count(a.*) FILTER (WHERE a.usesysid = r.oid) AS used_by_role,
       count(a.*) FILTER (WHERE a.datid = d.oid) AS used_in_database
FROM pg_roles r
CROSS JOIN pg_database d
-- Without pg_read_all_stats, other roles' sessions show no backend_type: a session with both a
-- database and a user is counted as a client (only rare background workers also have both).
LEFT JOIN pg_stat_activity a
       ON a.datid IS NOT NULL AND a.usesysid IS NOT NULL
      AND coalesce(a.backend_type, 'client backend') = 'client backend'
WHERE r.rolname = current_user AND d.datname = current_database()
GROUP BY r.oid, r.rolsuper, r.rolname, r.rolconnlimit, d.oid, d.datname, d.datconnlimit
