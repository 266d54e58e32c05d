-- Drop records, rollups and rejected lines older than the cut-off; alert history is kept.
WITH dropped AS (SELECT puppylog.drop_partitions_before($1) AS name),
     s AS (DELETE FROM puppylog.stats_seconds WHERE ts < $1),
     b AS (DELETE FROM puppylog.bucket_counts WHERE bucket < $1),
     sb AS (DELETE FROM puppylog.stats_buckets WHERE bucket < $1),
     r AS (DELETE FROM puppylog.rejected_lines WHERE read_at < $1)
SELECT count(*) FROM dropped
