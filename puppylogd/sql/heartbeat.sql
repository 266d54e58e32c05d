-- An idle stream's sign of life; its watermark may advance with the wall clock, this host's,
-- but never past the database's: watermarks only grow, and one a fast clock had put minutes
-- ahead would otherwise stay there after the clock is set right, and not hold the group's
-- time back for this stream's backlog. (CASE, not least(): least(NULL, now()) is now(), and
-- a stream without a watermark yet must keep none.)
UPDATE puppylog.log_streams SET
    watermark = greatest(watermark, CASE WHEN $2 > now() THEN now() ELSE $2 END),
    file_size = $3,
    caught_up = $4,
    heartbeat_at = now()
WHERE id = $1
