-- Apply a key state: disabled is final; a short cool does not end a longer park; the same
-- state again keeps the later end (paceline.meters.protocol.KeyState.merge, in Lua).
-- KEYS: key state hash
-- ARGV: now, state, until, reason, how long a final state is kept
local K = KEYS[1]
local now = clock(ARGV[1])
local new, nu, nr = ARGV[2], fl(ARGV[3], 0), ARGV[4]
local v = redis.call('HMGET', K, 's', 'u', 'r')
local s, u, r = v[1] or 'ready', fl(v[2], 0), v[3] or ''
if s == 'disabled' then return 0 end
if new == 'ready' then
  if s == 'cooling' then redis.call('HSET', K, 's', 'ready') end
  return 1
end
if s == 'parked' and new == 'cooling' and u >= nu then return 0 end
local till = nu
if s == new then till = math.max(u, nu) end
if new == 'disabled' then till = u end
if nr == '' then nr = r end
redis.call('HSET', K, 's', new, 'u', fmt(till), 'r', nr)
if new == 'disabled' or till == math.huge then
  redis.call('EXPIRE', K, tonumber(ARGV[5]))
else
  redis.call('EXPIRE', K, math.max(1, math.ceil(till - now) + 60))
end
return 1
