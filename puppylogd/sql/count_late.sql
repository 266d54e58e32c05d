-- Add a batch's late rows (stored after the group closed their second) to its stream, in the
-- batch's own transaction. Not a column of the watermark trigger: it advances no group.
UPDATE puppylog.log_streams SET lines_late = lines_late + $2, late_at = now() WHERE id = $1
