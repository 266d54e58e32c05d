-- A group's time never passes the database's clock.
-- A stream's watermark is held to its own host's clock (ingest._watermark), and that clock
-- can be wrong. With a host whose clock ran 3 minutes fast as the group's only live stream
-- (the others stopped, or silent past the heartbeat timeout), the group closed the next
-- 3 minutes of seconds at once; every line the other hosts then wrote for those seconds came
-- late: stored and rolled up, but in no alert decision and no published bucket. now() is
-- the one clock every daemon shares (heartbeat ages are read on it too), so each watermark
-- is taken as at most now(). A host whose clock is fast still has its lines counted at their
-- timestamps, in the future; they are counted when the group's time gets there.
CREATE OR REPLACE FUNCTION puppylog.group_watermark(p_group integer) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT min(least(s.watermark, now()))
    FROM puppylog.log_streams s JOIN puppylog.log_groups g ON g.id = s.group_id
    WHERE s.group_id = p_group AND NOT s.stopped AND s.watermark IS NOT NULL
      AND s.heartbeat_at > now() - make_interval(secs => g.heartbeat_timeout_s)
$$;
