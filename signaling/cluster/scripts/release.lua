-- RELEASE(P, id, node, conn, announce[, now_ms, presence, device_type]):
-- fenced; only when (node, conn) holds id: leave every room (user-left to
-- the remaining members), unregister, and, when id was a registered peer,
-- publish `announce` (peer-status offline bytes; '' for none). Given
-- now_ms, the offline peer-status is built here instead, as REAP builds it
-- (when presence is '1'; with its deviceType when device_type is '1'), so
-- the departure reaches the other nodes in the same step as the release.
-- Reply {released 0/1, registered 0/1, room...}.
local id, node, conn, announce = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = ARGV[6]
if not holds(id, node, conn) then
  return {0, 0}
end
local registered, dt, rooms = release_id(id, node, node)
if registered then
  if now then
    if ARGV[7] == '1' then
      publish_presence(node, id, offline_status(id, dt, now, ARGV[8] == '1'))
    end
  elseif announce ~= '' then
    publish_presence(node, id, announce)
  end
end
local reply = {1, registered and 1 or 0}
for _, room in ipairs(rooms) do
  reply[#reply + 1] = room
end
return reply
