-- Give back every lease this replica holds and leave the live set (a clean shutdown).
-- KEYS: replicas. ARGV: replica, prefix, shards.
local replica = ARGV[1]
local prefix = ARGV[2]
local shards = tonumber(ARGV[3])
for s = 0, shards - 1 do
  local lkey = prefix .. ':lease:' .. s
  local value = redis.call('GET', lkey)
  if value then
    local owner = string.match(value, '^(.*):%d+$')
    if owner == replica then redis.call('DEL', lkey) end
  end
end
redis.call('ZREM', KEYS[1], replica)
return 1
