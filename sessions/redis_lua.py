"""Lua scripts of the Redis store: each multi-step change is one atomic script.

KEYS are a session's keys in ``keys.SESSION_KEYS`` order (meta, log, partial,
history, msgids, responses, feedback, calls); a script may take a prefix of them.
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
local m = redis.call('HMGET', KEYS[1], 'active', 'lease', 'wait', 'wait_deadline')
if m[1] then
  if tonumber(m[2]) > tonumber(ARGV[12]) then return {'busy', m[1], m[2]} end
  return {'stale', m[1]}
end
if m[3] then return {'waiting', m[3], m[4]} end
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
local active, wait = unpack(redis.call('HMGET', KEYS[1], 'active', 'wait'))
local rid = ARGV[6]
if wait and (rid == '' or rid == wait) then return {'waiting', wait} end
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

# ------------------------------------------------------------------ tool calls (issue 17)
# All take the eight session keys. A call's record in the calls hash is "kind|state|seq|response_id"
# (keys.CALLS). Bodies that name a response the caller cannot know carry "response_id":"", filled
# in here (store.fill_response_id is the same in Python).

_TOOLS = (
    _PRELUDE
    + """
local function push_turn(turn, maxturns)
  redis.call('RPUSH', KEYS[4], turn)
  redis.call('LTRIM', KEYS[4], -tonumber(maxturns), -1)
end
local function with_rid(body, rid)
  local _, j = string.find(body, '"response_id":""', 1, true)
  return string.sub(body, 1, j - 1) .. rid .. string.sub(body, j)
end
local function parse(rec)
  return string.match(rec or '', '^([csa])|([wqrd])|(%d+)|(.+)$')
end
local WAIT = {'wait', 'wait_left', 'wait_deadline', 'wait_next', 'wait_started', 'wait_ctx'}
-- every answer to rid's calls is in: its continuation becomes the active response, with a lease
local function continue_from(rid, now, lease_ms, out)
  local w = redis.call('HMGET', KEYS[1], 'wait_next', 'wait_started', 'wait_ctx')
  local s = append(w[2])
  out[#out + 1] = s[1]
  out[#out + 1] = s[2]
  redis.call('HDEL', KEYS[1], 'cancel', unpack(WAIT))
  redis.call('HSET', KEYS[1], 'active', w[1], 'lease', now + lease_ms)
  redis.call('HSET', KEYS[6], w[1], 'running')
  redis.call('DEL', KEYS[3])
  local runs = {}
  for cid in string.gmatch(redis.call('HGET', KEYS[8], 'r:' .. rid) or '', '%S+') do
    local kind, state = parse(redis.call('HGET', KEYS[8], cid))
    if state == 'q' then runs[#runs + 1] = {cid, redis.call('HGET', KEYS[8], cid .. ':a')} end
  end
  touch()
  return {'continue', out, w[1], w[3], redis.call('LRANGE', KEYS[4], 0, -1), runs, rid}
end
"""
)

# ARGV[6..] response_id, completed body, finish reason, history max turns, assistant turn (JSON without
# content), now ms, lease ms, wait deadline ms, continuation id, its started body, its context,
# number N of call bodies, the N bodies, then per call: call_id, kind (c/s/a), spec JSON.
END_CALLS = (
    _TOOLS
    + """
local rid = ARGV[6]
local m = redis.call('HMGET', KEYS[1], 'active', 'cancel')
if not m[1] and redis.call('EXISTS', KEYS[1]) == 0 then return {'lost'} end
if m[1] ~= rid then return {'gone'} end
if m[2] == rid then return {'cancel'} end
local out = {}
local nb = tonumber(ARGV[17])
for i = 1, nb do
  local e = append(ARGV[17 + i])
  out[#out + 1] = e[1]
  out[#out + 1] = e[2]
end
local left, ids = 0, {}
for i = 18 + nb, #ARGV, 3 do
  local cid, kind = ARGV[i], ARGV[i + 1]
  local state = 'w'
  if kind == 's' then state = 'q' else left = left + 1 end
  redis.call('HSET', KEYS[8], cid, kind .. '|' .. state .. '|0|' .. rid, cid .. ':a', ARGV[i + 2])
  ids[#ids + 1] = cid
end
redis.call('HSET', KEYS[8], 'r:' .. rid, table.concat(ids, ' '))
local text = redis.call('GET', KEYS[3]) or ''
push_turn('{"content":' .. cjson.encode(text) .. ',' .. string.sub(ARGV[10], 2), ARGV[9])
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[1], 'active', 'lease', 'cancel')
redis.call('HSET', KEYS[6], rid, ARGV[8])
local e = append(ARGV[7])
out[#out + 1] = e[1]
out[#out + 1] = e[2]
redis.call('HSET', KEYS[1], 'wait', rid, 'wait_left', left, 'wait_deadline', ARGV[13],
  'wait_next', ARGV[14], 'wait_started', ARGV[15], 'wait_ctx', ARGV[16])
touch()
if left == 0 then return continue_from(rid, tonumber(ARGV[11]), tonumber(ARGV[12]), out) end
return {'ended', out}
"""
)

# ARGV[6..] call_id, mode (result, approve, deny, server), tool.result.accepted body, tool turn,
# now ms, lease ms, runner (mode server: the continuation running the call), history max turns.
ANSWER = (
    _TOOLS
    + """
local cid, mode = ARGV[6], ARGV[7]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'lost'} end
local kind, state, seq, rid = parse(redis.call('HGET', KEYS[8], cid))
if not kind then return {'unknown'} end
local m = redis.call('HMGET', KEYS[1], 'wait', 'active', 'cancel')
if mode == 'server' then
  if state == 'd' then return {'duplicate', rid, seq} end
  if m[3] == ARGV[12] then return {'cancel', rid} end
  if kind == 'c' or state ~= 'r' or m[2] ~= ARGV[12] then return {'gone', rid} end
elseif mode == 'result' then
  if state == 'd' then return {'duplicate', rid, seq} end
  if kind ~= 'c' then return {'closed', rid} end
  if m[1] ~= rid then return {'closed', rid} end
else
  if kind ~= 'a' then return {'closed', rid} end
  if m[1] ~= rid then return {'closed', rid} end
  if state ~= 'w' then return {'same', rid} end
end
local out = {}
if mode == 'approve' then
  redis.call('HSET', KEYS[8], cid, kind .. '|q|0|' .. rid)
else
  local e = append(with_rid(ARGV[8], rid))
  out = {e[1], e[2]}
  redis.call('HSET', KEYS[8], cid, kind .. '|d|' .. e[1] .. '|' .. rid)
  push_turn(with_rid(ARGV[9], rid), ARGV[13])
end
if mode ~= 'server' and redis.call('HINCRBY', KEYS[1], 'wait_left', -1) <= 0 then
  return continue_from(rid, tonumber(ARGV[10]), tonumber(ARGV[11]), out)
end
touch()
return {'answered', out, rid}
"""
)

# ARGV[6..] runner (the active continuation), call_id. 'ok' (now started), 'done' (started before),
# 'gone' / 'cancel' (the runner may not go on).
START_RUN = (
    _TOOLS
    + """
local m = redis.call('HMGET', KEYS[1], 'active', 'cancel')
if m[1] ~= ARGV[6] then return 'gone' end
if m[2] == ARGV[6] then return 'cancel' end
local kind, state, seq, rid = parse(redis.call('HGET', KEYS[8], ARGV[7]))
if state ~= 'q' then return 'done' end
redis.call('HSET', KEYS[8], ARGV[7], kind .. '|r|0|' .. rid)
return 'ok'
"""
)

# ARGV[6..] response_id, completed body ("response_id":""), finish reason, history max turns,
# expired_before ('' = any). Returns {} when it no longer waits (or not expired), {'lost'}, or the
# continuation's response.started and response.completed entries.
WAIT_END = (
    _TOOLS
    + """
local w = redis.call('HMGET', KEYS[1], 'wait', 'wait_deadline', 'wait_next', 'wait_started')
if not w[1] and redis.call('EXISTS', KEYS[1]) == 0 then return {'lost'} end
if w[1] ~= ARGV[6] then return {} end
if ARGV[10] ~= '' and tonumber(w[2]) > tonumber(ARGV[10]) then return {} end
local s = append(w[4])
local c = append(with_rid(ARGV[7], w[3]))
push_turn(cjson.encode({role='assistant', id=w[3], content='', finish_reason=ARGV[8]}), ARGV[9])
redis.call('HSET', KEYS[6], w[3], ARGV[8])
redis.call('HDEL', KEYS[1], unpack(WAIT))
touch()
return {s[1], s[2], c[1], c[2]}
"""
)

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
