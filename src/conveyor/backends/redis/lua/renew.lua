-- Extend held leases. ARGV[3] lease seconds, ARGV[4..] = (id, token) pairs.
-- Returns one value per lease: 0 lost, 1 held, 2 held and cancel requested.
local now = clock()
local lease = tonumber(ARGV[3])
local expires = ts(now + lease)
local out = {}
for b = 4, #ARGV, 2 do
  local id = ARGV[b]
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'status', 'lease_token', 'cancel_requested')
  if f[1] == 'running' and f[2] == ARGV[b + 1] then
    redis.call('HSET', jk, 'lease_expires_at', expires)
    redis.call('ZADD', P .. ':running', expires, id)
    out[#out + 1] = f[3] == '1' and 2 or 1
  else
    out[#out + 1] = 0
  end
end
return out
