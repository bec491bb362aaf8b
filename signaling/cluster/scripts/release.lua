-- RELEASE(P, id, node, conn, announce): fenced; only when (node, conn) holds
-- id: leave every room (user-left to the remaining members), unregister, and
-- publish `announce` (peer-status offline bytes; '' for none) when id was a
-- registered peer. Reply {released 0/1, registered 0/1, room...}.
local id, node, conn, announce = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not holds(id, node, conn) then
  return {0, 0}
end
local registered, _, rooms = release_id(id, node, node)
if registered and announce ~= '' then
  publish_presence(node, id, announce)
end
local reply = {1, registered and 1 or 0}
for _, room in ipairs(rooms) do
  reply[#reply + 1] = room
end
return reply
