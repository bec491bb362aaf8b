-- HEARTBEAT(P, node, ttl_ms): keep this node alive for ttl_ms more and list
-- it among the nodes the reaper watches. Returns 1 when the node was alive
-- already, 0 when it was not (first beat, a lapse, or Redis lost its data).
local node, ttl = ARGV[2], ARGV[3]
local alive = P .. 'node:' .. node .. ':alive'
local was = redis.call('EXISTS', alive)
redis.call('SET', alive, '1', 'PX', ttl)
redis.call('SADD', P .. 'nodes', node)
return was
