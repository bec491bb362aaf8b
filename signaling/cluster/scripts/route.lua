-- ROUTE(P, to, origin, data, message_id, now, sender, room,
--       max_per_peer, max_bytes, max_peers, max_bytes_per_sender):
-- the hot path of a directed message. When `to` is bound on a live node
-- whose subscriber is listening, publish a delivery envelope ('D' to data)
-- on that node's channel: reply {'live'}. With a room, `to` must be a
-- member of it, and nothing is stored: otherwise reply {'absent'}. Without
-- a room, a recipient that cannot be reached gets `data` stored offline
-- under the same limits as ENQUEUE: {'stored', count, bytes} or
-- {'full', reason}.
local to, data, room = ARGV[2], ARGV[4], ARGV[8]
if room ~= '' and not redis.call('ZSCORE', P .. 'room:' .. room, to) then
  return {'absent'}
end
local holder = redis.call('HGET', P .. 'id:' .. to, 'node')
if holder and node_alive(holder) then
  if redis.call('PUBLISH', P .. 'node:' .. holder, 'D' .. field(to) .. data) > 0 then
    return {'live'}
  end
end
if room ~= '' then
  return {'absent'}
end
return offline_push(to, ARGV[5], ARGV[6], ARGV[7], data, ARGV[9], ARGV[10], ARGV[11], ARGV[12])
