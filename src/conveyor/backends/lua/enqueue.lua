-- Store new jobs, in order. ARGV[3] = a JSON array with one array per job:
-- [id, task, queue, args, kwargs, priority, key, unique, max_attempts, timeout, enqueued_at,
--  scheduled_for, retry, supersede]: args, kwargs and retry are JSON text (stored as they are),
-- key and unique are null when absent, timeout, scheduled_for and retry '' when absent,
-- supersede a boolean; numbers are strings, so nothing is rounded on the way.
-- Returns per job: its status (stored now), or the record of the job it already is (same id,
-- e.g. a retried call) or that holds its unique value.
local now = clock()
handing = true
local jobs = cjson.decode(ARGV[3])
local out = {}
for i, job in ipairs(jobs) do
  local id, q = job[1], job[3]
  local jk = jkey(id)
  -- cjson decodes JSON null as cjson.null (a sentinel), not nil
  local key = job[7] ~= cjson.null and job[7] or nil
  local unique = job[8] ~= cjson.null and job[8] or nil
  local existing = nil
  if redis.call('EXISTS', jk) == 1 then
    existing = jk
  elseif unique then
    local holder = redis.call('HGET', qkey(q, 'unique'), unique)
    if holder then existing = jkey(holder) end
  end
  if existing then
    out[i] = record(existing)
  else
    if key and job[14] then
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
    fresh[id] = true
    local seq = redis.call('INCR', P .. ':seq')
    local due = job[12]
    local status = 'queued'
    if due ~= '' and tonumber(due) > now then status = 'scheduled' end
    local priority = tonumber(job[6])
    redis.call('HSET', jk, 'id', id, 'task', job[2], 'queue', q, 'status', status,
      'args', job[4], 'kwargs', job[5], 'priority', job[6], 'attempts', 0,
      'max_attempts', job[9], 'enqueued_at', job[11], 'cancel_requested', 0,
      'seq', seq, 'ev', 0)
    if key then redis.call('HSET', jk, 'key', key) end
    if unique then
      redis.call('HSET', jk, 'unique', unique)
      redis.call('HSET', qkey(q, 'unique'), unique, id)
    end
    if job[10] ~= '' then redis.call('HSET', jk, 'timeout', job[10]) end
    if due ~= '' then redis.call('HSET', jk, 'scheduled_for', due) end
    if job[13] ~= '' then redis.call('HSET', jk, 'retry', job[13]) end
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
    out[i] = status
  end
end
wake_all(now)
return out
