-- The committed checkpoint of one stream: where the stored data ends.
SELECT dev, inode, byte_offset, fp_len, fingerprint, max_ts, watermark
FROM puppylog.log_streams
WHERE id = $1
