-- Drop expired jobs from a client's job index and from their label indexes (one partition).
-- KEYS[1]: the client's job index (zset)   KEYS[2]: the client's job -> labels hash
-- KEYS[first..first+n]: per job, its hash, then the n label indexes its labels name
-- ARGV[1]: JSON [[job id, first, n, labels JSON as stored | false], ...]
-- A job is dropped only if its hash is still missing (an id may be created again since it
-- was found gone, e.g. one derived from an Idempotency-Key), and its label entries only if
-- the labels stored for it are still the ones read.
-- Returns the number of jobs dropped.
local dropped = 0
for _, plan in ipairs(cjson.decode(ARGV[1])) do
  local id, first, n, labels = plan[1], plan[2], plan[3], plan[4]
  if redis.call('EXISTS', KEYS[first]) == 0 then
    redis.call('ZREM', KEYS[1], id)
    if labels and redis.call('HGET', KEYS[2], id) == labels then
      for k = first + 1, first + n do redis.call('ZREM', KEYS[k], id) end
      redis.call('HDEL', KEYS[2], id)
    end
    dropped = dropped + 1
  end
end
return dropped
