-- The same pop for "any role", reading the role set in the same step (one round trip instead of
-- SMEMBERS + pop). The list order is :meth:`ValkeyBroker._lists_for`'s: for each priority, the known
-- roles sorted, the default role first when it is not among them. List names are built here from the
-- prefix in ARGV[1] (keys not declared in KEYS: fine on a single node, as the dedupe hash already is).
local roles = redis.call('SMEMBERS', KEYS[2])
local seen = false
for _, r in ipairs(roles) do
  if r == ARGV[2] then seen = true end
end
table.sort(roles)
if not seen then table.insert(roles, 1, ARGV[2]) end
for p = 3, #ARGV do
  for _, r in ipairs(roles) do
    local list = ARGV[1] .. r .. ':' .. ARGV[p]
    local v = redis.call('LPOP', list)
    if v then
      if redis.call('HGET', KEYS[1], v) == list then
        redis.call('HDEL', KEYS[1], v)
      end
      return {list, v}
    end
  end
end
return false
