-- Apply a batch of job changes, each guarded by its job's version (group commit: the
-- changes that queue up while one batch is on its way go together in the next).
-- KEYS: every key the plans name, each once (all share one partition's {pN} tag)
-- ARGV[1]: JSON {plans: [...], ready_channel, done_channel, publish}; each plan:
--   key: KEYS index of the job hash      id: job id
--   expect: version string ("" when creating: the job must not exist)
--   fields: flat [name, ARGV index of its value, ...] for the job hash (includes "v"); the
--     values travel as ARGV[2..] apart from the plan, so a large one (a document, an output,
--     a payload) is neither escaped into the plan's JSON nor decoded by cjson
--   hdel: [field] to delete from the job hash
--   enqueue: [[queue KEYS index, score, member]]   dequeue: [[queue KEYS index, member]]
--   timers: KEYS index of the timers zset; timer: score | false (remove) | "keep"
--   lower: true (absent: false): the timer's score only ever comes down (ZADD LT)
--   index: [KEYS index of the client index, score, KEYS index of the partition's set of
--     client names, client name] | false
--   labels: [KEYS index of a label index] (scored like the client index)
--   label_hash: [KEYS index of the client's job -> labels hash, labels JSON] | false
--   webhooks: KEYS index of the webhook outbox; webhook: score | false; webhook_member: the
--     outbox entry (the job id for its first end, `<id>|<n>` for its end after n redrives)
--   humans: KEYS index of the set of jobs waiting for a person; human: score (since when
--     the job waits) | false (it does not: removed, a no-op for most jobs)
--   ttl: ms | false     persist: true (an ended job runs again: drop its expiry) | false
--   ready: [message]     done: the job's new version (announced as `<id>:<version>`) | false
-- Sorted-set changes are collected and made with one ZREM and one ZADD per key, the
-- client names with one SADD per key (many jobs of a batch share a client), the
-- notifications with one `publish` (PUBLISH, or SPUBLISH on the partition's shard channels
-- on Redis Cluster) per channel. (A batch holds at most one plan per job,
-- so removals before additions keep each plan's own order.)
-- Lists of any length are sent in chunks: unpack() of a whole list would hit Lua's stack
-- limit ("too many results to unpack", at about 8,000 values) for one large change, such
-- as a `for_each` over thousands of items, and fail the whole batch.
-- Returns a list: 1 for each plan applied, 0 where the version did not match.
local CHUNK = 1000 -- values per command; even, so name/value and score/member pairs stay whole
local function chunked(command, key, list, flag)
  for first = 1, #list, CHUNK do
    local last = math.min(first + CHUNK - 1, #list)
    if flag then
      redis.call(command, key, flag, unpack(list, first, last))
    else
      redis.call(command, key, unpack(list, first, last))
    end
  end
end
local batch = cjson.decode(ARGV[1])
local out = {}
local adds, removes, lowers, ready, done, clients = {}, {}, {}, {}, {}, {}
local function push(lists, key, a, b)
  local list = lists[key]
  if not list then
    list = {}
    lists[key] = list
  end
  list[#list + 1] = a
  if b ~= nil then list[#list + 1] = b end
end
for i, plan in ipairs(batch.plans) do
  local job = KEYS[plan.key]
  local current = redis.call('HGET', job, 'v')
  local ok
  if plan.expect == '' then ok = not current else ok = current == plan.expect end
  if ok then
    local flat = plan.fields
    for n = 2, #flat, 2 do flat[n] = ARGV[flat[n]] end
    chunked('HSET', job, flat)
    chunked('HDEL', job, plan.hdel)
    for _, entry in ipairs(plan.dequeue) do push(removes, entry[1], entry[2]) end
    for _, entry in ipairs(plan.enqueue) do push(adds, entry[1], entry[2], entry[3]) end
    if plan.timer == false then
      push(removes, plan.timers, plan.id)
    elseif plan.timer ~= 'keep' then
      push(plan.lower and lowers or adds, plan.timers, plan.timer, plan.id)
    end
    if plan.index then
      push(adds, plan.index[1], plan.index[2], plan.id)
      for _, label in ipairs(plan.labels) do push(adds, label, plan.index[2], plan.id) end
      local names = clients[plan.index[3]]
      if not names then
        names = {}
        clients[plan.index[3]] = names
      end
      names[plan.index[4]] = true
    end
    if plan.label_hash then redis.call('HSET', KEYS[plan.label_hash[1]], plan.id, plan.label_hash[2]) end
    if plan.webhook then push(adds, plan.webhooks, plan.webhook, plan.webhook_member) end
    if plan.human then
      push(adds, plan.humans, plan.human, plan.id)
    else
      push(removes, plan.humans, plan.id)
    end
    if plan.ttl then redis.call('PEXPIRE', job, plan.ttl) end
    if plan.persist then redis.call('PERSIST', job) end
    for _, message in ipairs(plan.ready) do ready[message] = true end
    if plan.done then done[#done + 1] = plan.id .. ':' .. plan.done end
    out[i] = 1
  else
    out[i] = 0
  end
end
for key, members in pairs(removes) do chunked('ZREM', KEYS[key], members) end
for key, flat in pairs(adds) do chunked('ZADD', KEYS[key], flat) end
for key, flat in pairs(lowers) do chunked('ZADD', KEYS[key], flat, 'LT') end
for key, names in pairs(clients) do
  local list = {}
  for name in pairs(names) do list[#list + 1] = name end
  chunked('SADD', KEYS[key], list)
end
local lines = {}
for message in pairs(ready) do lines[#lines + 1] = message end
local publish = batch.publish
if #lines > 0 then redis.call(publish, batch.ready_channel, table.concat(lines, '\n')) end
if #done > 0 then redis.call(publish, batch.done_channel, table.concat(done, ' ')) end
return out
