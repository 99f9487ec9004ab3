package redisstream

import "github.com/redis/go-redis/v9"

// The Lua scripts run atomically in Redis, so a lease check and the read or
// acknowledgement it guards cannot be separated by another member's takeover.
// Times come from the server's clock (TIME), so members' clocks do not matter.

// heartbeatScript registers ARGV[1] in the members ZSET KEYS[1] until now +
// ARGV[2] ms, drops expired members and returns the live ones.
// partitionsScript records a partition count (ARGV[1]) under each of KEYS
// that has none, unless one of them holds another: then it writes nothing
// and returns that key's position (from 1) and count.
var partitionsScript = redis.NewScript(`
for i, key in ipairs(KEYS) do
	local got = redis.call('GET', key)
	if got and got ~= ARGV[1] then
		return {i, got}
	end
end
for _, key in ipairs(KEYS) do
	redis.call('SET', key, ARGV[1], 'NX')
end
return 0
`)

var heartbeatScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[2])), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%d', now))
return redis.call('ZRANGE', KEYS[1], 0, -1)
`)

// acquireScript takes the lease KEYS[1] for token ARGV[1] for ARGV[2] ms if
// it is free and returns the new epoch (counter KEYS[2], never below the
// server's clock in ms, so it keeps growing even after Redis lost its data);
// 0 if the lease is held.
var acquireScript = redis.NewScript(`
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 0
end
local e = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if e < now then
  e = now
  redis.call('SET', KEYS[2], string.format('%d', e))
end
return e
`)

// refreshScript extends the lease KEYS[1] by ARGV[2] ms if token ARGV[1]
// still holds it: 1 if so, 0 if not.
var refreshScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

// releaseScript deletes the lease KEYS[1] if token ARGV[1] still holds it.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// readScript reads up to ARGV[4] entries of stream KEYS[2] for group
// ARGV[2], consumer ARGV[3], after id ARGV[5] (">" for new entries, another
// id for the consumer's pending ones), if token ARGV[1] holds the lease
// KEYS[1]; otherwise it fails with FENCED. It returns {entries, last id}:
// the last id is the stream's last generated id when there were no entries
// (to wait for newer ones with XREAD), else "".
var readScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED lease lost')
end
local r = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4], 'STREAMS', KEYS[2], ARGV[5])
if r and #r[1][2] > 0 then
  return {r[1][2], ''}
end
local info = redis.call('XINFO', 'STREAM', KEYS[2])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then
    return {{}, info[i + 1]}
  end
end
return {{}, '0-0'}
`)

// ackScript acknowledges ids ARGV[3..] of stream KEYS[2] for group ARGV[2]
// if token ARGV[1] holds the lease KEYS[1]: the number acknowledged, or -1.
var ackScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
return redis.call('XACK', KEYS[2], ARGV[2], unpack(ARGV, 3))
`)

// deleteGroupScript deletes group ARGV[1]: KEYS holds its ARGV[2] members
// sets, then for each partition its stream, lease and epoch. It fails with
// INUSE, deleting nothing, while a member is alive or a lease is held.
var deleteGroupScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members = tonumber(ARGV[2])
for i = 1, members do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('(%d', now))
  if redis.call('ZCARD', KEYS[i]) > 0 then
    return redis.error_reply('INUSE the group has members')
  end
end
for i = members + 1, #KEYS, 3 do
  if redis.call('EXISTS', KEYS[i + 1]) == 1 then
    return redis.error_reply('INUSE a partition of the group is leased')
  end
end
for i = members + 1, #KEYS, 3 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('XGROUP', 'DESTROY', KEYS[i], ARGV[1])
  end
  redis.call('DEL', KEYS[i + 1], KEYS[i + 2])
end
for i = 1, members do
  redis.call('DEL', KEYS[i])
end
return 1
`)
