-- Cancel a job. ARGV[3] id, ARGV[4] token or '' (none), ARGV[5] error JSON or ''.
-- Without a token: a waiting job ends cancelled; a running one gets cancel_requested, and its
-- worker is told on P:cancel. With the token: the worker confirms, the job ends cancelled.
-- Returns the record afterwards, or nil when there is no such job.
local now = clock()
local id, token, err = ARGV[3], ARGV[4], ARGV[5]
local jk = jkey(id)
local f = redis.call('HMGET', jk, 'status', 'lease_token', 'queue', 'key', 'unique', 'attempts',
                     'seq', 'cancel_requested')
if not f[1] then return nil end
local q = f[3]
if token ~= '' then
  if f[1] == 'running' and f[2] == token then
    finish(id, jk, q, 'running', 'cancelled', f[4], f[5], f[6], '', now,
           err ~= '' and {'error', err} or nil, nil, nil, f[7])
  end
elseif f[1] == 'queued' or f[1] == 'scheduled' then
  unindex(id, q, tonumber(f[7]))
  finish(id, jk, q, f[1], 'cancelled', f[4], f[5], f[6], '', now, nil, nil, nil, f[7])
elseif f[1] == 'running' and f[8] ~= '1' then
  redis.call('HSET', jk, 'cancel_requested', 1)
  redis.call('PUBLISH', P .. ':cancel', id)
end
settle(now)
return record(jk)
