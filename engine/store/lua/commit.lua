-- Apply one state change to a job, guarded by its version.
-- KEYS[1] job hash (v, doc, h:<seq> history)   KEYS[2] task leases hash
-- KEYS[3] task payloads hash                    KEYS[4] timers zset
-- KEYS[5] client index zset                     KEYS[6] webhook outbox zset
-- KEYS[7 ..] task-type queues named by the plan (all KEYS share the job's {pN} tag)
-- ARGV[1] expected version ("" when creating: the job must not exist)
-- ARGV[2] the plan, JSON:
--   fields: {name: value} for the job hash (includes "v")
--   leases: {task_id: "q|<lease_ms>"} to set     drop: [task_id] to delete
--   payloads: {task_id: json} to set
--   timer: score | false (remove) | "keep"
--   enqueue: [[queue KEYS index, score, member]]   dequeue: [[queue KEYS index, member]]
--   ttl: ms | false     index: score | false     webhook: score | false
--   ready: [message]    done: true | false        job: job id
-- Returns 1 when applied, 0 when the version did not match.
local current = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == '' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return 0
end
local plan = cjson.decode(ARGV[2])
local flat = {}
for name, value in pairs(plan.fields) do
  flat[#flat + 1] = name
  flat[#flat + 1] = value
end
redis.call('HSET', KEYS[1], unpack(flat))
flat = {}
for task_id, lease in pairs(plan.leases) do
  flat[#flat + 1] = task_id
  flat[#flat + 1] = lease
end
if #flat > 0 then redis.call('HSET', KEYS[2], unpack(flat)) end
flat = {}
for task_id, payload in pairs(plan.payloads) do
  flat[#flat + 1] = task_id
  flat[#flat + 1] = payload
end
if #flat > 0 then redis.call('HSET', KEYS[3], unpack(flat)) end
if #plan.drop > 0 then
  redis.call('HDEL', KEYS[2], unpack(plan.drop))
  redis.call('HDEL', KEYS[3], unpack(plan.drop))
end
for _, entry in ipairs(plan.dequeue) do
  redis.call('ZREM', KEYS[entry[1]], entry[2])
end
for _, entry in ipairs(plan.enqueue) do
  redis.call('ZADD', KEYS[entry[1]], entry[2], entry[3])
end
if plan.timer == false then
  redis.call('ZREM', KEYS[4], plan.job)
elseif plan.timer ~= 'keep' then
  redis.call('ZADD', KEYS[4], plan.timer, plan.job)
end
if plan.index then redis.call('ZADD', KEYS[5], plan.index, plan.job) end
if plan.webhook then redis.call('ZADD', KEYS[6], plan.webhook, plan.job) end
if plan.ttl then
  redis.call('PEXPIRE', KEYS[1], plan.ttl)
  redis.call('DEL', KEYS[2], KEYS[3])
end
for _, message in ipairs(plan.ready) do
  redis.call('PUBLISH', plan.ready_channel, message)
end
if plan.done then redis.call('PUBLISH', plan.done_channel, plan.job) end
return 1
