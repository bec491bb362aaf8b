-- Shared helpers, put in front of every script by signaling/cluster/scripts.py.
-- ARGV[1] is always the key prefix. Only Redis 6.2 commands are used.
-- Keys (prefix omitted): epoch STRING, id:{id} HASH, rooms:{id} SET, room:{room} ZSET,
-- peers ZSET, seq STRING, nodes SET, node:{node}:alive STRING,
-- node:{node}:ids SET, offline:q:{id} LIST, offline:due ZSET,
-- offline:stats HASH, offline:senders HASH.
local P = ARGV[1]

local function node_alive(node)
  return redis.call('EXISTS', P .. 'node:' .. node .. ':alive') == 1
end

-- One length-prefixed field of a channel envelope or offline entry: "<bytes>:<value>".
local function field(s)
  return #s .. ':' .. s
end

local function publish_room(room, origin, exclude, data)
  return redis.call('PUBLISH', P .. 'room:' .. room, 'R' .. field(origin) .. field(exclude) .. data)
end

local function publish_presence(origin, exclude, data)
  return redis.call('PUBLISH', P .. 'presence', 'P' .. field(origin) .. field(exclude) .. data)
end

-- True when id:{id} is bound to exactly this node and connection (the fence).
local function holds(id, node, conn)
  local h = redis.call('HMGET', P .. 'id:' .. id, 'node', 'conn')
  return h[1] == node and h[2] == conn
end

-- Forget `id`, bound on `node`: leave its rooms (user-left published to each
-- room that still has members, as coming from `origin`), drop its
-- registration. Returns whether it was registered, its device type (JSON
-- text or false) and its rooms.
local function release_id(id, node, origin)
  local key = P .. 'id:' .. id
  local h = redis.call('HMGET', key, 'reg', 'dt')
  local rooms = redis.call('SMEMBERS', P .. 'rooms:' .. id)
  local idjs = cjson.encode(id)
  for _, room in ipairs(rooms) do
    local rkey = P .. 'room:' .. room
    redis.call('ZREM', rkey, id)
    if redis.call('EXISTS', rkey) == 1 then
      publish_room(room, origin, id,
        '{"type":"user-left","userId":' .. idjs .. ',"roomId":' .. cjson.encode(room) .. '}')
    end
  end
  redis.call('DEL', key, P .. 'rooms:' .. id)
  redis.call('ZREM', P .. 'peers', id)
  redis.call('SREM', P .. 'node:' .. node .. ':ids', id)
  return h[1] == '1', h[2], rooms
end

-- The peer-status offline message for `id` (what the hub sends on a
-- disconnect): with its deviceType (JSON text `dt`) when with_dt and the
-- peer registered one (a field it never gave is left out, as the hub does).
local function offline_status(id, dt, now, with_dt)
  local status = '{"type":"peer-status","peerId":' .. cjson.encode(id) .. ',"status":"offline"'
  if with_dt and dt and dt ~= '' and dt ~= 'null' then
    status = status .. ',"deviceType":' .. dt
  end
  return status .. ',"timestamp":' .. now .. '}'
end

-- Offline entries: field(message id) .. field(sender) .. stored_at .. ':' .. body
local function parse_entry(e)
  local c = string.find(e, ':', 1, true)
  local n = tonumber(string.sub(e, 1, c - 1))
  local mid = string.sub(e, c + 1, c + n)
  local p = c + n + 1
  c = string.find(e, ':', p, true)
  n = tonumber(string.sub(e, p, c - 1))
  local sender = string.sub(e, c + 1, c + n)
  p = c + n + 1
  c = string.find(e, ':', p, true)
  return mid, sender, tonumber(string.sub(e, p, c - 1)), #e - c
end

local function offline_totals()
  local t = redis.call('HMGET', P .. 'offline:stats', 'count', 'bytes')
  return tonumber(t[1] or '0'), tonumber(t[2] or '0')
end

-- Account for removed entries: per-sender bytes and the global totals.
local function offline_forget(senders, count, bytes)
  local skey = P .. 'offline:senders'
  for sender, size in pairs(senders) do
    if redis.call('HINCRBY', skey, sender, -size) <= 0 then
      redis.call('HDEL', skey, sender)
    end
  end
  local stats = P .. 'offline:stats'
  return redis.call('HINCRBY', stats, 'count', -count), redis.call('HINCRBY', stats, 'bytes', -bytes)
end

-- Point offline:due at the oldest remaining entry of `rcpt`, or drop it.
local function offline_requeue(rcpt)
  local head = redis.call('LINDEX', P .. 'offline:q:' .. rcpt, 0)
  if head then
    local _, _, at = parse_entry(head)
    redis.call('ZADD', P .. 'offline:due', at, rcpt)
  else
    redis.call('ZREM', P .. 'offline:due', rcpt)
  end
end

-- Append one entry for `rcpt` unless a limit would be passed: `head` is the
-- entry without its body (field(mid) .. field(sender) .. now .. ':').
-- Returns {'stored', count, bytes} or {'full', reason}.
local function offline_store(rcpt, head, sender, now, body, max_per_peer, max_bytes, max_peers, max_sender)
  local qkey = P .. 'offline:q:' .. rcpt
  local len = redis.call('LLEN', qkey)
  if len >= tonumber(max_per_peer) then
    return {'full', 'peer'}
  end
  if len == 0 and redis.call('ZCARD', P .. 'offline:due') >= tonumber(max_peers) then
    return {'full', 'peers'}
  end
  local size = #body
  local _, bytes = offline_totals()
  if bytes + size > tonumber(max_bytes) then
    return {'full', 'bytes'}
  end
  if sender ~= '' then
    local skey = P .. 'offline:senders'
    local used = tonumber(redis.call('HGET', skey, sender) or '0')
    if used + size > tonumber(max_sender) then
      return {'full', 'sender'}
    end
    redis.call('HINCRBY', skey, sender, size)
  end
  redis.call('RPUSH', qkey, head .. body)
  if len == 0 then
    redis.call('ZADD', P .. 'offline:due', now, rcpt)
  end
  local stats = P .. 'offline:stats'
  return {'stored', redis.call('HINCRBY', stats, 'count', 1), redis.call('HINCRBY', stats, 'bytes', size)}
end

-- offline_store with the entry's head made of its message id, sender and time.
local function offline_push(rcpt, mid, now, sender, body, max_per_peer, max_bytes, max_peers, max_sender)
  return offline_store(rcpt, field(mid) .. field(sender) .. now .. ':', sender, now, body,
                       max_per_peer, max_bytes, max_peers, max_sender)
end
