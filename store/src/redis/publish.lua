-- hub publish script: numbers a message in its topic, keeps it in the topic's capped history,
-- and publishes it to every hub node — atomically, so every node and every publisher agrees on
-- the cursor (DESIGN §4).
--
-- KEYS[1]  hub:{<tid>}:seq     counter (INCR)
-- KEYS[2]  hub:{<tid>}:epoch   names this history; recreated (new value) when the keys are lost
-- KEYS[3]  hub:{<tid>}:hist    stream of envelopes, entry id "<offset>-0"
-- ARGV[1]  channel             hub:msg:<tid>   (<tid> is t:<topic> or p:<topic> for private)
-- ARGV[2]  topic               the topic name, e.g. chat:42
-- ARGV[3]  private             "1" or "0"
-- ARGV[4]  event               event name
-- ARGV[5]  payload             JSON text, inserted verbatim (the caller guarantees it is JSON)
--                              or "" when ARGV[6] carries bytes
-- ARGV[6]  payload_b64         base64 of a binary payload, or ""
-- ARGV[7]  origin              "<node>:<connection>" of a publishing client, or ""
-- ARGV[8]  epoch candidate     used only if the topic has no epoch yet
-- ARGV[9]  max history         entries kept
-- ARGV[10] ttl seconds         of all three keys, refreshed on every publish
-- ARGV[11] compact             optional: "1" keeps only this message in the history (a chat
--                              stream's `done` carrying the whole text)
--
-- Returns {offset, epoch}.
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  -- No epoch means no history either: start a new one. A stale counter from a lost epoch must
  -- not continue, or old cursors would point into the new numbering.
  redis.call('DEL', KEYS[1], KEYS[3])
  epoch = ARGV[8]
  redis.call('SET', KEYS[2], epoch)
end
local offset = redis.call('INCR', KEYS[1])
local time = redis.call('TIME')
local ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local env = '{"topic":' .. cjson.encode(ARGV[2])
  .. ',"private":' .. (ARGV[3] == '1' and 'true' or 'false')
  .. ',"event":' .. cjson.encode(ARGV[4])
  .. ',"offset":' .. offset
  .. ',"epoch":' .. cjson.encode(epoch)
  .. ',"time":' .. ms
if ARGV[7] ~= '' then
  env = env .. ',"origin":' .. cjson.encode(ARGV[7])
end
if ARGV[6] ~= '' then
  env = env .. ',"payload_b64":' .. cjson.encode(ARGV[6]) .. '}'
else
  env = env .. ',"payload":' .. ARGV[5] .. '}'
end

local max = tonumber(ARGV[9])
if max > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', max, offset .. '-0', 'e', env)
end
if max > 0 and ARGV[11] == '1' then
  redis.call('XTRIM', KEYS[3], 'MINID', offset .. '-0')
end
local ttl = tonumber(ARGV[10])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
if max > 0 then
  redis.call('EXPIRE', KEYS[3], ttl)
end
redis.call('PUBLISH', ARGV[1], env)
return {offset, epoch}
