"""The Lua scripts of ``state/redis_presence.py``: each runs on one shard, on the keys of one
channel and the heartbeats (``state/redis.py`` lists the keys).

Every script reads the time from Redis (``TIME``), never from the calling instance, so instances
whose clocks disagree still agree on which heartbeats ran out. Redis 5 and later replicate a
script's effects, not the script, which is what lets a writing script call ``TIME``.
"""

# Seconds since the epoch by the clock of the Redis running the script.
_NOW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
"""

# Whether the instance a slot names (an ARGV or local reference) is alive: its heartbeat in
# KEYS[4] (instance -> heartbeat expiry) ends after ``now``. The start of the channel scripts.
_ALIVE = (
    _NOW
    + """
local function alive(instance)
  local beat = redis.call('ZSCORE', KEYS[4], instance)
  return beat ~= false and tonumber(beat) > now
end
local function live_instances()
  local instances = {}
  local cursor = '-inf'
  while true do
    local first = redis.call('ZRANGEBYSCORE', KEYS[1], cursor, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if #first == 0 then
      return instances
    end
    if alive(first[2]) then
      table.insert(instances, first[2])
    end
    cursor = '(' .. first[2]
  end
end
"""
)

# KEYS: the channel's slots (clientId -> instance), holders (clientId -> holder token), members
# (clientId -> a presence channel's Member as JSON), the heartbeats (instance -> expiry) and this
# instance's held channels. ARGV: clientId, max connections, instance, lease (seconds), holder,
# "replace" or "refuse", the Member's JSON ('' when none), channel id.
# Returns the outcome, the replaced holder, and whether this instance's heartbeat was alive (when
# it was not, Redis may have forgotten this instance's other slots: they are put back).
# Live slots are counted one instance at a time (a slot's score is its instance), so a dead
# instance's slots neither count nor block their clientIds: they are overwritten here.
ACQUIRE = (
    _ALIVE
    + """
local was_alive = alive(ARGV[3]) and 1 or 0
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[4]), ARGV[3])
local previous = ''
local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
local held = current and alive(current)
if held then
  if ARGV[6] ~= 'replace' then
    return {'taken', '', was_alive}
  end
  previous = redis.call('HGET', KEYS[2], ARGV[1]) or ''
else
  local live = 0
  for _, instance in ipairs(live_instances()) do
    live = live + redis.call('ZCOUNT', KEYS[1], instance, instance)
  end
  if live >= tonumber(ARGV[2]) then
    return {'full', '', was_alive}
  end
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[5])
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[7])
else
  redis.call('HDEL', KEYS[3], ARGV[1])
end
redis.call('SADD', KEYS[5], ARGV[8])
if held then
  return {'replaced', previous, was_alive}
end
return {'ok', '', was_alive}
"""
)

# Removes a slot only while it carries the holder's token: a replaced connection's late release
# leaves its successor's slot alone. Forgets the channel among this instance's held ones when it
# has no slot left there. KEYS: slots, holders, members, this instance's held channels.
# ARGV: clientId, holder, instance, channel id.
RELEASE = """
local removed = 0
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  removed = redis.call('ZREM', KEYS[1], ARGV[1])
end
if redis.call('ZCOUNT', KEYS[1], ARGV[3], ARGV[3]) == 0 then
  redis.call('SREM', KEYS[4], ARGV[4])
end
return removed
"""

# KEYS: slots, holders, members, heartbeats. The live clientIds of the channel.
LIVE = (
    _ALIVE
    + """
local client_ids = {}
for _, instance in ipairs(live_instances()) do
  for _, client_id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], instance, instance)) do
    table.insert(client_ids, client_id)
  end
end
return client_ids
"""
)

# KEYS: slots, holders, members, heartbeats. How many live slots the channel has.
COUNT = (
    _ALIVE
    + """
local live = 0
for _, instance in ipairs(live_instances()) do
  live = live + redis.call('ZCOUNT', KEYS[1], instance, instance)
end
return live
"""
)

# KEYS: slots, holders, members, heartbeats. ARGV: clientId. 1 if it holds a live slot.
CONTAINS = (
    _ALIVE
    + """
local instance = redis.call('ZSCORE', KEYS[1], ARGV[1])
if instance and alive(instance) then
  return 1
end
return 0
"""
)

# This instance's heartbeat on one shard. KEYS: heartbeats. ARGV: instance, lease (seconds).
# Returns whether the heartbeat was still alive (if not, Redis restarted or lost it, or this
# instance was away longer than the lease: its slots are put back), and up to 8 instances whose
# heartbeat ran out, whose slots are to be swept.
HEARTBEAT = (
    _NOW
    + """
local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local alive = 0
if beat and tonumber(beat) > now then
  alive = 1
end
return {alive, redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 8)}
"""
)

# Puts back this instance's slots on one channel after Redis forgot its heartbeat. A slot still
# carrying its holder's token is kept; one that is gone entirely (Redis restarted, or it was swept
# while this instance was away) is put back with its member, so it counts against the limit again;
# one another connection took over (``replace``) is left to it and returned.
# KEYS: slots, holders, members, this instance's held channels. ARGV: instance, channel id, then
# clientId, holder and Member JSON ('' when none) of each.
REASSERT = """
local taken = {}
local kept = 0
for i = 3, #ARGV, 3 do
  local owner = redis.call('HGET', KEYS[2], ARGV[i])
  if owner == ARGV[i + 1] or (not owner and not redis.call('ZSCORE', KEYS[1], ARGV[i])) then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    if ARGV[i + 2] ~= '' then
      redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2])
    end
    kept = kept + 1
  elseif owner then
    table.insert(taken, ARGV[i])
  end
end
if kept > 0 then
  redis.call('SADD', KEYS[4], ARGV[2])
end
return taken
"""

# Removes up to 256 slots of a dead instance on one channel, and the channel from its held ones
# once none is left. KEYS: slots, holders, members, heartbeats, the dead instance's held channels.
# ARGV: the dead instance, channel id. Returns 1 if that instance is alive again (nothing is
# swept), else 0, then the clientId and JSON of each swept member.
SWEEP = (
    _ALIVE
    + """
if alive(ARGV[1]) then
  return {1, {}}
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1], 'LIMIT', 0, 256)
local swept = {}
if #gone > 0 then
  local details = redis.call('HMGET', KEYS[3], unpack(gone))
  for i = 1, #gone do
    if details[i] then
      table.insert(swept, gone[i])
      table.insert(swept, details[i])
    end
  end
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('HDEL', KEYS[2], unpack(gone))
  redis.call('HDEL', KEYS[3], unpack(gone))
end
if #gone < 256 then
  redis.call('SREM', KEYS[5], ARGV[2])
end
return {0, swept}
"""
)

# Forgets a dead instance once it holds no channel. KEYS: heartbeats, its held channels.
# ARGV: the instance.
FORGET = (
    _NOW
    + """
local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
if redis.call('SCARD', KEYS[2]) == 0 and (not beat or tonumber(beat) <= now) then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""
)
