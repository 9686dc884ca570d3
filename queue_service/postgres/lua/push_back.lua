-- Give popped keys back to the head of the lists they came from (a claim failed before Postgres
-- decided): ARGV is {key, list, key, list, ...} in pop order, pushed back in reverse so the order is
-- kept. A key re-queued meanwhile (its dedupe entry names a list that holds it) is left alone.
local n = 0
for i = #ARGV - 1, 1, -2 do
  local key, list = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', KEYS[1], key)
  if not cur or not redis.call('LPOS', cur, key) then
    redis.call('LPUSH', list, key)
    redis.call('HSET', KEYS[1], key, list)
    n = n + 1
  end
end
return n
