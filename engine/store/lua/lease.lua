-- Lease queued tasks to waiting workers.
-- KEYS[1] the task-type queue zset   KEYS[2] timers zset
-- KEYS[3 ..] job hashes of the candidate members, in the order of ARGV candidates
-- (all share the {pN} tag of the partition)
-- ARGV[1] now (ms)   ARGV[2] number of candidates C   ARGV[3 .. 2+C] members `job_id|task_id`
-- then the worker ids to serve, in order.
-- A candidate is leased only if it is still in the queue and its job still expects that
-- task in state "queued"; the job's version is bumped so concurrent writers see the lease.
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
    local job = KEYS[2 + i]
    local f = redis.call('HMGET', job, 'v', 'task', 'tstate', 'payload', 'lease_ms')
    if f[2] == task_id and f[3] == 'queued' then
      redis.call('HSET', job, 'v', tostring(tonumber(f[1]) + 1), 'tstate', 'leased',
                 'worker', worker, 'leased_at', tostring(now))
      redis.call('ZADD', KEYS[2], 'LT', now + tonumber(f[5]), job_id)
      out[#out + 1] = worker
      out[#out + 1] = f[4]
      w = w + 1
    end
  end
end
return out
