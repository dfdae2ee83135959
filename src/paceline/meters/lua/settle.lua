-- Settle, refund or release one reservation (meters restarted since are left alone).
-- KEYS: group hash
-- ARGV: epoch of the reservation, its send time, requests to add, tokens to add, tokens it
--       holds, meters it holds, reservation id, release its slot (1/0)
local G = KEYS[1]
if ARGV[8] == '1' then redis.call('ZREM', G .. ':slots', ARGV[7]) end
if ARGV[6] == '' or redis.call('HGET', G, 'e') ~= ARGV[1] then return 0 end
local g = load(G)
adjust(g, ARGV[6], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
save(g)
return 1
