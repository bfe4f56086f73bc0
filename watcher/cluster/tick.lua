-- One membership tick, atomically on Redis TIME: heartbeat, count the live replicas,
-- renew what this replica holds, release its excess, take free shards up to its target.
-- KEYS: replicas, epoch. ARGV: replica, ttl ms, shards, grace ms, prefix, fence floor,
-- then (shard, fence) pairs this replica believes it holds.
local replica = ARGV[1]
local ttl = tonumber(ARGV[2])
local shards = tonumber(ARGV[3])
local grace = tonumber(ARGV[4])
local prefix = ARGV[5]
local floor = tonumber(ARGV[6])
local held = {}
for i = 7, #ARGV, 2 do
  held[tonumber(ARGV[i])] = tonumber(ARGV[i + 1])
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Heartbeat before leases, with the same ttl: a dead replica leaves the live
-- set no later than its leases expire, so whoever finds them free also
-- counts one replica fewer and has room to take them.
redis.call('ZADD', KEYS[1], now + ttl, replica)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
table.sort(live)
local n = #live
local rank = 0
for i, id in ipairs(live) do
  if id == replica then rank = i - 1 end
end
local target = math.floor(shards / n)
if rank < shards % n then target = target + 1 end

local epoch = tonumber(redis.call('GET', KEYS[2]))
if not epoch then
  epoch = now
  redis.call('SET', KEYS[2], now)
end
local settle = epoch + grace - now

local function seed(fkey)
  if redis.call('EXISTS', fkey) == 0 then
    redis.call('SET', fkey, math.max(now, floor))
  end
end

local mine = {}
local fences = {}
local free = {}
local next_expiry = -1
for s = 0, shards - 1 do
  local lkey = prefix .. ':lease:' .. s
  local fkey = prefix .. ':fence:' .. s
  local value = redis.call('GET', lkey)
  if value then
    local owner, fence = string.match(value, '^(.*):(%d+)$')
    if owner == replica then
      mine[#mine + 1] = s
      fences[s] = tonumber(fence)
    else
      local pttl = redis.call('PTTL', lkey)
      if pttl >= 0 and (next_expiry < 0 or pttl < next_expiry) then next_expiry = pttl end
    end
  else
    local counter = tonumber(redis.call('GET', fkey))
    local f = held[s]
    if f and (not counter or counter == f) then
      -- Ours until a moment ago and nobody took it since: our lease lapsed
      -- or Redis lost it. Keep the fence: ownership did not change.
      seed(fkey)
      mine[#mine + 1] = s
      fences[s] = f
    else
      free[#free + 1] = s
    end
  end
end

local owned = {}
local keep = math.min(#mine, target)
for i = #mine, keep + 1, -1 do
  redis.call('DEL', prefix .. ':lease:' .. mine[i])
end
for i = 1, keep do
  local s = mine[i]
  redis.call('SET', prefix .. ':lease:' .. s, replica .. ':' .. fences[s], 'PX', ttl)
  owned[#owned + 1] = s
  owned[#owned + 1] = fences[s]
end
if settle <= 0 then
  for i = 1, math.min(target - keep, #free) do
    local s = free[i]
    local fkey = prefix .. ':fence:' .. s
    seed(fkey)
    local f = redis.call('INCR', fkey)
    redis.call('SET', prefix .. ':lease:' .. s, replica .. ':' .. f, 'PX', ttl)
    owned[#owned + 1] = s
    owned[#owned + 1] = f
  end
end
return {n, target, math.max(settle, 0), next_expiry, owned}
