-- ENQUEUE(P, rcpt, message_id, now, sender, body,
--         max_per_peer, max_bytes, max_peers, max_bytes_per_sender):
-- store body for rcpt unless a limit would be passed (then nothing is
-- stored). Reply {'stored', count, bytes} (the new global totals) or
-- {'full', reason} with reason 'peer', 'peers', 'bytes' or 'sender'.
return offline_push(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
