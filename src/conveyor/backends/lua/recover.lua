-- Put running jobs whose lease expired (by the Redis clock) back as queued, and delete
-- finished jobs older than the retention. ARGV[3] most jobs to handle of each kind.
-- Returns the ids put back.
local now = clock()
local batch = tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', P .. ':running', '-inf', '(' .. ts(now), 'LIMIT', 0,
                          batch)
local lost = {}
for _, id in ipairs(expired) do
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'status', 'queue')
  if f[1] == 'running' then
    requeue(id, jk, f[2], 'lease expired', now)
    lost[#lost + 1] = id
  else
    running_del[#running_del + 1] = id
  end
end
-- retention: a finished job's hash expires by itself; its index entries and count go here
prune(now - RETENTION, batch)
settle(now)
return lost
