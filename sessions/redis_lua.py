"""Lua scripts of the Redis store: each multi-step change is one atomic script.

KEYS are a session's keys in ``keys.SESSION_KEYS`` order (meta, log, partial,
history, msgids, responses, feedback); a script may take a prefix of them.
ARGV[1..5] are always: log max length, events channel, instance id, session TTL (ms), and
"1" when this instance's own pub/sub subscription to the events channel is confirmed.
"""

from .keys import INSTANCE_CHANNEL_PREFIX

# One event appended to one session's log: the seq stamped by string splicing, then published
# unless nobody but this instance listens. Other instances learn of new events by pub/sub; when
# the only subscriber is this instance itself (which delivers from memory), publishing would only
# echo back to it. "Only this instance": our subscription is confirmed (flag "1"), the channel has
# one subscriber, and our pub/sub connection is alive (it alone holds our instance channel; asked
# once per script call: a DELTAS call appends to hundreds of sessions for the same instance).
_APPEND = f"""
local INSTANCE_PREFIX = '{INSTANCE_CHANNEL_PREFIX}'
local instance_alive = nil
local function alive(inst)
  if instance_alive == nil then
    instance_alive = redis.call('PUBSUB', 'NUMSUB', INSTANCE_PREFIX .. inst)[2] == 1
  end
  return instance_alive
end
local function append_to(meta, log, maxlen, chan, inst, flag, body)
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  local data = '{{"seq":' .. seq .. ',' .. string.sub(body, 2)
  redis.call('XADD', log, 'MAXLEN', '~', maxlen, seq .. '-0', 'd', data)
  if flag ~= '1' or redis.call('PUBSUB', 'NUMSUB', chan)[2] > 1 or not alive(inst) then
    redis.call('PUBLISH', chan, inst .. '\\n' .. data)
  end
  return {{seq, data}}
end
"""

# Shared prelude of the single-session scripts: append to this session's log, refresh TTLs.
_PRELUDE = (
    _APPEND
    + """
local function append(body)
  return append_to(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[5], body)
end
local function touch()
  for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
end
"""
)

CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'tenant', ARGV[6], 'user', ARGV[7], 'token', ARGV[8],
  'created', ARGV[9], 'seq', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# ARGV[6..] client_msg_id, message_id, response_id, user turn JSON, accepted body, started body,
#           now ms, lease ms, history max turns
ACCEPT = (
    _PRELUDE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local dup = redis.call('HGET', KEYS[5], ARGV[6])
if dup then return {'duplicate', dup} end
local m = redis.call('HMGET', KEYS[1], 'active', 'lease')
if m[1] then
  if tonumber(m[2]) > tonumber(ARGV[12]) then return {'busy', m[1], m[2]} end
  return {'stale', m[1]}
end
local a = append(ARGV[10])
local s = append(ARGV[11])
redis.call('HSET', KEYS[5], ARGV[6], a[1] .. '|' .. ARGV[7] .. '|' .. ARGV[8])
redis.call('HSET', KEYS[1], 'active', ARGV[8], 'lease', tonumber(ARGV[12]) + tonumber(ARGV[13]))
redis.call('HDEL', KEYS[1], 'cancel')
redis.call('HSET', KEYS[6], ARGV[8], 'running')
redis.call('RPUSH', KEYS[4], ARGV[9])
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[14]), -1)
redis.call('DEL', KEYS[3])
touch()
return {'accepted', a[1], a[2], s[1], s[2], redis.call('LRANGE', KEYS[4], 0, -1)}
"""
)

# Many deltas in one call (one round trip, one reply for a whole flush of the process).
# KEYS: meta, log, partial of each write, in order. ARGV[1..3]: log max length, instance id,
# session TTL (unused); then per write: events channel, self-subscribed flag, response_id, text,
# body. Returns per write {seq, data}, {0} (response no longer active), {-1} (cancel asked) or
# {-2} (the session's meta is gone: Redis lost it, see sessions/loss.py).
# Writes of one session keep their order; in a cluster each call holds one session's writes.
DELTAS = (
    _APPEND
    + """
local out = {}
local w = 0
for i = 4, #ARGV, 5 do
  w = w + 1
  local meta, log, partial = KEYS[3 * w - 2], KEYS[3 * w - 1], KEYS[3 * w]
  local chan, flag, rid = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local m = redis.call('HMGET', meta, 'active', 'cancel')
  if not m[1] and redis.call('EXISTS', meta) == 0 then
    out[w] = {-2}
  elseif m[1] ~= rid then
    out[w] = {0}
  elseif m[2] == rid then
    out[w] = {-1}
  else
    redis.call('APPEND', partial, ARGV[i + 3])
    out[w] = append_to(meta, log, ARGV[1], chan, ARGV[2], flag, ARGV[i + 4])
  end
end
return out
"""
)

# KEYS meta. ARGV[6..] response_id, new lease deadline ms
# Many leases at once: KEYS[i] = meta of session i, ARGV[1] = deadline, ARGV[i + 1] = its response id.
# Per lease 'ok', 'cancel', 'gone' (no longer active) or 'lost' (the session's meta is gone).
RENEW = """
local out = {}
for i, key in ipairs(KEYS) do
  local rid = ARGV[i + 1]
  local m = redis.call('HMGET', key, 'active', 'cancel')
  if not m[1] and redis.call('EXISTS', key) == 0 then out[i] = 'lost'
  elseif m[1] ~= rid then out[i] = 'gone'
  elseif m[2] == rid then out[i] = 'cancel'
  else redis.call('HSET', key, 'lease', ARGV[1]); out[i] = 'ok' end
end
return out
"""

# ARGV[6..] response_id, completed body, finish reason, history max turns, expired_before ('' = any)
# Returns {seq, data}, {0} (not the active response, or its lease is alive) or {-1} (session gone).
FINISH = (
    _PRELUDE
    + """
local m = redis.call('HMGET', KEYS[1], 'active', 'lease')
if not m[1] and redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
if m[1] ~= ARGV[6] then return {0} end
if ARGV[10] ~= '' and tonumber(m[2]) > tonumber(ARGV[10]) then return {0} end
local text = redis.call('GET', KEYS[3]) or ''
local turn = {role='assistant', id=ARGV[6], content=text, finish_reason=ARGV[8]}
redis.call('RPUSH', KEYS[4], cjson.encode(turn))
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[9]), -1)
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[1], 'active', 'lease', 'cancel')
redis.call('HSET', KEYS[6], ARGV[6], ARGV[8])
local e = append(ARGV[7])
touch()
return e
"""
)

# KEYS meta, log, partial, history, msgids, responses. ARGV[6..] response_id or '', control channel, sid
CANCEL = """
local active = redis.call('HGET', KEYS[1], 'active')
local rid = ARGV[6]
if rid == '' then
  if not active then return {'idle', ''} end
  rid = active
end
if active == rid then
  redis.call('HSET', KEYS[1], 'cancel', rid)
  redis.call('PUBLISH', ARGV[7], 'cancel\\t' .. ARGV[8] .. '\\t' .. rid)
  return {'cancelling', rid}
end
if redis.call('HEXISTS', KEYS[6], rid) == 1 then return {'finished', rid} end
return {'unknown', rid}
"""

# ARGV[6..] response_id, feedback JSON, feedback.recorded body
FEEDBACK = (
    _PRELUDE
    + """
if redis.call('HEXISTS', KEYS[6], ARGV[6]) == 0 then return {0} end
redis.call('HSET', KEYS[7], ARGV[6], ARGV[7])
local e = append(ARGV[8])
touch()
return e
"""
)

# KEYS meta, log, partial, history. One atomic read: the snapshot is exact at its seq.
SNAPSHOT = """
local m = redis.call('HMGET', KEYS[1], 'seq', 'active')
local text = redis.call('GET', KEYS[3]) or ''
local turns = redis.call('LRANGE', KEYS[4], 0, -1)
return {m[1] or '0', m[2] or '', text, turns}
"""

# ------------------------------------------------------------------ webhook deliveries
# KEYS are keys.WEBHOOKS_DUE and (but for the claim) the record's key; all share the {webhooks}
# hash tag. Records are hashes; ARGV ends with the field/value pairs to write.

# ARGV: delivery id, due ms, ttl ms, fields...
WEBHOOK_CREATE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""

# ARGV: delivery id, due ms, the state it must be in, fields...
WEBHOOK_ARM = """
if redis.call('HGET', KEYS[2], 'state') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""

# KEYS: the schedule only (records are named from it, in the same slot). ARGV: now ms, lease ms,
# limit, record key prefix. Due records move to now + lease (the fence) and are returned with it;
# ids whose record expired leave the schedule.
WEBHOOK_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local fence = tonumber(ARGV[1]) + tonumber(ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  local record = redis.call('HGETALL', ARGV[4] .. id)
  if #record == 0 then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[1], fence, id)
    out[#out + 1] = {id, record}
  end
end
return {fence, out}
"""

# ARGV: delivery id, fence, due ms or '' (leave the schedule), fields...
WEBHOOK_SETTLE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
if #ARGV >= 5 then redis.call('HSET', KEYS[2], unpack(ARGV, 4)) end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
"""
