-- REMOVE(P, rcpt, message_id...): drop every entry of rcpt with one of the
-- message ids. Reply {removed, count, bytes} (global totals after).
local rcpt = ARGV[2]
local qkey = P .. 'offline:q:' .. rcpt
local entries = redis.call('LRANGE', qkey, 0, -1)
local wanted = {}
for i = 3, #ARGV do
  wanted[ARGV[i]] = true
end
local kept, senders = {}, {}
local removed, bytes = 0, 0
for _, e in ipairs(entries) do
  local mid, sender, _, size = parse_entry(e)
  if wanted[mid] then
    removed = removed + 1
    bytes = bytes + size
    if sender ~= '' then
      senders[sender] = (senders[sender] or 0) + size
    end
  else
    kept[#kept + 1] = e
  end
end
if removed == 0 then
  local count, total = offline_totals()
  return {0, count, total}
end
redis.call('DEL', qkey)
for i = 1, #kept, 1000 do
  redis.call('RPUSH', qkey, unpack(kept, i, math.min(i + 999, #kept)))
end
offline_requeue(rcpt)
local count, total = offline_forget(senders, removed, bytes)
return {removed, count, total}
