-- EXPIRE(P, cutoff, max_recipients): drop entries stored at or before
-- cutoff (now - ttl), oldest first, for at most max_recipients recipients.
-- Reply {removed, count, bytes, more} (more is 1 when recipients with old
-- entries may remain).
local cutoff, batch = ARGV[2], tonumber(ARGV[3])
local limit = tonumber(cutoff)
local rcpts = redis.call('ZRANGEBYSCORE', P .. 'offline:due', '-inf', cutoff, 'LIMIT', 0, batch)
local senders = {}
local removed, bytes = 0, 0
for _, rcpt in ipairs(rcpts) do
  local qkey = P .. 'offline:q:' .. rcpt
  while true do
    local e = redis.call('LINDEX', qkey, 0)
    if not e then
      break
    end
    local _, sender, at, size = parse_entry(e)
    if at > limit then
      break
    end
    redis.call('LPOP', qkey)
    removed = removed + 1
    bytes = bytes + size
    if sender ~= '' then
      senders[sender] = (senders[sender] or 0) + size
    end
  end
  offline_requeue(rcpt)
end
local count, total
if removed > 0 then
  count, total = offline_forget(senders, removed, bytes)
else
  count, total = offline_totals()
end
return {removed, count, total, #rcpts == batch and 1 or 0}
