-- Mark attempts succeeded. ARGV[3..] = (id, token, result JSON) triples.
-- Returns one 1/0 per ack: 0 when the token no longer holds the job's lease.
local now = clock()
local out = {}
for b = 3, #ARGV, 3 do
  local id = ARGV[b]
  local jk = jkey(id)
  local f = held(jk, ARGV[b + 1])
  if f then
    redis.call('HSET', jk, 'result', ARGV[b + 2])
    redis.call('HDEL', jk, 'error')
    finish(id, jk, f[3], 'running', 'succeeded', f[4], f[5], now)
    status_event(id, jk, 'succeeded', f[6], '', now)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
wake_all(now)
return out
