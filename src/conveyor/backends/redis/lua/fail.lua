-- End a failed attempt. ARGV[3] id, ARGV[4] token, ARGV[5] error JSON, ARGV[6] retry_at
-- timestamp or '' (none), ARGV[7] final status when there is no retry ('failed' or 'dead'),
-- ARGV[8] the client's clock when it sent this (see on_redis_clock).
-- Returns 1, or 0 when fenced out.
local now = clock()
local id, err = ARGV[3], ARGV[5]
local due = ARGV[6] ~= '' and on_redis_clock(tonumber(ARGV[6]), tonumber(ARGV[8]), now) or nil
local retry_at = ''
if due then retry_at = due == tonumber(ARGV[6]) and ARGV[6] or ts(due) end
local jk = jkey(id)
local f = held(jk, ARGV[4])
if not f then return 0 end
local q = f[3]
if retry_at == '' then
  finish(id, jk, q, 'running', ARGV[7], f[4], f[5], f[6], ',"error":' .. err, now, {'error', err},
         nil, f[7], f[8])
elseif redis.call('HGET', jk, 'cancel_requested') == '1' then
  -- a job asked to cancel while its attempt failed is not tried again
  finish(id, jk, q, 'running', 'cancelled', f[4], f[5], f[6], ',"error":' .. err, now,
         {'error', err}, nil, f[7], f[8])
else
  redis.call('HSET', jk, 'error', err)
  -- the job keeps its lane (it is still the head) and waits for its next attempt
  local status = due > now and 'scheduled' or 'queued'
  move(id, jk, q, 'running', status, f[8])
  redis.call('HSET', jk, 'scheduled_for', retry_at)
  redis.call('HDEL', jk, 'lease_token', 'lease_expires_at')
  running[id] = false
  status_event(id, jk, status, f[6], ',"error":' .. err, now)
  local g = redis.call('HMGET', jk, 'priority', 'seq')
  make_available(id, q, status, tonumber(g[1]), tonumber(g[2]),
                 status == 'scheduled' and retry_at or nil)
end
settle(now)
return 1
