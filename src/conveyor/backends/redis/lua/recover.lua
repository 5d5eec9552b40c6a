-- Put running jobs whose lease expired (by the Redis clock) back as queued, and delete
-- finished jobs older than the retention. ARGV[3] most jobs to handle of each kind; ARGV[4]
-- how many expired leases make a job dead (0: no limit), ARGV[5] the error stored then (JSON).
-- Returns the ids handled.
local now = clock()
local batch = tonumber(ARGV[3])
local max_lost, lost_error = tonumber(ARGV[4]), ARGV[5]
local expired = redis.call('ZRANGEBYSCORE', P .. ':running', '-inf', '(' .. ts(now), 'LIMIT', 0,
                          batch)
local lost = {}
for _, id in ipairs(expired) do
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'status', 'queue')
  if f[1] == 'running' then
    local times = redis.call('HINCRBY', jk, 'lost', 1)
    local g = redis.call('HMGET', jk, 'cancel_requested', 'key', 'unique', 'attempts')
    if max_lost > 0 and times >= max_lost and g[1] ~= '1' then
      -- its workers died under it too often: dead, so it cannot take down more of them
      finish(id, jk, f[2], 'running', 'dead', g[2], g[3], g[4],
             ',"error":' .. lost_error .. ',"reason":"lease expired"', now, {'error', lost_error})
    else
      requeue(id, jk, f[2], 'lease expired', now)
    end
    lost[#lost + 1] = id
  else
    running[id] = false
  end
end
take_back(now)
-- retention: a finished job's hash expires by itself; its index entries and count go here
prune(now - RETENTION, batch)
settle(now)
return lost
