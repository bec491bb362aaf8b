-- CLAIM(P, id, node, conn, auth, at_ms, mode): bind `id` to (node, conn).
-- auth is '1' when the connection holds a token for id; mode is 'claim' or
-- 'reclaim' (after a Redis outage: never take the id from a live holder).
-- Reply: {status, old_node, old_conn, reg, seq, dt, di, room...} where
-- status is
--   'new'       nobody held id;
--   'same'      (node, conn) holds it already;
--   'takeover'  a live holder was replaced; a kick went to its node unless
--               it is this node (the caller closes its own old connection);
--   'stale'     the holder's node is dead: replaced without a kick;
--   'forbidden' the live holder is authenticated and this one is not;
--   'lost'      mode 'reclaim' and another live connection holds id.
-- For 'takeover' and 'stale' the registration (reg '1', seq, dt, di) and
-- the rooms pass to the new holder.
local id, node, conn, auth, at, mode = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local key = P .. 'id:' .. id
local h = redis.call('HMGET', key, 'node', 'conn', 'auth', 'reg', 'seq', 'dt', 'di')
local old_node, old_conn = h[1], h[2]
if not old_node then
  redis.call('HSET', key, 'node', node, 'conn', conn, 'auth', auth, 'at', at)
  redis.call('SADD', P .. 'node:' .. node .. ':ids', id)
  return {'new', '', '', '', '', '', ''}
end
local status = 'stale'
if old_node == node and old_conn == conn then
  status = 'same'
elseif node_alive(old_node) then
  if mode == 'reclaim' then
    status = 'lost'
  elseif h[3] == '1' and auth ~= '1' then
    status = 'forbidden'
  else
    status = 'takeover'
  end
end
if status == 'same' or status == 'lost' or status == 'forbidden' then
  return {status, old_node, old_conn or '', '', '', '', ''}
end
if status == 'takeover' and old_node ~= node then
  redis.call('PUBLISH', P .. 'node:' .. old_node, 'K' .. field(id) .. (old_conn or ''))
end
redis.call('SREM', P .. 'node:' .. old_node .. ':ids', id)
redis.call('HSET', key, 'node', node, 'conn', conn, 'auth', auth, 'at', at)
redis.call('SADD', P .. 'node:' .. node .. ':ids', id)
local reply = {status, old_node, old_conn or '', h[4] or '', h[5] or '', h[6] or '', h[7] or ''}
for _, room in ipairs(redis.call('SMEMBERS', P .. 'rooms:' .. id)) do
  reply[#reply + 1] = room
end
return reply
