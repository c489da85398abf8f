"""Lua scripts of :mod:`hub.brokers.redis`, each one atomic on the Redis server.

Every script takes the time from ``TIME`` on the server, so nodes with skewed clocks agree on
expiry. Every key a script touches is passed in ``KEYS`` and shares one hash tag (``{room:…}``,
``{rooms}`` …), so the scripts also run on Redis Cluster.

Stream entries of a room have the ID ``<offset>-0`` and the fields ``t`` (server time in ms) and
``b`` (the publication body). Offsets are contiguous in the stream (trimming only removes a
prefix), which lets the history script find the first unexpired entry by binary search.
"""

from __future__ import annotations


def room_key(prefix: str, room: str, suffix: str) -> str:
    """``<prefix>{room:<name>}:<suffix>``: one hash tag per room, so a cluster shards by room."""
    return f"{prefix}{{room:{room}}}:{suffix}"


# Milliseconds since the epoch from the server clock.
_NOW_MS = """
local _t = redis.call('TIME')
local now = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
"""

# Create the room's meta if missing. A stream left behind by a lost meta belongs to a dead
# epoch: drop it, so the new epoch starts at offset 1 with an empty history.
_ENSURE_META = """
local function ensure_meta(meta, stream, epoch, meta_ttl)
  if redis.call('HSETNX', meta, 'epoch', epoch) == 1 then
    redis.call('DEL', stream)
    redis.call('EXPIRE', meta, meta_ttl)
  end
end
"""

# A read (history, position) of a room that has never been published keeps nothing for long:
# the meta it creates, or finds without an offset, lives ``read_ttl`` seconds (at most 600) from
# this read. The room's first publication (``ensure_meta`` + EXPIRE in PUBLISH) makes it durable.
_ENSURE_META_READ = """
local function ensure_meta_read(meta, stream, epoch, read_ttl)
  if redis.call('HSETNX', meta, 'epoch', epoch) == 1 then
    redis.call('DEL', stream)
    redis.call('EXPIRE', meta, read_ttl)
  elseif redis.call('HEXISTS', meta, 'offset') == 0 then
    redis.call('EXPIRE', meta, read_ttl)
  end
end
"""

# Remove the prefix of the stream older than ttl_ms (binary search on the contiguous offsets).
_TRIM_EXPIRED = """
local function entry_ts(stream, off)
  local e = redis.call('XRANGE', stream, off .. '-0', off .. '-0')
  if #e == 0 then return nil end
  return tonumber(e[1][2][2])
end
local function trim_expired(stream, head, ttl_ms, now)
  if ttl_ms <= 0 then return end
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #first == 0 then return end
  local lo = tonumber(string.match(first[1][1], '^(%d+)'))
  local cutoff = now - ttl_ms
  if tonumber(first[1][2][2]) >= cutoff then return end
  -- lo is expired; find the largest expired offset in [lo, head]
  local hi = head
  while lo < hi do
    local mid = math.floor((lo + hi + 1) / 2)
    local ts = entry_ts(stream, mid)
    if ts ~= nil and ts < cutoff then lo = mid else hi = mid - 1 end
  end
  redis.call('XTRIM', stream, 'MINID', (lo + 1) .. '-0')
end
"""

PUBLISH = (
    _NOW_MS
    + _ENSURE_META
    + """
-- KEYS: meta, stream, idem
-- ARGV: epoch, body, history_size, history_ttl_ms, channel, fingerprint, idem_ttl_s,
--       ephemeral ('1'/'0'), meta_ttl_s
local meta, stream, idem = KEYS[1], KEYS[2], KEYS[3]
local fp = ARGV[6]
if fp ~= '' then
  local seen = redis.call('GET', idem)
  if seen then
    local sfp, soff, sep = string.match(seen, '^([^|]*)|([^|]*)|(.*)$')
    if sfp ~= fp then return {'conflict', '', ''} end
    return {'dup', soff, sep}
  end
end
local off, ep = '', ''
if ARGV[8] == '1' then
  redis.call('PUBLISH', ARGV[5], '||' .. ARGV[2])
else
  ensure_meta(meta, stream, ARGV[1], ARGV[9])
  ep = redis.call('HGET', meta, 'epoch')
  off = tostring(redis.call('HINCRBY', meta, 'offset', 1))
  redis.call('EXPIRE', meta, ARGV[9])
  redis.call('XADD', stream, 'MAXLEN', '=', ARGV[3], off .. '-0', 't', now, 'b', ARGV[2])
  local ttl = tonumber(ARGV[4])
  if ttl > 0 then redis.call('PEXPIRE', stream, ttl) else redis.call('PERSIST', stream) end
  redis.call('PUBLISH', ARGV[5], off .. '|' .. ep .. '|' .. ARGV[2])
end
if fp ~= '' then
  redis.call('SET', idem, fp .. '|' .. off .. '|' .. ep, 'EX', ARGV[7])
end
return {'ok', off, ep}
"""
)

HISTORY = (
    _NOW_MS
    + _ENSURE_META_READ
    + _TRIM_EXPIRED
    + """
-- KEYS: meta, stream
-- ARGV: epoch, history_ttl_ms, after ('' = newest), limit, read_ttl_s, max_bytes (0 = no bound)
-- returns {epoch, head, first, offset1, body1, offset2, body2, ...}
-- Offsets are contiguous, so the newest `limit` start at head - limit + 1. Entries are read a
-- few at a time and the page ends before the body that would pass max_bytes (keeping at least
-- one): neither this script nor the node holds more than the page.
local meta, stream = KEYS[1], KEYS[2]
ensure_meta_read(meta, stream, ARGV[1], ARGV[5])
local m = redis.call('HMGET', meta, 'epoch', 'offset')
local head = tonumber(m[2] or '0')
trim_expired(stream, head, tonumber(ARGV[2]), now)
local f = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
local first = head + 1
if #f > 0 then first = tonumber(string.match(f[1][1], '^(%d+)')) end
local out = {m[1], tostring(head), tostring(first)}
local limit = tonumber(ARGV[4])
local max_bytes = tonumber(ARGV[6] or '0')
local start
if ARGV[3] == '' then
  start = math.max(head - limit + 1, first)
else
  start = math.max(tonumber(ARGV[3]) + 1, first)
end
local taken, size = 0, 0
while taken < limit and start <= head do
  local items = redis.call('XRANGE', stream, start .. '-0', '+', 'COUNT', math.min(limit - taken, 32))
  if #items == 0 then break end
  for i = 1, #items do
    local body = items[i][2][4]
    size = size + #body
    if max_bytes > 0 and size > max_bytes and taken > 0 then
      return out
    end
    local off = string.match(items[i][1], '^(%d+)')
    out[#out + 1] = off
    out[#out + 1] = body
    taken = taken + 1
    start = tonumber(off) + 1
  end
end
return out
"""
)

POSITION = (
    _ENSURE_META_READ
    + """
-- KEYS: meta, stream; ARGV: epoch, read_ttl_s
ensure_meta_read(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
local m = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
return {m[1], m[2] or '0'}
"""
)

# Presence: a hash session -> member JSON, and a zset session -> expiry (ms).
PRESENCE_ADD = (
    _NOW_MS
    + """
-- KEYS: hash, zset; ARGV: session, member_json, ttl_ms[, limit]
-- With a limit > 0: refuse (return 0) when the room already has limit other live members.
local ttl = tonumber(ARGV[3])
local limit = tonumber(ARGV[4] or '0')
if limit > 0 and redis.call('ZSCORE', KEYS[2], ARGV[1]) == false then
  if redis.call('ZCOUNT', KEYS[2], now, '+inf') >= limit then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"""
)

PRESENCE_REMOVE = """
-- KEYS: hash, zset; ARGV: session
redis.call('HDEL', KEYS[1], ARGV[1])
return redis.call('ZREM', KEYS[2], ARGV[1])
"""

PRESENCE_LIST = (
    _NOW_MS
    + """
-- KEYS: hash, zset
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
if #gone > 0 then
  for i = 1, #gone, 500 do
    redis.call('HDEL', KEYS[1], unpack(gone, i, math.min(i + 499, #gone)))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
end
return redis.call('HVALS', KEYS[1])
"""
)

# Connections of a user: a zset session -> expiry (ms).
CONN_ADD = (
    _NOW_MS
    + """
-- KEYS: zset; ARGV: ttl_ms, session... (one session when it opens; all of a user's sessions
-- on this node at each refresh, so a refresh costs one call per user, not one per session)
local ttl = tonumber(ARGV[1])
local until_ms = now + ttl
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
local pairs = {}
for i = 2, #ARGV do
  pairs[#pairs + 1] = until_ms
  pairs[#pairs + 1] = ARGV[i]
end
redis.call('ZADD', KEYS[1], unpack(pairs))
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
"""
)

CONN_REMOVE = """
-- KEYS: zset; ARGV: sessions
return redis.call('ZREM', KEYS[1], unpack(ARGV))
"""

CONN_COUNT = (
    _NOW_MS
    + """
-- KEYS: zset
return redis.call('ZCOUNT', KEYS[1], now, '+inf')
"""
)

# Rooms listing. KEYS (one hash tag): index (zset, score 0, members room \\0 node),
# counts (hash member -> sessions), nodes (zset node -> expiry ms), this node's member set.
ROOM_SET = (
    _NOW_MS
    + """
-- ARGV: node, room, sessions, ttl_ms
local member = ARGV[2] .. '\\0' .. ARGV[1]
local n = tonumber(ARGV[3])
if n > 0 then
  redis.call('HSET', KEYS[2], member, n)
  redis.call('ZADD', KEYS[1], 0, member)
  redis.call('SADD', KEYS[4], member)
else
  redis.call('HDEL', KEYS[2], member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('SREM', KEYS[4], member)
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[1])
return 1
"""
)

NODE_ALIVE = (
    _NOW_MS
    + """
-- KEYS: index, counts, nodes, node set prefix (KEYS[4] is this node's set)
-- ARGV: node, ttl_ms, set key prefix
-- Refresh this node and forget nodes dead for longer than one ttl (at most 20 per call).
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - ttl), 'LIMIT', 0, 20)
for _, node in ipairs(dead) do
  local set = ARGV[3] .. node
  local members = redis.call('SMEMBERS', set)
  for i = 1, #members, 500 do
    local chunk = {unpack(members, i, math.min(i + 499, #members))}
    redis.call('ZREM', KEYS[1], unpack(chunk))
    redis.call('HDEL', KEYS[2], unpack(chunk))
  end
  redis.call('DEL', set)
  redis.call('ZREM', KEYS[3], node)
end
return #dead
"""
)

LIST_ROOMS = (
    _NOW_MS
    + """
-- KEYS: index, counts, nodes; ARGV: prefix, start (lex, inclusive), limit
-- returns {room1, n1, room2, n2, ...}: at most limit + 1 rooms with sessions on live nodes
local live = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], now, '+inf')) do live[node] = true end
local prefix, limit = ARGV[1], tonumber(ARGV[3])
local out, found = {}, 0
local cur_room, cur_n = nil, 0
local start = '[' .. ARGV[2]
local done = false
while not done do
  local batch = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, 200)
  if #batch == 0 then break end
  local counts = redis.call('HMGET', KEYS[2], unpack(batch))
  for i, member in ipairs(batch) do
    local sep = string.find(member, '\\0', 1, true)
    local room, node = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
    if string.sub(room, 1, #prefix) ~= prefix then done = true break end
    if room ~= cur_room then
      if cur_room ~= nil and cur_n > 0 then
        out[#out + 1] = cur_room
        out[#out + 1] = tostring(cur_n)
        found = found + 1
        if found > limit then done = true break end
      end
      cur_room, cur_n = room, 0
    end
    if live[node] then cur_n = cur_n + (tonumber(counts[i]) or 0) end
  end
  if #batch < 200 then break end
  start = '(' .. batch[#batch]
end
if found <= limit and cur_room ~= nil and cur_n > 0 then
  out[#out + 1] = cur_room
  out[#out + 1] = tostring(cur_n)
end
return out
"""
)

# A token bucket in the hash KEYS[1] (fields tk, ts) on the server clock, with ``rate`` and
# ``burst`` already set: brought up to ``now`` (TAKE and TAKE_MANY), and written back.
_BUCKET_REFILL = """
local _t = redis.call('TIME')
local now = tonumber(_t[1]) + tonumber(_t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tk', 'ts')
local tokens = tonumber(v[1]) or burst
local last = tonumber(v[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
"""
_BUCKET_STORE = """
redis.call('HSET', KEYS[1], 'tk', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
"""

TAKE = (
    """
-- KEYS: bucket; ARGV: rate (tokens/s), burst. The arithmetic of hub/ratelimit.py's TokenBucket.
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
if rate <= 0 then
  return {1, string.format('%.17g', burst), '0'}
end
"""
    + _BUCKET_REFILL
    + """local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
"""
    + _BUCKET_STORE
    + """local reset = (burst - tokens) / rate
redis.call('PEXPIRE', KEYS[1], math.ceil(reset * 1000) + 1000)
return {allowed, string.format('%.17g', tokens), string.format('%.17g', reset)}
"""
)

REVOKE = """
-- KEYS: revocations (zset: user -> cutoff, Unix seconds); ARGV: user, cutoff, oldest kept
-- cutoff, expiry of the key (ms). A later cutoff of a user replaces an earlier one only.
local old = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if not old or old < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

REVOCATIONS = """
-- KEYS: revocations; ARGV: oldest kept cutoff. Returns user, cutoff, user, cutoff, ...
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
"""

TAKE_MANY = (
    """
-- KEYS: bucket; ARGV: rate (tokens/s), burst, n. TAKE's arithmetic, taking up to n whole
-- tokens at once; returns how many were taken.
local rate, burst, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if rate <= 0 then
  return n
end
"""
    + _BUCKET_REFILL
    + """local taken = math.min(n, math.floor(tokens))
tokens = tokens - taken
"""
    + _BUCKET_STORE
    + """redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return taken
"""
)
