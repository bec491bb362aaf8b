-- LEAVE(P, room, id, node, conn, announce): remove id (held by node, conn)
-- from room and publish `announce` (user-left bytes; '' for none) to the
-- remaining members. Returns 1 when id was a member, 0 when not, -1 when
-- (node, conn) does not hold id.
local room, id, node, conn, announce = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if not holds(id, node, conn) then
  return -1
end
local rkey = P .. 'room:' .. room
if redis.call('ZREM', rkey, id) == 0 then
  return 0
end
redis.call('SREM', P .. 'rooms:' .. id, room)
if announce ~= '' and redis.call('EXISTS', rkey) == 1 then
  publish_room(room, node, id, announce)
end
return 1
