-- REAP(P, self, now_ms, max_ids, presence, device_type, target):
-- release the ids of dead nodes (every node in `nodes` but self whose alive
-- key is gone; or only `target` when given, alive or not), at most max_ids
-- ids per call. Each released id leaves its rooms (user-left) and, when it
-- was a registered peer and presence is '1', is announced offline on the
-- presence channel (with its deviceType when device_type is '1'). Events
-- carry the dead node as origin, so every live node delivers them. A node
-- with no ids left is forgotten.
-- Reply {released, more, node...}: the ids released, 1 when ids remain for
-- another call, and the nodes forgotten.
local self, now, budget = ARGV[2], ARGV[3], tonumber(ARGV[4])
local presence, with_dt, target = ARGV[5] == '1', ARGV[6] == '1', ARGV[7]
local nodes
if target ~= '' then
  nodes = {target}
else
  nodes = redis.call('SMEMBERS', P .. 'nodes')
end
local reply = {0, 0}
for _, n in ipairs(nodes) do
  if budget <= 0 then
    reply[2] = 1
    break
  end
  if target ~= '' or (n ~= self and not node_alive(n)) then
    local ids_key = P .. 'node:' .. n .. ':ids'
    for _, id in ipairs(redis.call('SPOP', ids_key, budget)) do
      budget = budget - 1
      if redis.call('HGET', P .. 'id:' .. id, 'node') == n then
        local registered, dt = release_id(id, n, n)
        reply[1] = reply[1] + 1
        if registered and presence then
          publish_presence(n, id, offline_status(id, dt, now, with_dt))
        end
      end
    end
    if redis.call('EXISTS', ids_key) == 0 then
      redis.call('SREM', P .. 'nodes', n)
      reply[#reply + 1] = n
    else
      reply[2] = 1
    end
  end
end
return reply
