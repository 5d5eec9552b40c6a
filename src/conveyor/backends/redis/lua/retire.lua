-- A worker claims nothing more: withdraw its idle registration so no job is handed to it.
-- ARGV[3] worker, ARGV[4..] its queues.
redis.call('DEL', P .. ':idle:' .. ARGV[3])
for i = 4, #ARGV do redis.call('SREM', qkey(ARGV[i], 'idle'), ARGV[3]) end
return 1
