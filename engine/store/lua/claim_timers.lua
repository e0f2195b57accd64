-- Claim due timers so that only one orchestrator handles each at a time.
-- KEYS[1] timers zset of one partition
-- ARGV[1] now (ms)   ARGV[2] max count   ARGV[3] claim duration (ms)
-- A claimed job's timer moves to now + claim; handling it sets the real next deadline.
-- If the claimer dies, the timer falls due again after the claim duration.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local later = tonumber(ARGV[1]) + tonumber(ARGV[3])
for _, job_id in ipairs(due) do
  redis.call('ZADD', KEYS[1], later, job_id)
end
return due
