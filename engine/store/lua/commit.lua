-- Apply one state change to a job, guarded by its version.
-- KEYS[1] job hash            KEYS[2] timers zset of the job's partition
-- KEYS[3] queue to add to     KEYS[4] queue to remove from
-- KEYS[5] client index zset   (unused KEYS repeat KEYS[1]; all share the {pN} tag)
-- ARGV[1] expected version ("" when creating: the job must not exist)
-- ARGV[2] number of field/value pairs N, then ARGV[3 .. 2+2N] the pairs (includes "v")
-- then, in order: timer score ("" = remove, "-" = keep), queue member, queue score,
-- member to remove from KEYS[4], retention ttl ms ("" = none), index score ("" = none),
-- ready message ("" = none), ready channel, done message ("" = none), done channel
-- Returns 1 when applied, 0 when the version did not match.
local current = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == '' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return 0
end
local n = tonumber(ARGV[2])
local fields = {}
for i = 3, 2 + 2 * n do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
local a = 3 + 2 * n
local job_id = ARGV[a + 10]
local timer = ARGV[a]
if timer == '' then
  redis.call('ZREM', KEYS[2], job_id)
elseif timer ~= '-' then
  redis.call('ZADD', KEYS[2], timer, job_id)
end
if ARGV[a + 1] ~= '' then redis.call('ZADD', KEYS[3], ARGV[a + 2], ARGV[a + 1]) end
if ARGV[a + 3] ~= '' then redis.call('ZREM', KEYS[4], ARGV[a + 3]) end
if ARGV[a + 4] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[a + 4]) end
if ARGV[a + 5] ~= '' then redis.call('ZADD', KEYS[5], ARGV[a + 5], job_id) end
if ARGV[a + 6] ~= '' then redis.call('PUBLISH', ARGV[a + 7], ARGV[a + 6]) end
if ARGV[a + 8] ~= '' then redis.call('PUBLISH', ARGV[a + 9], ARGV[a + 8]) end
return 1
