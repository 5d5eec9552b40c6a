-- Put a failed, dead or cancelled job back at the end of its queue, attempts starting over.
-- ARGV[3] id. Returns the record afterwards, or nil when there is no such job.
local now = clock()
local id = ARGV[3]
local jk = jkey(id)
local f = redis.call('HMGET', jk, 'status', 'queue', 'key', 'unique', 'priority')
if not f[1] then return nil end
local status, q, key, unique = f[1], f[2], f[3], f[4]
if status == 'failed' or status == 'dead' or status == 'cancelled' then
  redis.call('PERSIST', jk)
  redis.call('ZREM', P .. ':done', id .. '\n' .. status .. '\n' .. q)
  local seq = redis.call('INCR', P .. ':seq')
  move(id, jk, q, status, 'queued', seq)
  redis.call('HSET', jk, 'seq', seq, 'attempts', 0, 'cancel_requested', 0)
  redis.call('HDEL', jk, 'finished_at', 'started_at', 'lease_token', 'lease_expires_at',
             'worker', 'scheduled_for', 'lost')
  -- an active job holds the unique value now: this one gives it up (as SQLite does)
  if unique and redis.call('HSETNX', qkey(q, 'unique'), unique, id) == 0 then
    redis.call('HDEL', jk, 'unique')
  end
  local head = not key or join_lane(q, key, id)
  status_event(id, jk, 'queued', 0, ',"reason":"retried"', now)
  if head then make_available(id, q, 'queued', tonumber(f[5]), seq, nil) end
end
settle(now)
return record(jk)
