-- Store new jobs, in order. ARGV[4] the client's clock when it sent them (see on_redis_clock).
-- ARGV[3] = a JSON array with one array per job:
-- [id, task, queue, args, kwargs, priority, key, unique, max_attempts, timeout, enqueued_at,
--  scheduled_for, retry, supersede, meta]: args, kwargs, retry and meta are JSON text (stored as
--  they are; meta '' when the job has none),
-- key and unique are null when absent, timeout, scheduled_for and retry '' when absent,
-- supersede a boolean; numbers are strings, so nothing is rounded on the way.
-- Returns per job: its status (stored now, followed by ' <due time>' when it has one), or the
-- record of the job it already is (same id, e.g. a retried call) or that holds its unique value.
local now = clock()
local client_now = tonumber(ARGV[4])
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
    -- a holder whose record vanished holds nothing: the new job takes the value over below
    if holder and redis.call('EXISTS', jkey(holder)) == 1 then existing = jkey(holder) end
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
          finish(old, ok, q, f[1], 'cancelled', key, f[4], f[2], ',"reason":"superseded"', now,
                 nil, nil, nil, f[3])
        end
      end
    end
    fresh[id] = true
    local seq = redis.call('INCR', P .. ':seq')
    local due = ''
    local status = 'queued'
    if job[12] ~= '' then
      local at = on_redis_clock(tonumber(job[12]), client_now, now)
      due = at == tonumber(job[12]) and job[12] or ts(at)
      if at > now then status = 'scheduled' end
    end
    local priority = tonumber(job[6])
    -- the record and its first event in one HSET: this runs once per job enqueued
    local fields = {'id', id, 'task', job[2], 'queue', q, 'status', status, 'args', job[4],
      'kwargs', job[5], 'priority', job[6], 'attempts', 0, 'max_attempts', job[9],
      'enqueued_at', job[11], 'cancel_requested', 0, 'seq', seq, 'ev', 1,
      'e1', '[' .. ts(now) .. ',"status",{"status":"' .. status .. '","attempt":0}]'}
    if key then fields[#fields + 1] = 'key'; fields[#fields + 1] = key end
    if unique then
      fields[#fields + 1] = 'unique'; fields[#fields + 1] = unique
      redis.call('HSET', qkey(q, 'unique'), unique, id)
    end
    if job[10] ~= '' then fields[#fields + 1] = 'timeout'; fields[#fields + 1] = job[10] end
    if due ~= '' then fields[#fields + 1] = 'scheduled_for'; fields[#fields + 1] = due end
    if job[13] ~= '' then fields[#fields + 1] = 'retry'; fields[#fields + 1] = job[13] end
    if job[15] and job[15] ~= '' then fields[#fields + 1] = 'meta'; fields[#fields + 1] = job[15] end
    redis.call('HSET', jk, unpack(fields))
    relist(id, q, nil, status, seq)
    redis.call('SADD', P .. ':queues', q)
    count(q, status, 1)
    if not key or join_lane(q, key, id) then
      make_available(id, q, status, priority, seq, status == 'scheduled' and due or nil)
    end
    out[i] = due == '' and status or status .. ' ' .. due
  end
end
settle(now)
return out
