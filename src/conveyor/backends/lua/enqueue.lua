-- Store new jobs, in order. ARGV[3] = number of jobs, then 14 values per job:
-- id, task, queue, args, kwargs, priority, key, unique, max_attempts, timeout, enqueued_at,
-- scheduled_for, retry, supersede. key/unique are '' (none) or '=' .. value; timeout,
-- scheduled_for and retry are '' for none.
-- Returns per job: its status (stored now), or the record of the job it already is (same id,
-- e.g. a retried call) or that holds its unique value.
local now = clock()
local n = tonumber(ARGV[3])
local out = {}
for i = 0, n - 1 do
  local b = 4 + i * 14
  local id, q = ARGV[b], ARGV[b + 2]
  local jk = jkey(id)
  local key = ARGV[b + 6] ~= '' and string.sub(ARGV[b + 6], 2) or nil
  local unique = ARGV[b + 7] ~= '' and string.sub(ARGV[b + 7], 2) or nil
  local existing = nil
  if redis.call('EXISTS', jk) == 1 then
    existing = jk
  elseif unique then
    local holder = redis.call('HGET', qkey(q, 'unique'), unique)
    if holder then existing = jkey(holder) end
  end
  if existing then
    out[i + 1] = record(existing)
  else
    if key and ARGV[b + 13] == '1' then
      -- supersede: the lane's waiting jobs that never started are cancelled first
      for _, old in ipairs(redis.call('LRANGE', lkey(q, key), 0, -1)) do
        local ok = jkey(old)
        local f = redis.call('HMGET', ok, 'status', 'attempts', 'seq', 'unique')
        if (f[1] == 'queued' or f[1] == 'scheduled') and tonumber(f[2]) == 0 then
          unindex(old, q, tonumber(f[3]))
          finish(old, ok, q, f[1], 'cancelled', key, f[4] or nil, now)
          status_event(old, ok, 'cancelled', f[2], ',"reason":"superseded"', now)
        end
      end
    end
    local seq = redis.call('INCR', P .. ':seq')
    local due = ARGV[b + 11]
    local status = 'queued'
    if due ~= '' and tonumber(due) > now then status = 'scheduled' end
    local priority = tonumber(ARGV[b + 5])
    redis.call('HSET', jk, 'id', id, 'task', ARGV[b + 1], 'queue', q, 'status', status,
      'args', ARGV[b + 3], 'kwargs', ARGV[b + 4], 'priority', ARGV[b + 5], 'attempts', 0,
      'max_attempts', ARGV[b + 8], 'enqueued_at', ARGV[b + 10], 'cancel_requested', 0,
      'seq', seq, 'ev', 0)
    if key then redis.call('HSET', jk, 'key', key) end
    if unique then
      redis.call('HSET', jk, 'unique', unique)
      redis.call('HSET', qkey(q, 'unique'), unique, id)
    end
    if ARGV[b + 9] ~= '' then redis.call('HSET', jk, 'timeout', ARGV[b + 9]) end
    if due ~= '' then redis.call('HSET', jk, 'scheduled_for', due) end
    if ARGV[b + 12] ~= '' then redis.call('HSET', jk, 'retry', ARGV[b + 12]) end
    redis.call('ZADD', P .. ':all', seq, id)
    redis.call('ZADD', qkey(q, 'all'), seq, id)
    redis.call('SADD', P .. ':queues', q)
    count(q, status, 1)
    status_event(id, jk, status, 0, '', now)
    local head = true
    if key then head = redis.call('RPUSH', lkey(q, key), id) == 1 end
    if head then
      make_available(id, q, status, priority, seq, status == 'scheduled' and due or nil)
    end
    out[i + 1] = status
  end
end
wake_all()
return out
