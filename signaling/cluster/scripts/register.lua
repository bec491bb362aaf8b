-- REGISTER(P, id, node, conn, dt, di, announce): mark the id held by (node,
-- conn) as a registered peer with device type/info (JSON texts), give it a
-- registration seq once (kept across takeovers), list it in `peers`, and
-- publish `announce` (the peer-status online bytes; '' for none) on the
-- presence channel. Returns the seq, or -1 when (node, conn) does not hold id.
local id, node, conn, dt, di, announce = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local key = P .. 'id:' .. id
local h = redis.call('HMGET', key, 'node', 'conn', 'reg', 'seq')
if h[1] ~= node or h[2] ~= conn then
  return -1
end
local seq = tonumber(h[4])
if not seq then
  seq = redis.call('INCR', P .. 'seq')
end
redis.call('HSET', key, 'reg', '1', 'seq', seq, 'dt', dt, 'di', di)
redis.call('ZADD', P .. 'peers', seq, id)
if announce ~= '' then
  publish_presence(node, id, announce)
end
return seq
