-- Removes the presence of a node that stopped heartbeating, once, from whichever node gets here
-- first (the ZREM decides), publishing a leave for each of its members.
--
-- KEYS = {hub:nodes, hub:node:<dead>:topics}
-- ARGV = {dead node id}
-- Returns the number of presence entries removed, or -1 when another node already reaped it.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return -1
end
local prefix = ARGV[1] .. ':'
local removed = 0
for _, tid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local hash = 'hub:{' .. tid .. '}:presence'
  local channel = 'hub:msg:' .. tid
  local fields = redis.call('HKEYS', hash)
  for _, field in ipairs(fields) do
    if string.sub(field, 1, string.len(prefix)) == prefix then
      redis.call('HDEL', hash, field)
      redis.call('PUBLISH', channel, '{"presence":"leave","member":' .. cjson.encode(field) .. '}')
      removed = removed + 1
    end
  end
end
redis.call('DEL', KEYS[2])
return removed
