-- Create or revive the stream of one file on one host; return its checkpoint.
INSERT INTO puppylog.log_streams AS s (group_id, host, path, stopped, heartbeat_at)
VALUES ($1, $2, $3, false, now())
ON CONFLICT (group_id, host, path) DO UPDATE SET stopped = false, heartbeat_at = now()
RETURNING s.id, s.dev, s.inode, s.byte_offset, s.fp_len, s.fingerprint, s.max_ts, s.watermark
