-- Batched pops: up to ARGV[1] keys across the lists in the order given (best first), each dedupe
-- entry dropped in the same step. Returns a flat {list, key, list, key, ...}.
local n = tonumber(ARGV[1])
local out = {}
local got = 0
for i = 2, #KEYS do
  while got < n do
    local v = redis.call('LPOP', KEYS[i])
    if not v then break end
    if redis.call('HGET', KEYS[1], v) == KEYS[i] then
      redis.call('HDEL', KEYS[1], v)
    end
    out[#out + 1] = KEYS[i]
    out[#out + 1] = v
    got = got + 1
  end
  if got >= n then break end
end
return out
