-- What an operator wants in `systemctl status`: alert state and stored/rejected counts.
SELECT g.alert_state, g.closed_through,
       coalesce(sum(s.lines_stored), 0)::bigint AS stored,
       coalesce(sum(s.lines_rejected), 0)::bigint AS rejected
FROM puppylog.log_groups g
LEFT JOIN puppylog.log_streams s ON s.group_id = g.id
WHERE g.id = $1
GROUP BY g.id
