-- The shared budget: reserve, confirm, claim, pause and sync, on Redis TIME only.
-- KEYS: log, pause, epoch, recover (one hash tag). See watcher/budget/shared.py.
local op = ARGV[1]
local cap = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local late = tonumber(ARGV[4])
local known = ARGV[5]
local member = ARGV[6]
local pause_ms = tonumber(ARGV[7])
local returning = ARGV[8] == '1'
local buckets = tonumber(ARGV[9])
local log, pause, epoch_key, recover = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function fmt(x) return string.format('%.3f', x) end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000

local epoch = redis.call('GET', epoch_key)
if not epoch then
  -- A new or emptied Redis: nobody can say what was sent in the last window.
  epoch = t[1] .. '.' .. t[2]
  redis.call('SET', epoch_key, epoch)
  redis.call('SET', recover, fmt(now + window), 'PX', math.ceil(window))
end
if known ~= '' and known ~= epoch then
  return {'epoch', '0', epoch}
end

redis.call('ZREMRANGEBYSCORE', log, '-inf', fmt(now - window))
local i = 10
local nseeds = tonumber(ARGV[i]); i = i + 1
for _ = 1, nseeds do
  local score = now - tonumber(ARGV[i + 1])
  if score > now - window then redis.call('ZADD', log, 'NX', fmt(score), ARGV[i]) end
  i = i + 2
end
local nrel = tonumber(ARGV[i]); i = i + 1
for _ = 1, nrel do
  redis.call('ZREM', log, ARGV[i]); i = i + 1
end

local paused_until = tonumber(redis.call('GET', pause) or '0')
local added = 0
if pause_ms > 0 and now + pause_ms > paused_until then
  local ends = now + pause_ms
  added = ends - math.max(now, paused_until)
  redis.call('SET', pause, fmt(ends), 'PX', math.ceil(pause_ms))
  -- Move the not-yet-due queue back as a block: later, same order and spacing.
  local due = redis.call('ZRANGEBYSCORE', log, '(' .. fmt(now), '+inf', 'WITHSCORES')
  if #due > 0 and tonumber(due[2]) < ends then
    local shift = ends - tonumber(due[2])
    for j = 1, #due, 2 do
      redis.call('ZADD', log, fmt(tonumber(due[j + 1]) + shift), due[j])
    end
  end
  paused_until = ends
end

local recover_until = tonumber(redis.call('GET', recover) or '0')
if returning and now + window > recover_until then
  recover_until = now + window
  redis.call('SET', recover, fmt(recover_until), 'PX', math.ceil(window))
end

local status, wait = 'ok', 0
if op == 'reserve' then
  if now < recover_until then
    status = 'recovering'
  else
    -- Entries after the slot count too (waiting reservations): fewer than cap entries
    -- later than slot - W bounds every window that holds the slot.
    local slot = math.max(now, paused_until)
    local n = redis.call('ZCARD', log)
    if n >= cap then
      local leaving = redis.call('ZRANGE', log, n - cap, n - cap, 'WITHSCORES')
      slot = math.max(slot, tonumber(leaving[2]) + window)
    end
    redis.call('ZADD', log, fmt(slot), member)
    wait = slot - now
  end
elseif op == 'confirm' then
  local score = redis.call('ZSCORE', log, member)
  if not score then
    status = 'missing'
  elseif tonumber(score) > now then
    status, wait = 'wait', tonumber(score) - now
  elseif paused_until > now then
    redis.call('ZREM', log, member)
    status, wait = 'paused', paused_until - now
  elseif now - tonumber(score) > late then
    redis.call('ZREM', log, member)
    status = 'late'
  end
elseif op == 'claim' then
  if now >= recover_until then
    status = 'shared'
  elseif paused_until > now then
    status, wait = 'paused', paused_until - now
  else
    -- The log holds every claim of this recovery and every replica's re-seeded
    -- grants: claims beyond the cap are refused, whatever each local share says
    -- (replicas that joined late may each have counted too few replicas).
    local n = redis.call('ZCARD', log)
    if n >= cap then
      local leaving = redis.call('ZRANGE', log, n - cap, n - cap, 'WITHSCORES')
      status, wait = 'full', tonumber(leaving[2]) + window - now
    else
      redis.call('ZADD', log, fmt(now), member)
    end
  end
elseif op == 'pause' then
  wait = added
end
redis.call('PEXPIRE', log, math.ceil(2 * window) + 600000)

local reply = {status, fmt(wait), epoch, fmt(math.max(0, recover_until - now)),
  fmt(math.max(0, paused_until - now))}
local w = window / buckets
for j = 0, 2 * buckets - 1 do
  local lo, hi = now - window + j * w, now - window + (j + 1) * w
  reply[#reply + 1] = redis.call('ZCOUNT', log, '(' .. fmt(lo), fmt(hi))
end
local over = redis.call('ZCOUNT', log, '(' .. fmt(now + window), '+inf')
reply[#reply + 1] = over
if over > 0 then
  local last = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
  reply[#reply + 1] = fmt(tonumber(last[2]) - now)
else
  reply[#reply + 1] = '0'
end
return reply
