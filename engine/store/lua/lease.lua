-- Lease queued tasks to waiting workers.
-- KEYS[1] the task-type queue zset   KEYS[2] timers zset
-- KEYS[3 ..] for each candidate, its job hash (all share the {pN} tag of the partition)
-- ARGV[1] now (ms)   ARGV[2] number of candidates C   ARGV[3 .. 2+C] members `job_id|task_id`
-- then the worker ids to serve, in order (one id per task a worker can take).
-- A candidate is leased only if it is still in the queue and its job still holds that task
-- as queued (field l:<task id>, or in the one `leases` field of a job written before); the job's version is bumped so that concurrent writers notice the lease.
-- Returns a flat list with six entries per lease made: worker id, task payload JSON, job
-- id, task id, the job's new version, the lease as stored.
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
    local got = redis.call('HMGET', job, 'v', 'l:' .. task_id, 'p:' .. task_id)
    local lease, leases = got[2], nil
    if not lease and got[3] then -- a job written before its leases were stored apart
      local all = redis.call('HGET', job, 'leases')
      if all then
        leases = cjson.decode(all)
        lease = leases[task_id]
      end
    end
    if got[3] and type(lease) == 'string' and string.sub(lease, 1, 2) == 'q|' then
      local lease_ms = string.sub(lease, 3)
      local version = tonumber(got[1]) + 1
      lease = 'l|' .. lease_ms .. '|' .. worker .. '|' .. ARGV[1]
      if leases then
        leases[task_id] = lease
        redis.call('HSET', job, 'leases', cjson.encode(leases), 'v', version)
      else
        redis.call('HSET', job, 'l:' .. task_id, lease, 'v', version)
      end
      redis.call('ZADD', KEYS[2], 'LT', now + tonumber(lease_ms), job_id)
      out[#out + 1] = worker
      out[#out + 1] = got[3]
      out[#out + 1] = job_id
      out[#out + 1] = task_id
      out[#out + 1] = tostring(version)
      out[#out + 1] = lease
      w = w + 1
    end
  end
end
return out
