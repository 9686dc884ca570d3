-- Drop scheduled entries that are (still) due; one rescheduled later in the meantime stays.
local n = 0
for i = 1, #ARGV - 1 do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) <= tonumber(ARGV[#ARGV]) then
    n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return n
