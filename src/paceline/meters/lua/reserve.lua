-- Reserve a request's cost on every meter of a key group, checking the key's state, all
-- at once; or say when it could go.
-- KEYS: group hash, key state hash
-- ARGV: now ('' for Redis's clock), configured meters, the epoch the caller last saw ('' if
--       none), reservation id (and epoch if it registers the group), floor (when the
--       caller last heard the group would admit a request), horizon, requests, tokens,
--       take a slot (1/0), slot lifetime, midnights, limits version the caller has, a name
--       for its configured meters, input tokens, output tokens
-- Returns: status (ok, later, full, key), at, now, slot taken, epoch, registered again,
--          key state, until, reason, meters reserved on, then the group's view.
local G, K = KEYS[1], KEYS[2]
local now = clock(ARGV[1])
local reinit = ensure(G, ARGV[2], now, ARGV[3], ARGV[4], ARGV[5])
local rid, horizon = ARGV[4], tonumber(ARGV[6])
local c = cost_of(ARGV[7], ARGV[8], ARGV[14], ARGV[15])
local days = {}
for _, d in ipairs(split(ARGV[11], ',')) do table.insert(days, tonumber(d)) end
local g = load(G)
if configure(g, ARGV[2], ARGV[13], now, rid) then
  save(g)
  g = load(G)
end
local state, till, reason = key_state(K, now)

local function answer(status, at, slot, mids)
  local head = {status, fmt(at), fmt(now), slot, g.f['e'] or '', tostring(reinit), state,
                fmt(till), reason, mids}
  for _, x in ipairs(view(g, now, ARGV[12], c, false)) do table.insert(head, x) end
  save(g)
  return head
end

if state == 'disabled' then return answer('key', now, '0', '') end
local conc = conc_meter(g)
local flying = 0
if conc then
  flying = in_flight(g, now, false)
  if flying >= conc.count then return answer('full', now, '0', '') end
end

-- A cooling key sends later than its meters would allow: reserve at that time, so
-- requests held back do not go as a burst.
local at = now
if (state == 'cooling' or state == 'parked') and till > now then at = till end
local later = false  -- a day not begun, or a fixed window not reset yet
for _, m in ipairs(g.meters) do
  if m.kind == 'gcra' then
    at = math.max(at, gcra_ready(g, m, units(m, c), now))
  elseif m.kind == 'tokens' then
    local list, w = buckets(g, m, now, false)
    at = math.max(at, tokens_ready(g, m, list, w, units(m, c), now))
  elseif m.kind == 'day' or m.kind == 'fixed' then
    local ready
    if m.kind == 'day' then
      day_roll(g, m, now, days)
      ready = day_ready(g, m, units(m, c), now)
    else
      ready = fixed_ready(g, m, units(m, c), now, false)
    end
    if ready > now then
      later = true
      at = math.max(at, ready)
    end
  end
end
-- Far ahead, or in a window not begun: reserve nothing (a request counted in this window
-- but sent in the next would escape both windows' counts).
if at - now > horizon or later then return answer('later', at, '0', '') end

local mids = {}
for _, m in ipairs(g.meters) do
  local u = units(m, c)
  if m.kind == 'gcra' then
    gcra_take(g, m, u, at)
  elseif m.kind == 'tokens' then
    -- the window's end moved on to ``at``: the buckets read at ``now`` still hold for it
    tokens_take(g, m, u, at)
  elseif m.kind == 'day' then
    set(g, 'du:' .. m.id, fmt(fl(g.f['du:' .. m.id], 0) + u))
  elseif m.kind == 'fixed' then
    fixed_take(g, m, u, now)
  end
  if m.kind ~= 'conc' then table.insert(mids, m.id) end
end
track(g, rid, now)  -- in flight, for the fixed windows (learned ones too)
local slot = '0'
if conc and ARGV[9] == '1' and at <= now then
  local S = G .. ':slots'
  redis.call('ZADD', S, fmt(now + tonumber(ARGV[10])), rid)
  redis.call('EXPIRE', S, math.ceil(tonumber(ARGV[10])) + 60)
  slot = '1'
end
return answer('ok', at, slot, table.concat(mids, ','))
