"""The server-side Lua scripts of the Redis backend: each runs atomically on one slot.

They need Redis >= 7.0 (XINFO GROUPS ``lag``; XPENDING ``IDLE`` since 6.2).
"""

from __future__ import annotations

# Shared helpers, prepended to the scripts that need them.
_COMMON = r"""
local function fields_of(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end

local function id_less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end

-- Move one pending entry to the dead letters and acknowledge it in its group.
local function bury(stream, dead, group, id, reason, attempts)
  local e = redis.call('XRANGE', stream, id, id)
  if #e > 0 then
    local payload = fields_of(e[1][2])['m'] or ''
    redis.call('XADD', dead, '*', 'id', id, 'm', payload, 'group', group,
               'reason', reason, 'attempts', tostring(attempts))
  end
  redis.call('XACK', stream, group, id)
  return #e
end
"""

# KEYS: stream, created-marker, idempotency keys...
# ARGV: max_backlog (-1: none), retention, idempotency ttl ms, default group ('' none),
#       unit count, then per unit: message count, then per message: idempotency KEYS index (0 none), payload.
# Returns per unit: {id, ...} or {'FULL', backlog}.
ADD = (
    _COMMON
    + r"""
local stream = KEYS[1]
local max_backlog = tonumber(ARGV[1])
local retention = tonumber(ARGV[2])
local ttl = ARGV[3]
local default_group = ARGV[4]
local nunits = tonumber(ARGV[5])

if redis.call('SET', KEYS[2], '1', 'NX') and default_group ~= '' then
  -- the topic's first publish: its default group keeps everything from the start
  redis.pcall('XGROUP', 'CREATE', stream, default_group, '0', 'MKSTREAM')
end

local groups = {}
if redis.call('EXISTS', stream) == 1 then
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do groups[#groups + 1] = fields_of(g) end
end

local backlog = 0
if max_backlog >= 0 then
  for _, g in ipairs(groups) do
    local lag = g['lag']
    if not lag then
      -- unknown after entries were deleted by hand: count what follows the group's position
      lag = #redis.call('XRANGE', stream, '(' .. g['last-delivered-id'], '+', 'COUNT', max_backlog + 1)
    end
    local b = lag + g['pending']
    if b > backlog then backlog = b end
  end
end

local out = {}
local pos = 6
for u = 1, nunits do
  local n = tonumber(ARGV[pos])
  pos = pos + 1
  local fresh = 0
  for i = 0, n - 1 do
    local k = tonumber(ARGV[pos + 2 * i])
    if k == 0 or not redis.call('GET', KEYS[k]) then fresh = fresh + 1 end
  end
  if fresh > 0 and #groups > 0 and max_backlog >= 0 and backlog + fresh > max_backlog then
    out[u] = {'FULL', tostring(backlog)}
  else
    local ids = {}
    for i = 0, n - 1 do
      local k = tonumber(ARGV[pos + 2 * i])
      local id = k > 0 and redis.call('GET', KEYS[k])
      if not id then
        id = redis.call('XADD', stream, '*', 'm', ARGV[pos + 2 * i + 1])
        if k > 0 then redis.call('SET', KEYS[k], id, 'PX', ttl) end
      end
      ids[#ids + 1] = id
    end
    backlog = backlog + fresh
    out[u] = ids
  end
  pos = pos + 2 * n
end

-- Trim acknowledged history beyond retention, never past the oldest entry some group
-- still needs. It runs once the stream is `slack` over retention, and scans only entries
-- it then removes (at most 10000 a call), so its cost is spread over the publishes.
local len = redis.call('XLEN', stream)
local slack = math.max(100, math.floor(retention / 10))
if len > retention + slack then
  local bound, exclusive = '+', false
  for _, g in ipairs(groups) do
    local id, excl = g['last-delivered-id'], false
    if g['pending'] > 0 then id, excl = redis.call('XPENDING', stream, g['name'])[2], true end
    if bound == '+' or id_less(id, bound) or (id == bound and excl) then bound, exclusive = id, excl end
  end
  if exclusive then bound = '(' .. bound end
  local head = redis.call('XRANGE', stream, '-', bound, 'COUNT', math.min(len - retention, 10000))
  if #head > 0 then redis.call('XTRIM', stream, 'MINID', head[#head][1]) end
end
return out
"""
)

# KEYS: stream, dead. ARGV: group, consumer, min idle ms, count, max attempts, reason.
# Returns {dead count, id1, payload1, attempt1, id2, ...}.
RECLAIM = (
    _COMMON
    + r"""
local stream, dead = KEYS[1], KEYS[2]
local group, consumer, min_idle = ARGV[1], ARGV[2], ARGV[3]
local max_attempts = tonumber(ARGV[5])
local out = {0}
local claim, attempts = {}, {}
for _, p in ipairs(redis.call('XPENDING', stream, group, 'IDLE', min_idle, '-', '+', ARGV[4])) do
  if p[4] >= max_attempts then
    bury(stream, dead, group, p[1], ARGV[6], p[4])
    out[1] = out[1] + 1
  else
    claim[#claim + 1] = p[1]
    attempts[p[1]] = p[4] + 1
  end
end
if #claim > 0 then
  for _, e in ipairs(redis.call('XCLAIM', stream, group, consumer, min_idle, unpack(claim))) do
    if e and e[2] then
      out[#out + 1] = e[1]
      out[#out + 1] = fields_of(e[2])['m'] or ''
      out[#out + 1] = attempts[e[1]]
    end
  end
end
return out
"""
)

# KEYS: stream, dead. ARGV: group, id, reason, attempts. Returns 1 if it was pending.
DEAD_LETTER = (
    _COMMON
    + r"""
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) == 0 then return 0 end
bury(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return 1
"""
)

# KEYS: meta, stream. ARGV: the count to store if none is ('' : store nothing). Returns the count.
PARTITIONS = r"""
local n = redis.call('HGET', KEYS[1], 'partitions')
if n then return tonumber(n) end
if ARGV[1] == '' then return 1 end
if redis.call('EXISTS', KEYS[2]) == 1 then n = 1 else n = tonumber(ARGV[1]) end
redis.call('HSET', KEYS[1], 'partitions', n)
return n
"""

# KEYS: stream. ARGV: group, the ids to acknowledge joined by spaces.
# One argument for all the ids: a client spends about 2 us packing each argument of a command,
# more than Redis spends splitting them here. Returns how many were pending.
ACK = r"""
local ids = {}
for id in string.gmatch(ARGV[2], '%S+') do ids[#ids + 1] = id end
local acked = 0
for i = 1, #ids, 1000 do  -- unpack() is bounded by Lua's stack
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ids, i, math.min(i + 999, #ids)))
end
return acked
"""
