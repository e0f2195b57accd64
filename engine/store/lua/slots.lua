-- Take or give back a slot of a concurrency key, and admit the jobs next in line.
-- KEYS[1] the key's jobs holding a slot (zset member `<job id>|<round>` -> admission number)
-- KEYS[2] the key's jobs waiting for one (zset member -> arrival number: FIFO)
-- KEYS[3] the key's counters (hash: seq = arrivals, n = admissions)
-- (all three share the key's own {c:<tag>} hash tag: one slot)
-- ARGV[1] "acquire" (the member arrives, or is already in line or admitted: idempotent) or
--         "release" (the member's job ended: it leaves the line or its slot; idempotent)
-- ARGV[2] the member   ARGV[3] an earlier round of the same job to forget, or ""
-- ARGV[4] the limit (slots)   ARGV[5] ms the counters live on after their last use
-- Admission happens here only, under ZCARD(KEYS[1]) < limit: never more than `limit` hold
-- a slot, whichever orchestrator runs the script.
-- Returns {where, number, admitted...}: where the member stands afterwards ("run", "wait"
-- or "gone"), its admission number or 0-based place in line (0 when gone), then a pair
-- (member, admission number) for each job admitted by this call (the member itself when
-- it was already admitted, so a caller that died before starting it starts it now).
local run, wait, meta = KEYS[1], KEYS[2], KEYS[3]
local op, member, previous = ARGV[1], ARGV[2], ARGV[3]
local limit = tonumber(ARGV[4])
local out = {'gone', 0}
if previous ~= '' then
  redis.call('ZREM', run, previous)
  redis.call('ZREM', wait, previous)
end
if op == 'release' then
  redis.call('ZREM', run, member)
  redis.call('ZREM', wait, member)
else
  local admitted = redis.call('ZSCORE', run, member)
  if admitted then
    out[3] = member
    out[4] = admitted
  elseif not redis.call('ZSCORE', wait, member) then
    redis.call('ZADD', wait, redis.call('HINCRBY', meta, 'seq', 1), member)
  end
end
while redis.call('ZCARD', run) < limit do
  local head = redis.call('ZRANGE', wait, 0, 0)[1]
  if not head then break end
  redis.call('ZREM', wait, head)
  local n = redis.call('HINCRBY', meta, 'n', 1)
  redis.call('ZADD', run, n, head)
  out[#out + 1] = head
  out[#out + 1] = tostring(n)
end
if op == 'acquire' then
  local n = redis.call('ZSCORE', run, member)
  if n then
    out[1], out[2] = 'run', n
  else
    out[1], out[2] = 'wait', redis.call('ZRANK', wait, member)
  end
end
-- The counters expire once the key is idle long enough; the two sets never do (a job may
-- hold its slot for any time), and Redis drops each once its last member leaves.
redis.call('PEXPIRE', meta, ARGV[5])
return out
