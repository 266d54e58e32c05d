-- Move a stream's checkpoint over the batch just copied, in the same transaction, only if it
-- still stands where this batch began (compare-and-set: no batch is ever applied twice).
-- The watermark never passes the database's clock: a host whose clock is fast must not keep
-- one that stays ahead of the other hosts' after its clock is set right (see heartbeat).
UPDATE puppylog.log_streams SET
    dev = $4, inode = $5, byte_offset = $6, fp_len = $7, fingerprint = $8,
    lines_stored = lines_stored + $9,
    lines_rejected = lines_rejected + $10,
    max_ts = greatest(max_ts, $11),
    watermark = greatest(watermark, CASE WHEN $12 > now() THEN now() ELSE $12 END),
    file_size = $13,
    caught_up = $14,
    heartbeat_at = now(),
    updated_at = now()
WHERE id = $1
  AND inode IS NOT DISTINCT FROM $2
  AND byte_offset = $3
-- The group's last closed second before this batch moves it on (the row triggers that
-- advance the group run after RETURNING): rows at or before it came late.
RETURNING id, (SELECT g.closed_through FROM puppylog.log_groups g WHERE g.id = group_id)
    AS closed_through
