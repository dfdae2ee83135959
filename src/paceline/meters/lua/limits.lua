-- What answers teach a group: learn or lower a limit, spend a meter until a time, slow the
-- request meters down after a 429 or let them recover, restore a day's count.
-- KEYS: group hash
-- ARGV: now, configured meters, epoch last seen, new epoch, floor, midnights, operation, then its arguments:
--   learn   meter count seconds burst   add the meter, or lower its count (never raise)
--   exhaust meter until                 nothing is left on the meter before ``until``
--   slow    factor floor                request meters slower by ``factor``, not below ``floor``
--   recover floor seconds               slowed meters regain their rate over ``seconds``
--   restore unit day_start used         the store's count for that day, if larger (unit: r or t)
local G = KEYS[1]
local now = clock(ARGV[1])
ensure(G, ARGV[2], now, ARGV[3], ARGV[4], ARGV[5])
local days = {}
for _, d in ipairs(split(ARGV[6], ',')) do table.insert(days, tonumber(d)) end
local op = ARGV[7]
local g = load(G)

local function bump() set(g, 'v', ARGV[4]) end

if op == 'learn' then
  local mid, count, seconds, burst = ARGV[8], tonumber(ARGV[9]), ARGV[10], tonumber(ARGV[11])
  local found = nil
  for _, m in ipairs(g.meters) do if m.id == mid then found = m end end
  -- what the provider said holds whatever workers configure (see configure in lib.lua)
  set(g, 'pa:' .. mid, tostring(math.min(count, fl(g.f['pa:' .. mid], math.huge))))
  if found == nil then
    local learned = 0
    for _, m in ipairs(g.meters) do if m.learned == '1' then learned = learned + 1 end end
    set(g, 'm:' .. mid, table.concat({count, seconds, burst, 1000 + learned, '1'}, '|'))
    bump()
  elseif count < found.count then
    set(g, 'm:' .. mid, table.concat({count, fmt(found.seconds), math.min(found.burst, burst),
                                      found.order, found.learned}, '|'))
    bump()
  end
elseif op == 'exhaust' then
  local till = fl(ARGV[9], now)
  for _, m in ipairs(g.meters) do
    if m.id == ARGV[8] then
      if m.kind == 'gcra' then
        local i = interval(m)
        set(g, 't:' .. m.id, fmt(math.max(fl(g.f['t:' .. m.id], 0), till + (m.burst - 1) * i)))
      elseif m.kind == 'tokens' then
        set(g, 'x:' .. m.id, fmt(math.max(fl(g.f['x:' .. m.id], 0), till)))
      elseif m.kind == 'day' then
        day_roll(g, m, now, days)
        set(g, 'du:' .. m.id, fmt(m.count))
        -- parked for the run is the key's state (kept a while), not this meter's forever
        if till ~= math.huge then
          set(g, 'de:' .. m.id, fmt(math.max(fl(g.f['de:' .. m.id], now), till)))
        end
      end
    end
  end
elseif op == 'slow' then
  local factor, floor = tonumber(ARGV[8]), tonumber(ARGV[9])
  for _, m in ipairs(g.meters) do
    if m.kind == 'gcra' then set(g, 'f:' .. m.id, fmt(math.max(floor, m.factor * factor))) end
  end
  set(g, 'sa', fmt(now))
  bump()
elseif op == 'recover' then
  local floor, seconds = tonumber(ARGV[8]), tonumber(ARGV[9])
  local gained = (now - fl(g.f['sa'], now)) / seconds
  local slowed = false
  for _, m in ipairs(g.meters) do
    if m.kind == 'gcra' and m.factor < 1 then
      set(g, 'f:' .. m.id, fmt(math.min(1, m.factor + gained * (1 - floor))))
      slowed = true
    end
  end
  if slowed then
    set(g, 'sa', fmt(now))
    bump()
  end
elseif op == 'restore' then
  local unit, start, used = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
  for _, m in ipairs(g.meters) do
    if m.kind == 'day' and m.unit == unit then
      day_roll(g, m, now, days)
      if math.abs(fl(g.f['ds:' .. m.id], -1) - start) < 0.001 then
        set(g, 'du:' .. m.id, fmt(math.max(fl(g.f['du:' .. m.id], 0), used)))
      end
    end
  end
end
save(g)
return 1
