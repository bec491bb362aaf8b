-- JOIN(P, room, id, node, conn, max_members, announce, max_bytes): add id
-- (held by node, conn) to room in join order and publish `announce`
-- (user-joined bytes; '' for none) to the room's other members.
-- Reply {status, member...}: status 'joined', 'already' (a member before:
-- nothing published), 'full' (max_members reached: nothing done), 'long'
-- (the member ids, as a JSON list, would take more than max_bytes; 0: no
-- such limit; nothing done) or 'lost' (not the holder); members are the
-- other members on live nodes, in join order.
local room, id, node, conn, max, announce = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local max_bytes = tonumber(ARGV[8])

-- Bytes `member` takes in a JSON list: quotes, comma, and a backslash for
-- each quote or backslash it holds (ids hold no control characters).
local function listed(member)
  local _, escapes = string.gsub(member, '["\\]', '')
  return #member + 3 + escapes
end
if not holds(id, node, conn) then
  return {'lost'}
end
local rkey = P .. 'room:' .. room
local status = 'already'
if not redis.call('ZSCORE', rkey, id) then
  if redis.call('ZCARD', rkey) >= tonumber(max) then
    return {'full'}
  end
  if max_bytes > 0 then
    local size = listed(id)
    for _, member in ipairs(redis.call('ZRANGE', rkey, 0, -1)) do
      size = size + listed(member)
    end
    if size > max_bytes then
      return {'long'}
    end
  end
  redis.call('ZADD', rkey, redis.call('INCR', P .. 'seq'), id)
  redis.call('SADD', P .. 'rooms:' .. id, room)
  status = 'joined'
  if announce ~= '' then
    publish_room(room, node, id, announce)
  end
end
local reply = {status}
local alive = {}
for _, member in ipairs(redis.call('ZRANGE', rkey, 0, -1)) do
  if member ~= id then
    local n = redis.call('HGET', P .. 'id:' .. member, 'node')
    if n then
      if alive[n] == nil then
        alive[n] = node_alive(n)
      end
      if alive[n] then
        reply[#reply + 1] = member
      end
    end
  end
end
return reply
