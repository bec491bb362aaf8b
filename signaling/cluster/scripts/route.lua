-- ROUTE(P, origin, max_per_peer, max_bytes, max_peers, max_bytes_per_sender,
--       then for each message: to, delivery, head, room):
-- the hot path of directed messages, for every message given, in order.
-- `delivery` is field(to) .. field(data), data being the exact bytes `to`
-- receives; `head` is its offline entry's head (field(message_id) ..
-- field(sender) .. now .. ':', see offline_store). When `to` is bound on a live node, the delivery goes to that
-- node's channel: one envelope per node, 'D' followed by the deliveries of
-- its messages in order. A message published to a node whose subscriber is
-- listening is 1 (live). With a room, `to` must be a member of it, and
-- nothing is stored: otherwise 0 (absent). Without a room, a message that
-- cannot be delivered has its data stored offline under the same limits as
-- ENQUEUE: {'stored', count, bytes} or {'full', reason}.
-- Reply: one of those per message, in the order given.
local replies = {}
local alive = {}
local batches = {}
local holders = {}

-- The reply for the message at ARGV[i] when it cannot be delivered.
local function undelivered(i)
  if ARGV[i + 3] ~= '' then
    return 0
  end
  local delivery, head = ARGV[i + 1], ARGV[i + 2]
  local data = string.sub(delivery, string.find(delivery, ':', #field(ARGV[i]) + 1, true) + 1)
  local _, sender, now = parse_entry(head)
  return offline_store(ARGV[i], head, sender, now, data, ARGV[3], ARGV[4], ARGV[5], ARGV[6])
end

local n = 0
for i = 7, #ARGV, 4 do
  n = n + 1
  local to, room = ARGV[i], ARGV[i + 3]
  local holder = false
  if room == '' or redis.call('ZSCORE', P .. 'room:' .. room, to) then
    holder = redis.call('HGET', P .. 'id:' .. to, 'node')
  end
  if holder then
    if alive[holder] == nil then
      alive[holder] = node_alive(holder)
    end
    if not alive[holder] then
      holder = false
    end
  end
  if holder then
    local batch = batches[holder]
    if not batch then
      batch = {parts = {'D'}, items = {}}
      batches[holder] = batch
      holders[#holders + 1] = holder
    end
    batch.parts[#batch.parts + 1] = ARGV[i + 1]
    batch.items[#batch.items + 1] = {n, i}
    replies[n] = false
  else
    replies[n] = undelivered(i)
  end
end

for _, holder in ipairs(holders) do
  local batch = batches[holder]
  local listening = redis.call('PUBLISH', P .. 'node:' .. holder, table.concat(batch.parts)) > 0
  for _, item in ipairs(batch.items) do
    replies[item[1]] = listening and 1 or undelivered(item[2])
  end
end
return replies
