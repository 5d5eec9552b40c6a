-- Put running jobs back as queued without counting the attempt (graceful shutdown).
-- ARGV[3..] = (id, token) pairs. Returns one 1/0 per lease.
local now = clock()
local out = {}
for b = 3, #ARGV, 2 do
  local id = ARGV[b]
  local jk = jkey(id)
  local f = held(jk, ARGV[b + 1])
  if f then
    requeue(id, jk, f[3], 'released', now)
    redis.call('HINCRBY', jk, 'attempts', -1)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
settle(now)
return out
