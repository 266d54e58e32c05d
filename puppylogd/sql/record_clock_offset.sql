-- Store the daemon's latest measure of its clock (this host's minus the database's, in
-- seconds) on its streams, for the console. Not a column of the watermark trigger.
UPDATE puppylog.log_streams SET clock_offset_s = $2 WHERE id = ANY($1::integer[])
