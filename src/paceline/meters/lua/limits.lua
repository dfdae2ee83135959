-- What answers teach a group: learn or lower a limit, spend a meter until a time, slow the
-- request meters down after a 429 or let them recover, restore a day's count, reconcile a
-- fixed window with what an answer says is left, cap the requests in flight after a
-- concurrency limit was answered.
-- KEYS: group hash
-- ARGV: now, configured meters, epoch last seen, new epoch, floor, midnights, operation, then its arguments:
--   learn     meter count seconds burst mode used   add the meter (``used`` spent already),
--                                       or lower its count (never raise), or make it fixed
--   exhaust   meter until               nothing is left on the meter before ``until``
--   slow      factor floor              request meters slower by ``factor``, not below ``floor``
--   recover   floor seconds capseconds forget   slowed meters regain their rate over
--                                       ``seconds``, a cut in-flight cap its level over
--                                       ``capseconds``; the level is forgotten after ``forget``
--   restore   unit day_start used       the store's count for that day, if larger (unit: r or t)
--   reconcile meter remaining reset slack   an answer of a fixed window
--   throttle  in_flight cut hold capseconds forget   a concurrency limit was answered
local G = KEYS[1]
local now = clock(ARGV[1])
ensure(G, ARGV[2], now, ARGV[3], ARGV[4], ARGV[5])
local days = {}
for _, d in ipairs(split(ARGV[6], ',')) do table.insert(days, tonumber(d)) end
local op = ARGV[7]
local g = load(G)

local function bump() set(g, 'v', ARGV[4]) end

local function find(mid)
  for _, m in ipairs(g.meters) do if m.id == mid then return m end end
  return nil
end

-- The lowest count any worker configured for ``mid`` (nil: none did).
local function configured_count(mid)
  local best = nil
  for field, value in pairs(g.f) do
    if string.sub(field, 1, 3) == 'cs:' then
      for _, item in ipairs(split(value, ';')) do
        local p = split(item, '|')
        if p[1] == mid and (best == nil or tonumber(p[2]) < best) then best = tonumber(p[2]) end
      end
    end
  end
  return best
end

-- The in-flight cap in force: from the cut back up to the level that tripped the limit,
-- over ``capseconds``; forgotten ``forget`` seconds after the trip. Says if it changed.
local function apply_cap(capseconds, forget)
  if not g.f['cc'] then return false end
  local base = configured_count('c')
  local m = find('c')
  local order = 2000
  if m then order = m.order end
  local elapsed = now - fl(g.f['ct'], now)
  if elapsed >= forget then
    unset(g, 'cc')
    unset(g, 'ck')
    unset(g, 'ct')
    unset(g, 'pa:c')
    if base then
      set(g, 'm:c', table.concat({base, 0, 0, order, '0', ''}, '|'))
    else
      unset(g, 'm:c')
    end
    return true
  end
  local cc, ck = tonumber(g.f['cc']), tonumber(g.f['ck'])
  local cap = math.floor(ck + (cc - ck) * math.min(1, math.max(0, elapsed / capseconds)))
  if base then cap = math.min(cap, base) end
  cap = math.max(1, cap)
  set(g, 'pa:c', tostring(cap))
  local spec = table.concat({cap, 0, 0, order, '1', ''}, '|')
  if g.f['m:c'] ~= spec then
    set(g, 'm:c', spec)
    return true
  end
  return false
end

if op == 'learn' then
  local mid, count, seconds, burst = ARGV[8], tonumber(ARGV[9]), ARGV[10], tonumber(ARGV[11])
  local mode, used = ARGV[12] or '', fl(ARGV[13], 0)
  local found = find(mid)
  -- what the provider said holds whatever workers configure (see configure in lib.lua)
  set(g, 'pa:' .. mid, tostring(math.min(count, fl(g.f['pa:' .. mid], math.huge))))
  if mode == 'f' then set(g, 'pm:' .. mid, 'f') end
  if found == nil then
    local learned = 0
    for _, m in ipairs(g.meters) do if m.learned == '1' then learned = learned + 1 end end
    set(g, 'm:' .. mid, table.concat({count, seconds, burst, 1000 + learned, '1', mode}, '|'))
    local k = kind(mid, tonumber(seconds), mode)
    if used > 0 and (k == 'gcra' or (k == 'tokens' and mode ~= 'f')) then
      -- paced (smooth token windows too): as if spent at the meter's rate up to now
      local i = tonumber(seconds) / (count - burst + 1)
      set(g, 't:' .. mid, fmt(math.max(fl(g.f['t:' .. mid], 0), now + used * i)))
    end
    if used > 0 and k == 'tokens' then
      local w = tonumber(seconds) / NB
      local tb = G .. ':tb:' .. mid
      redis.call('HINCRBYFLOAT', tb, string.format('%.0f', math.floor(now / w)), used)
      redis.call('EXPIRE', tb, math.ceil(2 * tonumber(seconds)) + 60)
      set(g, 'l:' .. mid, fmt(math.max(fl(g.f['l:' .. mid], 0), now)))
    end
    bump()
  else
    local newmode = found.mode
    if mode == 'f' and found.mode == '' then newmode = 'f' end
    local newcount = math.min(count, found.count)
    if newcount < found.count or newmode ~= found.mode then
      set(g, 'm:' .. mid, table.concat({newcount, fmt(found.seconds),
                                        math.min(found.burst, burst), found.order,
                                        found.learned, newmode}, '|'))
      bump()
    end
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
        if m.mode ~= 'f' then  -- then the pace goes on from there
          set(g, 't:' .. m.id, fmt(math.max(fl(g.f['t:' .. m.id], 0), till)))
        end
      elseif m.kind == 'fixed' then
        fixed_exhaust(g, m, till)
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
elseif op == 'reconcile' then
  local m = find(ARGV[8])
  if m and m.kind == 'fixed' then
    local reset = nil
    if ARGV[10] ~= '' then reset = tonumber(ARGV[10]) end
    fixed_reconcile(g, m, tonumber(ARGV[9]), reset, fl(ARGV[11], 0), now)  -- ('' = nil)
  end
elseif op == 'throttle' then
  local level = math.max(1, tonumber(ARGV[8]) - 1)
  local cut, hold = tonumber(ARGV[9]), tonumber(ARGV[10])
  if g.f['cc'] and now - fl(g.f['ct'], -math.huge) < hold then
    local cc = math.min(tonumber(g.f['cc']), level)  -- the same burst answered: no new cut
    set(g, 'cc', tostring(cc))
    set(g, 'ck', tostring(math.min(tonumber(g.f['ck']), cc)))
  else
    -- tripped again below a level learned before: that level was too high
    if g.f['cc'] then
      local cc = tonumber(g.f['cc'])
      level = math.min(level, math.max(1, cc - math.max(1, math.floor(cc / 10))))
    end
    set(g, 'cc', tostring(level))
    set(g, 'ck', tostring(math.max(1, math.floor(cut * level))))
    set(g, 'ct', fmt(now))
  end
  apply_cap(tonumber(ARGV[11]), tonumber(ARGV[12]))
  bump()
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
  local changed = false
  for _, m in ipairs(g.meters) do
    if m.kind == 'gcra' and m.factor < 1 then
      set(g, 'f:' .. m.id, fmt(math.min(1, m.factor + gained * (1 - floor))))
      changed = true
    end
  end
  if changed then set(g, 'sa', fmt(now)) end
  if ARGV[10] and apply_cap(tonumber(ARGV[10]), tonumber(ARGV[11])) then changed = true end
  if changed then bump() end
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
