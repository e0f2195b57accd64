-- Claim due timers (or webhook deliveries) so that only one orchestrator handles each at a
-- time.
-- KEYS: the timers (or webhooks) zsets of one or more partitions (one on Redis Cluster, where
--   each partition is its own slot; all of them on a single Redis: one call per turn)
-- ARGV[1] now (ms)   ARGV[2] max count per key   ARGV[3] claim duration (ms)
-- A claimed job's timer moves to now + claim; handling it sets the real next deadline.
-- If the claimer dies, the timer falls due again after the claim duration.
-- The claimed entries of a key move with one ZADD (in chunks, below Lua's unpack limit).
-- Returns the claimed job ids of all keys.
local CHUNK = 500 -- entries per ZADD (score and member each)
local later = tonumber(ARGV[1]) + tonumber(ARGV[3])
local out = {}
for _, key in ipairs(KEYS) do
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
  for first = 1, #due, CHUNK do
    local pairs_ = {}
    for i = first, math.min(first + CHUNK - 1, #due) do
      pairs_[#pairs_ + 1] = later
      pairs_[#pairs_ + 1] = due[i]
      out[#out + 1] = due[i]
    end
    redis.call('ZADD', key, unpack(pairs_))
  end
end
return out
