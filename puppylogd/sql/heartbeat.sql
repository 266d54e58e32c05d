-- An idle stream's sign of life; its watermark may advance with the wall clock.
UPDATE puppylog.log_streams SET
    watermark = greatest(watermark, $2),
    file_size = $3,
    caught_up = $4,
    heartbeat_at = now()
WHERE id = $1
