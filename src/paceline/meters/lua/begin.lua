-- A reserved request's send time has come: check its key again and take a slot; refused
-- (the key went bad, or every slot is taken), the reservation is refunded.
-- KEYS: group hash, key state hash
-- ARGV: now, configured meters, epoch last seen, new epoch, floor, reservation id, epoch of the reservation,
--       its send time, requests, tokens, meters it holds, slot lifetime, input tokens,
--       output tokens
-- Returns: status (ok, full, key), now, slot taken, key state, until, reason
local G, K = KEYS[1], KEYS[2]
local now = clock(ARGV[1])
ensure(G, ARGV[2], now, ARGV[3], ARGV[4], ARGV[5])
local g = load(G)
local state, till, reason = key_state(K, now)

local function refund()
  untrack(G, ARGV[6])
  if g.f['e'] == ARGV[7] then
    local held = cost_of(ARGV[9], ARGV[10], ARGV[13], ARGV[14])
    local change = {r = -held.r, t = -held.t, i = -held.i, o = -held.o}
    adjust(g, ARGV[11], tonumber(ARGV[8]), change, held)
    save(g)
  end
end

if state == 'disabled' or ((state == 'cooling' or state == 'parked') and till > now) then
  refund()
  return {'key', fmt(now), '0', state, fmt(till), reason}
end
local conc = conc_meter(g)
if not conc then return {'ok', fmt(now), '0', state, fmt(till), reason} end
if in_flight(g, now, false) >= conc.count then
  refund()
  return {'full', fmt(now), '0', state, fmt(till), reason}
end
local S = G .. ':slots'
redis.call('ZADD', S, fmt(now + tonumber(ARGV[12])), ARGV[6])
redis.call('EXPIRE', S, math.ceil(tonumber(ARGV[12])) + 60)
return {'ok', fmt(now), '1', state, fmt(till), reason}
