-- Lease queued tasks to waiting workers.
-- KEYS[1] the task-type queue zset   KEYS[2] timers zset
-- KEYS[3 ..] for each candidate, three keys: its job hash, task leases hash, payloads hash
-- (all share the {pN} tag of the partition)
-- ARGV[1] now (ms)   ARGV[2] number of candidates C   ARGV[3 .. 2+C] members `job_id|task_id`
-- then the worker ids to serve, in order.
-- A candidate is leased only if it is still in the queue and its job still holds that task
-- as queued; the job's version is bumped so that concurrent writers notice the lease.
-- Returns a flat list: worker id, task payload JSON, ... for each lease made.
local now = tonumber(ARGV[1])
local c = tonumber(ARGV[2])
local w = 3 + c
local out = {}
for i = 1, c do
  local worker = ARGV[w]
  if not worker then break end
  local member = ARGV[2 + i]
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local sep = string.find(member, '|', 1, true)
    local job_id = string.sub(member, 1, sep - 1)
    local task_id = string.sub(member, sep + 1)
    local job, leases, payloads = KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2]
    local lease = redis.call('HGET', leases, task_id)
    if lease and string.sub(lease, 1, 2) == 'q|' then
      local lease_ms = string.sub(lease, 3)
      redis.call('HSET', leases, task_id, 'l|' .. lease_ms .. '|' .. worker .. '|' .. ARGV[1])
      redis.call('HINCRBY', job, 'v', 1)
      redis.call('ZADD', KEYS[2], 'LT', now + tonumber(lease_ms), job_id)
      out[#out + 1] = worker
      out[#out + 1] = redis.call('HGET', payloads, task_id)
      w = w + 1
    end
  end
end
return out
