-- Take tokens from a task type's rate-limit bucket (or give unused ones back).
-- KEYS[1] the bucket (hash: tokens = tokens left, at = ms of the last refill), under the
--   task type's own {r:<type>} hash tag
-- ARGV[1] tokens wanted (a negative count gives that many back, up to the burst)
-- ARGV[2] rate (tokens per second)   ARGV[3] burst (the bucket's size)
-- The clock is Redis's own (TIME): orchestrators on hosts whose clocks differ share one
-- bucket exactly. The bucket fills at `rate` per second up to `burst`, so in any interval
-- of T seconds at most burst + rate x T tokens are taken.
-- Returns {tokens granted, ms until the next token (0 when one is left)}.
local wanted = tonumber(ARGV[1])
local rate = tonumber(ARGV[2]) / 1000
local burst = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local got = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(got[1]), tonumber(got[2])
if not tokens then tokens, at = burst, now end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate)
  at = now
end
local granted = 0
if wanted < 0 then
  tokens = math.min(burst, tokens - wanted)
else
  granted = math.min(wanted, math.floor(tokens))
  tokens = tokens - granted
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', at)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 60000)
local next_ms = 0
if tokens < 1 then next_ms = math.ceil((1 - tokens) / rate) end
return {granted, next_ms}
