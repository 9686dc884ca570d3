-- After a BLPOP: drop the dedupe entry only if it still points at the list the key came from.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
