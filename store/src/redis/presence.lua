-- hub presence scripts: the shared presence hash of a topic and the diffs other nodes apply,
-- changed together so every node's view follows the hash.
--
-- join:  KEYS = {presence hash, node's topic set}
--        ARGV = {"join", member "<node>:<id>", entry JSON {"key","meta"}, channel, tid, message}
-- leave: KEYS = {presence hash}
--        ARGV = {"leave", member, channel, message}
-- A leave publishes only when it removed the entry, so a member never leaves twice.
if ARGV[1] == 'join' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('SADD', KEYS[2], ARGV[5])
  redis.call('PUBLISH', ARGV[4], ARGV[6])
  return 1
end
if ARGV[1] == 'leave' then
  if redis.call('HDEL', KEYS[1], ARGV[2]) == 1 then
    redis.call('PUBLISH', ARGV[3], ARGV[4])
    return 1
  end
  return 0
end
return redis.error_reply('unknown presence operation')
