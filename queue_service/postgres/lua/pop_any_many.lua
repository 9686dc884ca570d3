-- The batched pop for "any role": _POP_ANY's list order, up to ARGV[3] keys; priorities from ARGV[4].
local roles = redis.call('SMEMBERS', KEYS[2])
local seen = false
for _, r in ipairs(roles) do
  if r == ARGV[2] then seen = true end
end
table.sort(roles)
if not seen then table.insert(roles, 1, ARGV[2]) end
local n = tonumber(ARGV[3])
local out = {}
local got = 0
for p = 4, #ARGV do
  for _, r in ipairs(roles) do
    local list = ARGV[1] .. r .. ':' .. ARGV[p]
    while got < n do
      local v = redis.call('LPOP', list)
      if not v then break end
      if redis.call('HGET', KEYS[1], v) == list then
        redis.call('HDEL', KEYS[1], v)
      end
      out[#out + 1] = list
      out[#out + 1] = v
      got = got + 1
    end
    if got >= n then return out end
  end
end
return out
