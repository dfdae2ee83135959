-- Settle, refund or release one reservation (meters restarted since are left alone).
-- KEYS: group hash
-- ARGV: epoch of the reservation, its send time, requests to add, tokens to add, input
--       tokens to add, output tokens to add, tokens it holds, input tokens it holds,
--       output tokens it holds, meters it holds, reservation id, release its slot (1/0),
--       no longer in flight for fixed windows (1/0)
local G = KEYS[1]
if ARGV[12] == '1' then redis.call('ZREM', G .. ':slots', ARGV[11]) end
if ARGV[13] == '1' then untrack(G, ARGV[11]) end
if ARGV[10] == '' or redis.call('HGET', G, 'e') ~= ARGV[1] then return 0 end
local g = load(G)
local change = cost_of(ARGV[3], ARGV[4], ARGV[5], ARGV[6])
local held = cost_of(0, ARGV[7], ARGV[8], ARGV[9])
adjust(g, ARGV[10], tonumber(ARGV[2]), change, held)
save(g)
return 1
