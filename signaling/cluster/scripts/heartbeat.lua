-- HEARTBEAT(P, node, ttl_ms, epoch): keep this node alive for ttl_ms more
-- and list it among the nodes the reaper watches. `epoch` names the data
-- set: it is stored once (when missing: first start, or Redis lost its
-- data) and the stored one is returned, so a node can tell an outage that
-- Redis survived from one that emptied it.
-- Reply {was, epoch}: was is 1 when the node was alive already, 0 when it
-- was not (first beat, a lapse, or Redis lost its data).
local node, ttl, epoch = ARGV[2], ARGV[3], ARGV[4]
local alive = P .. 'node:' .. node .. ':alive'
local was = redis.call('EXISTS', alive)
redis.call('SET', alive, '1', 'PX', ttl)
redis.call('SADD', P .. 'nodes', node)
local ekey = P .. 'epoch'
if redis.call('SET', ekey, epoch, 'NX') then
  return {was, epoch}
end
return {was, redis.call('GET', ekey)}
