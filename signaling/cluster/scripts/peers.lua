-- PEERS(P, after_seq, limit, exclude): registered peers with a seq above
-- after_seq, in registration order, skipping `exclude` and peers whose node
-- is dead (those are dropped from `peers` on the way).
-- Reply {total, more, seq, id, dt, di, at, seq, id, ...}: total is the
-- number of registered peers other than `exclude`; more is 1 when peers
-- follow this page.
local after, limit, exclude = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local pkey = P .. 'peers'
local reply = {0, 0}
local found = 0
local alive = {}
local min = '(' .. after
while true do
  local batch = redis.call('ZRANGEBYSCORE', pkey, min, '+inf', 'WITHSCORES', 'LIMIT', 0, limit + 1)
  for i = 1, #batch, 2 do
    local id, seq = batch[i], batch[i + 1]
    min = '(' .. seq
    if id ~= exclude then
      local h = redis.call('HMGET', P .. 'id:' .. id, 'node', 'reg', 'dt', 'di', 'at')
      local n = h[1]
      local live = false
      if n and h[2] == '1' then
        if alive[n] == nil then
          alive[n] = node_alive(n)
        end
        live = alive[n]
      end
      if not live then
        redis.call('ZREM', pkey, id)
      elseif found == limit then
        reply[2] = 1
        break
      else
        found = found + 1
        local r = #reply
        reply[r + 1] = seq
        reply[r + 2] = id
        reply[r + 3] = h[3] or 'null'
        reply[r + 4] = h[4] or 'null'
        reply[r + 5] = h[5] or '0'
      end
    end
  end
  if reply[2] == 1 or #batch < 2 * (limit + 1) then
    break
  end
end
local total = redis.call('ZCARD', pkey)
if exclude ~= '' and redis.call('ZSCORE', pkey, exclude) then
  total = total - 1
end
reply[1] = total
return reply
