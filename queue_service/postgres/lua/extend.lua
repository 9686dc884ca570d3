-- Extend a lock we hold; also re-create it when it vanished (Valkey flushed or restarted): Postgres
-- already accepted the token, the lock key only mirrors it.
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] or not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
