-- Create the daily record partitions for [$1, $2].
SELECT puppylog.ensure_partitions($1::date, $2::date)
