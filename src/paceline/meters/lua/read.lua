-- Read a group and its keys' states back, changing no meter; keep this process's
-- in-flight slots (and its requests in flight for fixed windows) alive.
-- KEYS: group hash, then the key state hashes
-- ARGV: now, limits version the caller has, slot lifetime, then the reservation ids it
--       holds in flight
-- Returns: present (1/0), epoch, then the group's view, then state, until, reason per key.
local G = KEYS[1]
local now = clock(ARGV[1])
local out = {}
if redis.call('EXISTS', G) == 1 then
  local g = load(G)
  out = {'1', g.f['e'] or ''}
  for _, x in ipairs(view(g, now, ARGV[2], cost_of(1, 0, 0, 0), true)) do
    table.insert(out, x)
  end
  if #ARGV > 3 then
    local S, F = G .. ':slots', G .. ':fly'
    for i = 4, #ARGV do
      redis.call('ZADD', S, 'XX', fmt(now + tonumber(ARGV[3])), ARGV[i])
      redis.call('ZADD', F, 'XX', fmt(now + FLY_TTL), ARGV[i])
    end
  end
else
  out = {'0', '', '', '', '', '0', fmt(now), ''}
end
for i = 2, #KEYS do
  local s, u, r = key_state(KEYS[i], now)
  table.insert(out, s)
  table.insert(out, fmt(u))
  table.insert(out, r)
end
return out
