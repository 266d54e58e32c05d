-- Create or revive the stream of one file on one host; return its checkpoint. $4 is this
-- host's clock minus the database's, in seconds, as the daemon last measured it (the console
-- shows it; NULL: not measured).
INSERT INTO puppylog.log_streams AS s (group_id, host, path, stopped, heartbeat_at, clock_offset_s)
VALUES ($1, $2, $3, false, now(), $4)
ON CONFLICT (group_id, host, path) DO UPDATE
    SET stopped = false, heartbeat_at = now(), clock_offset_s = excluded.clock_offset_s
RETURNING s.id, s.dev, s.inode, s.byte_offset, s.fp_len, s.fingerprint, s.max_ts, s.watermark
