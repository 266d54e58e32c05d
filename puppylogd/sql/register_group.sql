-- Create the group if needed and apply this daemon's alert settings (last writer wins).
INSERT INTO puppylog.log_groups AS g
    (name, threshold, recovery_threshold, window_s, heartbeat_timeout_s)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name) DO UPDATE SET
    threshold = excluded.threshold,
    recovery_threshold = excluded.recovery_threshold,
    window_s = excluded.window_s,
    heartbeat_timeout_s = excluded.heartbeat_timeout_s
RETURNING g.id
