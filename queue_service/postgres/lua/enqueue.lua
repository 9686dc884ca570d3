-- The dedupe hash maps each queued task key to the list holding it. A key already in the right list
-- is not pushed again, however many times (and from however many replicas) it is announced ready; a
-- key in another list (its role or priority changed) is moved. The old list's name comes from the
-- hash, which is fine on a single Valkey node (not Cluster-safe; we do not run on Cluster).
--
-- The dedupe entry is trusted only if the list really holds the key (LPOS, checked only on this
-- duplicate-announcement path): a claimer whose BLPOP took the key but whose follow-up dedupe removal
-- never arrived (Valkey blip, process killed) must not leave an entry that swallows every later
-- enqueue of that key. ARGV[3] '1' forces a push; ARGV[4] '1' pushes to the head (a task whose lease
-- expired goes back first in line, DESIGN §3.7).
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur == KEYS[2] and ARGV[3] == '0' and ARGV[4] ~= '1' then
  if redis.call('LPOS', KEYS[2], ARGV[1]) then
    return 0
  end
end
if cur then
  redis.call('LREM', cur, 0, ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], KEYS[2])
if ARGV[4] == '1' then
  redis.call('LPUSH', KEYS[2], ARGV[1])
else
  redis.call('RPUSH', KEYS[2], ARGV[1])
end
redis.call('SADD', KEYS[3], ARGV[2])
return 1
