-- Shared by every paceline meter script (put in front of each one).
--
-- A key group lives in one hash G:
--   m:<meter>  = "count|seconds|burst|order|learned|mode"  the limits in force; mode is
--                '' (as the provider says), 'f' (fixed) or 's' (smooth)
--   f:<meter>  = slowdown factor (request windows)      t:<meter> = GCRA theoretical arrival
--   l:<meter>  = last reservation time (token windows)  x:<meter> = nothing before then
--   du:/ds:/de:<meter> = a day meter's count, window start and end
--   we:/wa:/wl:/wk:<meter> = a fixed window's end, whether the provider announced it, the
--                least an answer in it said was left, and the precision of the end
--   e = epoch (a new one when the group is registered again), v = version of the limits,
--   sa = when the group was last slowed down, pa:<meter> = the lowest count the provider
--   announced, pm:<meter> = 'f' when it announced the window fixed, c:<hash> / cs:<hash>
--   = until when a worker's configured limits count, and those limits, cc/ck/ct = the
--   in-flight level a concurrency limit answered, the cap it was cut to, and when
-- with G..':tb:'..<meter> (token buckets: bucket index -> units), G..':slots' (in-flight
-- requests holding a slot: reservation id scored by expiry) and G..':fly' (every request
-- in flight, for the fixed windows: reservation id scored by expiry). A
-- key's state is a hash: s, u (until), r. Meter names are unit and window: r60
-- (requests/minute), t60 (tokens/minute), i60 / o60 (input / output tokens per minute),
-- r86400 (requests/day), c (concurrent). Times are epoch seconds, sent as text (Lua
-- numbers come back from Redis as integers).

local NB = 100          -- buckets per token window: admits up to 1 % late, never too much
local EDGE = 0.001      -- past a window's edge, for providers counting it closed on both ends
local TTL = 3 * 86400   -- an idle group is forgotten after three days
-- After a loss, nothing goes for this long: requests other workers reserved before it (and
-- that no one can tell Redis about yet) are sent meanwhile.
local RESTART_GRACE = 1.0
-- A worker's configured limits count while it asked within this long.
local CONFIG_TTL = 60

local function fl(x, default)
  if x == nil or x == false or x == '' then return default end
  local v = tonumber(x)
  if v == nil then return default end
  return v
end

local function fmt(x)
  if x == math.huge then return 'inf' end
  if x == -math.huge then return '-inf' end
  return string.format('%.6f', x)
end

local function clock(arg)
  local now = tonumber(arg)
  if now then return now end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function split(text, sep)
  local out = {}
  for part in string.gmatch(text or '', '[^' .. sep .. ']+') do table.insert(out, part) end
  return out
end

local TOKEN_UNITS = {t = true, i = true, o = true}

local function kind(mid, seconds, mode)
  local unit = string.sub(mid, 1, 1)
  if unit == 'c' then return 'conc' end
  if seconds >= 86400 then return 'day' end
  if TOKEN_UNITS[unit] then return 'tokens' end
  if mode == 'f' then return 'fixed' end
  return 'gcra'
end

-- The group: its hash as a table, and its meters in display order.
local function load(G)
  local h = redis.call('HGETALL', G)
  local g = {key = G, f = {}, meters = {}, dirty = {}, gone = {}}
  for i = 1, #h, 2 do g.f[h[i]] = h[i + 1] end
  for field, value in pairs(g.f) do
    if string.sub(field, 1, 2) == 'm:' then
      local mid = string.sub(field, 3)
      local p = split(value, '|')
      local m = {id = mid, unit = string.sub(mid, 1, 1), count = tonumber(p[1]),
                 seconds = tonumber(p[2]), burst = tonumber(p[3]), order = tonumber(p[4]),
                 learned = p[5] or '0', mode = p[6] or ''}
      m.kind = kind(mid, m.seconds, m.mode)
      m.factor = fl(g.f['f:' .. mid], 1)
      table.insert(g.meters, m)
    end
  end
  table.sort(g.meters, function(a, b) return a.order < b.order end)
  return g
end

local function set(g, field, value)
  g.f[field] = value
  g.dirty[field] = true
  g.gone[field] = nil
end

local function unset(g, field)
  g.f[field] = nil
  g.dirty[field] = nil
  g.gone[field] = true
end

local function save(g)
  local args, gone = {}, {}
  for field, _ in pairs(g.dirty) do
    table.insert(args, field)
    table.insert(args, g.f[field])
  end
  for field, _ in pairs(g.gone) do table.insert(gone, field) end
  if #args > 0 then redis.call('HSET', g.key, unpack(args)) end
  if #gone > 0 then redis.call('HDEL', g.key, unpack(gone)) end
  g.dirty, g.gone = {}, {}
  redis.call('EXPIRE', g.key, TTL)
end

local function default_burst(count, seconds)
  return math.max(1, math.min(1 + math.floor(count / 100), math.ceil(count / seconds)))
end

-- The configured limits in force: each window at the lowest count among the workers that
-- asked within CONFIG_TTL (two jobs sharing a key, or a redeploy with new limits), and no
-- higher than the provider announced. ``spec`` (named ``hash``) is the caller's. Says
-- whether the meters changed (the caller then loads the group again).
local function configure(g, spec, hash, now, version)
  local changed = false
  if fl(g.f['c:' .. hash], -math.huge) < now + CONFIG_TTL / 2 then  -- renewed twice a TTL
    changed = g.f['cs:' .. hash] == nil
    set(g, 'c:' .. hash, fmt(now + CONFIG_TTL))
    set(g, 'cs:' .. hash, spec)
  end
  local wanted = {}
  for field, value in pairs(g.f) do
    if string.sub(field, 1, 2) == 'c:' then
      local other = string.sub(field, 3)
      if tonumber(value) <= now then
        unset(g, field)
        unset(g, 'cs:' .. other)
        changed = true
      else
        for _, item in ipairs(split(g.f['cs:' .. other], ';')) do
          local p = split(item, '|')
          local w = wanted[p[1]]
          if w == nil or tonumber(p[2]) < w.count then
            wanted[p[1]] = {count = tonumber(p[2]), seconds = p[3], burst = tonumber(p[4]),
                            order = p[5], mode = p[6] or (w and w.mode) or ''}
          elseif (p[6] or '') ~= '' and w.mode == '' then
            w.mode = p[6]
          end
        end
      end
    end
  end
  if not changed then return false end
  for mid, w in pairs(wanted) do
    local count = math.min(w.count, fl(g.f['pa:' .. mid], math.huge))
    local burst = w.burst
    if string.sub(mid, 1, 1) ~= 'c' then
      burst = math.min(burst, default_burst(count, tonumber(w.seconds)))
    end
    local mode = w.mode
    if mode == '' then mode = g.f['pm:' .. mid] or '' end
    local learned = '0'
    if mid == 'c' and g.f['cc'] then learned = '1' end
    set(g, 'm:' .. mid, table.concat({count, w.seconds, burst, w.order, learned, mode}, '|'))
  end
  for _, m in ipairs(g.meters) do
    if m.learned == '0' and wanted[m.id] == nil then unset(g, 'm:' .. m.id) end
  end
  set(g, 'v', version)
  return true
end

local function interval(m)
  return m.seconds / (m.count - m.burst + 1) / m.factor
end

-- Register the configured meters ("mid|count|seconds|burst|order;..."). A group this
-- process had seen before is gone (Redis restarted, its state lost): start conservatively,
-- as if every window had been spent at the full rate up to now (no initial burst), not
-- before ``floor``, the time the caller last heard the group would admit a request
-- (requests reserved before the loss are still to be sent), and after a grace.
local function register(G, spec, now, conservative, epoch, floor)
  local fields = {'e', epoch, 'v', epoch}
  floor = math.max(now, floor) + RESTART_GRACE
  for _, item in ipairs(split(spec, ';')) do
    local p = split(item, '|')
    local mid, count, seconds, burst = p[1], tonumber(p[2]), tonumber(p[3]), tonumber(p[4])
    table.insert(fields, 'm:' .. mid)
    table.insert(fields, p[2] .. '|' .. p[3] .. '|' .. p[4] .. '|' .. p[5] .. '|0|' .. (p[6] or ''))
    local k = kind(mid, seconds, p[6] or '')
    if conservative and k == 'gcra' then
      local i = seconds / (count - burst + 1)
      table.insert(fields, 't:' .. mid)
      table.insert(fields, fmt(floor + (burst - 1) * i))
    elseif conservative and k == 'tokens' then
      local w = seconds / NB
      local last = math.floor(now / w)
      local tb = G .. ':tb:' .. mid
      redis.call('DEL', tb)
      for b = last - NB + 1, last do
        redis.call('HSET', tb, string.format('%.0f', b), fmt(count / NB))
      end
      redis.call('EXPIRE', tb, math.ceil(2 * seconds) + 60)
      table.insert(fields, 'l:' .. mid)
      table.insert(fields, fmt(floor))
    end
  end
  redis.call('HSET', G, unpack(fields))
  redis.call('EXPIRE', G, TTL)
end

-- Make sure the group is registered. ``seen`` is the epoch the caller last saw ('' if none):
-- when the group was lost and registered again since, what the caller knew of the time
-- before still holds (requests it had reserved until ``floor`` are still to be sent), and
-- it is told (1), to send again what it had learned.
local function ensure(G, spec, now, seen, epoch, floor)
  local before = fl(floor, now)
  if redis.call('EXISTS', G) == 0 then
    register(G, spec, now, seen ~= '', epoch, before)
    if seen ~= '' then return 1 end
    return 0
  end
  if seen == '' or redis.call('HGET', G, 'e') == seen then return 0 end
  local g = load(G)
  for _, m in ipairs(g.meters) do
    if m.kind == 'gcra' then
      local tat = before + (m.burst - 1) * interval(m)
      set(g, 't:' .. m.id, fmt(math.max(fl(g.f['t:' .. m.id], 0), tat)))
    elseif m.kind == 'tokens' then
      set(g, 'l:' .. m.id, fmt(math.max(fl(g.f['l:' .. m.id], 0), before)))
    end
  end
  save(g)
  return 1
end

-- A key's state, as stored (expired cooling and parking read as ready).
local function key_state(K, now)
  local v = redis.call('HMGET', K, 's', 'u', 'r')
  local s, u, r = v[1], fl(v[2], 0), v[3] or ''
  if not s then return 'ready', 0, '' end
  if (s == 'cooling' or s == 'parked') and u <= now then return 'ready', u, r end
  return s, u, r
end

-- GCRA: when ``cost`` fits, and the reservation.
local function gcra_ready(g, m, cost, now)
  if cost <= 0 then return now end
  local i = interval(m)
  local tat = fl(g.f['t:' .. m.id], 0)
  return math.max(now, tat + cost * i - math.max(m.burst, cost) * i)
end

local function gcra_take(g, m, cost, at)
  if cost <= 0 then return end
  local tat = math.max(fl(g.f['t:' .. m.id], 0), at) + cost * interval(m)
  set(g, 't:' .. m.id, fmt(tat))
end

-- Settle: ``u`` units more (or, negative, fewer) than reserved.
local function gcra_adjust(g, m, u)
  if u ~= 0 then set(g, 't:' .. m.id, fmt(fl(g.f['t:' .. m.id], 0) + u * interval(m))) end
end

-- Token windows as time buckets (NB per window), oldest first; buckets that no window
-- from ``now`` on can hold are dropped.
local function buckets(g, m, now, pure)
  local tb = g.key .. ':tb:' .. m.id
  local w = m.seconds / NB
  local h = redis.call('HGETALL', tb)
  local list, gone = {}, {}
  for i = 1, #h, 2 do
    local b = tonumber(h[i])
    if (b + 1) * w <= now - m.seconds then
      table.insert(gone, h[i])
    else
      table.insert(list, {b, tonumber(h[i + 1])})
    end
  end
  if #gone > 0 and not pure then redis.call('HDEL', tb, unpack(gone)) end
  table.sort(list, function(a, b) return a[1] < b[1] end)
  return list, w
end

-- A smooth token window (not announced fixed) is paced as GCRA as well as logged: the
-- log alone lets a minute's tokens go at once, then stalls while a provider's bucket
-- refills as it goes; the pace alone could let a window hold one request more.
local function paced(m)
  return m.kind == 'tokens' and m.mode ~= 'f'
end

-- Earliest time, not before the last reservation, that the window ending then holds
-- ``cost`` more; a request larger than the whole limit goes alone into an empty window.
local function tokens_ready(g, m, list, w, cost, now)
  local at = math.max(now, fl(g.f['l:' .. m.id], 0), fl(g.f['x:' .. m.id], 0))
  if cost <= 0 then return at end
  local total = 0
  for _, b in ipairs(list) do total = total + b[2] end
  local i = 1
  while i <= #list and (list[i][1] + 1) * w <= at - m.seconds do
    total = total - list[i][2]
    i = i + 1
  end
  while total + cost > m.count and i <= #list do
    at = math.max(at, (list[i][1] + 1) * w + m.seconds + EDGE)
    total = total - list[i][2]
    i = i + 1
  end
  if paced(m) then at = math.max(at, gcra_ready(g, m, cost, now)) end
  return at
end

local function tokens_take(g, m, cost, at)
  if cost <= 0 then return end
  local tb = g.key .. ':tb:' .. m.id
  local w = m.seconds / NB
  redis.call('HINCRBYFLOAT', tb, string.format('%.0f', math.floor(at / w)), cost)
  redis.call('EXPIRE', tb, math.ceil(2 * m.seconds) + 60)
  set(g, 'l:' .. m.id, fmt(math.max(fl(g.f['l:' .. m.id], 0), at)))
  if paced(m) then gcra_take(g, m, cost, at) end
end

local function tokens_adjust(g, m, at, change)
  if change == 0 then return end
  if paced(m) then gcra_adjust(g, m, change) end
  local tb = g.key .. ':tb:' .. m.id
  local field = string.format('%.0f', math.floor(at / (m.seconds / NB)))
  local left = tonumber(redis.call('HINCRBYFLOAT', tb, field, change))
  if left <= 0 then redis.call('HDEL', tb, field) end
end

-- Day meters: the window holding ``now``, from the midnights the caller sent (its time
-- zone is not Redis's business).
local function day_roll(g, m, now, days)
  local de = fl(g.f['de:' .. m.id], -math.huge)
  if now < de then return end
  local n = math.max(1, math.floor(m.seconds / 86400 + 0.5))
  local k = 1
  while days[k + 1] and days[k + 1] <= now do k = k + 1 end
  local ds = days[k] or now
  set(g, 'du:' .. m.id, '0')
  set(g, 'ds:' .. m.id, fmt(ds))
  set(g, 'de:' .. m.id, fmt(days[k + n] or (ds + n * 86400)))
end

local function day_ready(g, m, cost, now)
  local used = fl(g.f['du:' .. m.id], 0)
  if used + cost <= m.count or used == 0 then return now end
  return fl(g.f['de:' .. m.id], now)
end

-- A cost: {r = requests, t = tokens, i = input tokens, o = output tokens}.
local function cost_of(r, t, i, o)
  return {r = tonumber(r) or 0, t = tonumber(t) or 0, i = tonumber(i) or tonumber(t) or 0,
          o = tonumber(o) or tonumber(t) or 0}
end

local function units(m, c)
  if TOKEN_UNITS[m.unit] then return c[m.unit] end
  return c.r
end

-- Give back (or settle) what a reservation holds on the meters it was made on: ``change``
-- and ``held`` are costs. A fixed window gives nothing back (the provider may have counted
-- the request; its next answer says what is left).
local function adjust(g, mids, at, change, held)
  local wanted = {}
  for _, mid in ipairs(split(mids, ',')) do wanted[mid] = true end
  for _, m in ipairs(g.meters) do
    if wanted[m.id] then
      if m.kind == 'gcra' then
        gcra_adjust(g, m, units(m, change))
      elseif m.kind == 'tokens' then
        tokens_adjust(g, m, at, math.max(-units(m, held), units(m, change)))
      elseif m.kind == 'day' then
        local u = units(m, change)
        if u ~= 0 then set(g, 'du:' .. m.id, fmt(math.max(0, fl(g.f['du:' .. m.id], 0) + u))) end
      end
    end
  end
end

-- Fixed windows. Of a window's answers, the one that says least came from the request
-- admitted last: every other one answered was admitted before it and is in its count.
-- What is left: that least count, less the requests still in flight (they may have been
-- admitted after it). Spent, nothing goes before the reset (and its precision); then the
-- whole window again, less what is still in flight.
local FLY_TTL = 120     -- a request in flight is forgotten after this long unless renewed
local LAND_POLL = 0.1   -- how soon a window held back by requests in flight is asked again

-- Requests in flight (reservation id scored by expiry; renewed by the workers' reads).
local function flying(g, now, pure)
  local F = g.key .. ':fly'
  if pure then return redis.call('ZCOUNT', F, '(' .. fmt(now), '+inf') end
  redis.call('ZREMRANGEBYSCORE', F, '-inf', fmt(now))
  return redis.call('ZCARD', F)
end

local function track(g, rid, now)
  local F = g.key .. ':fly'
  redis.call('ZADD', F, fmt(now + FLY_TTL), rid)
  redis.call('EXPIRE', F, FLY_TTL + 60)
end

local function untrack(G, rid)
  redis.call('ZREM', G .. ':fly', rid)
end

-- When the window may be used again (+inf while its end is not known).
local function fixed_reset(g, m)
  local we = fl(g.f['we:' .. m.id], math.huge)
  return we + math.max(0.001, fl(g.f['wk:' .. m.id], 0))
end

-- What is left, and the requests in flight that hold the rest back.
local function fixed_avail(g, m, now, pure)
  local f = flying(g, now, pure)
  if now >= fixed_reset(g, m) then return m.count - f, f end
  return fl(g.f['wl:' .. m.id], m.count) - f, f
end

local function fixed_roll(g, m, now)
  if now >= fixed_reset(g, m) then
    unset(g, 'we:' .. m.id)
    unset(g, 'wk:' .. m.id)
    set(g, 'wa:' .. m.id, '0')
    set(g, 'wl:' .. m.id, tostring(m.count))
  end
end

local function fixed_ready(g, m, cost, now, pure)
  if cost <= 0 then return now end
  if not pure then fixed_roll(g, m, now) end
  local left, f = fixed_avail(g, m, now, pure)
  if left >= cost then return now end
  local reset = fixed_reset(g, m)
  if left + f >= cost or reset == math.huge then
    return now + LAND_POLL  -- held back by requests in flight: look again as they land
  end
  return reset
end

local function fixed_take(g, m, cost, now)
  fixed_roll(g, m, now)
  if cost > 0 and g.f['we:' .. m.id] == nil then
    set(g, 'we:' .. m.id, fmt(now + m.seconds))  -- the window opens with its first request
    set(g, 'wa:' .. m.id, '0')
  end
end

local function fixed_reconcile(g, m, remaining, reset, slack, now)
  if remaining == nil then  -- the answer said nothing of the window: its request counts
    if now < fixed_reset(g, m) or fixed_reset(g, m) == math.huge then
      set(g, 'wl:' .. m.id, tostring(fl(g.f['wl:' .. m.id], m.count) - 1))
    end
    return
  end
  if reset then
    if reset + math.max(0.001, slack) <= now then return end  -- a window that is over
    local tolerance = math.max(slack, math.min(1.5, m.seconds / 4))
    local announced = g.f['wa:' .. m.id] == '1'
    local we = fl(g.f['we:' .. m.id], -math.huge)
    if announced and reset < we - tolerance then return end  -- from the window before
    if not announced or reset > we + tolerance then
      set(g, 'we:' .. m.id, fmt(reset))
      set(g, 'wk:' .. m.id, fmt(slack))
      set(g, 'wa:' .. m.id, '1')
      set(g, 'wl:' .. m.id, tostring(remaining))
      return
    end
  end
  set(g, 'wl:' .. m.id, tostring(math.min(fl(g.f['wl:' .. m.id], m.count), remaining)))
end

local function fixed_exhaust(g, m, till)
  set(g, 'wl:' .. m.id, '0')
  if till ~= math.huge then
    set(g, 'we:' .. m.id, fmt(math.max(fl(g.f['we:' .. m.id], -math.huge), till)))
    set(g, 'wa:' .. m.id, '1')
  end
end

local function conc_meter(g)
  for _, m in ipairs(g.meters) do
    if m.kind == 'conc' then return m end
  end
  return nil
end

local function in_flight(g, now, pure)
  local S = g.key .. ':slots'
  if pure then return redis.call('ZCOUNT', S, '(' .. fmt(now), '+inf') end
  redis.call('ZREMRANGEBYSCORE', S, '-inf', fmt(now))
  return redis.call('ZCARD', S)
end

-- What the limiter shows and estimates from: the limits (when they changed since
-- ``version``), each day meter's count and window, slots taken, the time the group would
-- admit one more request of this cost. ``pure``: change nothing (not even drop what expired).
local function view(g, now, version, c, pure)
  local spec = ''
  local v = g.f['v'] or ''
  if v ~= version then
    local parts = {}
    for _, m in ipairs(g.meters) do
      table.insert(parts, table.concat({m.id, m.count, fmt(m.seconds), m.burst, m.order,
                                        m.learned, fmt(m.factor), m.mode}, '|'))
    end
    spec = table.concat(parts, ';')
  end
  local days, windows, nxt = {}, {}, now
  for _, m in ipairs(g.meters) do
    if m.kind == 'day' then
      table.insert(days, table.concat({m.id, fmt(fl(g.f['du:' .. m.id], 0)),
                                       g.f['ds:' .. m.id] or '', g.f['de:' .. m.id] or ''}, '|'))
      nxt = math.max(nxt, day_ready(g, m, units(m, c), now))
    elseif m.kind == 'gcra' then
      nxt = math.max(nxt, gcra_ready(g, m, units(m, c), now))
    elseif m.kind == 'tokens' then
      local list, w = buckets(g, m, now, pure)
      nxt = math.max(nxt, tokens_ready(g, m, list, w, units(m, c), now))
    elseif m.kind == 'fixed' then
      local reset = fixed_reset(g, m)
      local we = g.f['we:' .. m.id] or ''
      if now >= reset then we, reset = '', math.huge end
      local left, f = fixed_avail(g, m, now, pure)
      table.insert(windows, table.concat({m.id, fmt(left), we, fmt(reset), f}, '|'))
    end
  end
  local conc = conc_meter(g)
  local flying = 0
  if conc then flying = in_flight(g, now, pure) end
  return {v, spec, table.concat(days, ';'), tostring(flying), fmt(nxt),
          table.concat(windows, ';')}
end
