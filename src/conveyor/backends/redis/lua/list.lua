-- Jobs, newest first. ARGV[3] queue or '' (every queue), ARGV[4] status or '', ARGV[5] task
-- or '', ARGV[6] limit, ARGV[7] offset, ARGV[8] most index entries to look at per queue (bounds
-- the work). Returns the matching records.
local queues = {}
if ARGV[3] ~= '' then queues = {ARGV[3]} else queues = redis.call('SMEMBERS', P .. ':queues') end
local status, task = ARGV[4], ARGV[5]
local limit, skip, budget = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local want = limit + skip

-- each queue's newest `want` matches, then merged by seq: the newest `want` overall are among them
local found = {}
for _, q in ipairs(queues) do
  local index = qkey(q, 'all')
  local got, pos, chunk = 0, 0, 256
  while got < want and pos < budget do
    local ids = redis.call('ZREVRANGE', index, pos, pos + chunk - 1, 'WITHSCORES')
    if #ids == 0 then break end
    pos = pos + #ids / 2
    for i = 1, #ids, 2 do
      local f = redis.call('HMGET', jkey(ids[i]), 'status', 'task')
      -- f[1] is false when the job expired but its index entry was not pruned yet
      if f[1] and (status == '' or f[1] == status) and (task == '' or f[2] == task) then
        found[#found + 1] = {tonumber(ids[i + 1]), ids[i]}
        got = got + 1
        if got >= want then break end
      end
    end
  end
end
table.sort(found, function(a, b) return a[1] > b[1] end)
local out = {}
for i = skip + 1, math.min(want, #found) do out[#out + 1] = record(jkey(found[i][2])) end
return out
