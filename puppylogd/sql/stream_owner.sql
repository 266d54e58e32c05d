-- Who registered a stream (row-level security lets only that role move its checkpoint).
SELECT s.id, s.owner, current_user AS me
FROM puppylog.log_streams s
WHERE s.group_id = $1 AND s.host = $2 AND s.path = $3
