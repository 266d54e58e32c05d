-- Create the group if needed and apply this daemon's alert settings (last writer wins);
-- also return the settings the group had before (existed = false for a new group), so that
-- a daemon changing what another one set can say so.
WITH before AS (
    SELECT threshold, recovery_threshold, window_s, heartbeat_timeout_s
    FROM puppylog.log_groups WHERE name = $1
)
INSERT INTO puppylog.log_groups AS g
    (name, threshold, recovery_threshold, window_s, heartbeat_timeout_s)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name) DO UPDATE SET
    threshold = excluded.threshold,
    recovery_threshold = excluded.recovery_threshold,
    window_s = excluded.window_s,
    heartbeat_timeout_s = excluded.heartbeat_timeout_s
RETURNING g.id,
    EXISTS (SELECT FROM before) AS existed,
    (SELECT threshold FROM before) AS threshold,
    (SELECT recovery_threshold FROM before) AS recovery_threshold,
    (SELECT window_s FROM before) AS window_s,
    (SELECT heartbeat_timeout_s FROM before) AS heartbeat_timeout_s
