-- The stream's daemon exited cleanly: it no longer holds the group's watermark.
UPDATE puppylog.log_streams SET stopped = true, updated_at = now() WHERE id = $1
