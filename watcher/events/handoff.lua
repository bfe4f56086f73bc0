-- One replica's tick of the event hand-off: take every entry of the lists in
-- KEYS (its reply list, then the hint list of each shard it owns) at once.
-- Returns a flat list: the index of the key (1-based), the entry, and so on.
local out = {}
for i, key in ipairs(KEYS) do
  local items = redis.call('LRANGE', key, 0, -1)
  if #items > 0 then
    redis.call('DEL', key)
    for _, item in ipairs(items) do
      out[#out + 1] = i
      out[#out + 1] = item
    end
  end
end
return out
