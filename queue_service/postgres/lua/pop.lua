-- Non-blocking pop across lists in the order given, and the dedupe entry removed in the same step.
for i = 2, #KEYS do
  local v = redis.call('LPOP', KEYS[i])
  if v then
    if redis.call('HGET', KEYS[1], v) == KEYS[i] then
      redis.call('HDEL', KEYS[1], v)
    end
    return {KEYS[i], v}
  end
end
return false
