-- Jobs, newest first. ARGV[3] queue or '', ARGV[4] status or '', ARGV[5] task or '',
-- ARGV[6] limit, ARGV[7] offset, ARGV[8] most index entries to look at (bounds the work).
-- Returns the matching records.
local index = ARGV[3] ~= '' and qkey(ARGV[3], 'all') or P .. ':all'
local status, task = ARGV[4], ARGV[5]
local limit, skip, budget = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local out = {}
local pos = 0
local chunk = 256
while #out < limit and pos < budget do
  local ids = redis.call('ZREVRANGE', index, pos, pos + chunk - 1)
  if #ids == 0 then break end
  pos = pos + #ids
  for _, id in ipairs(ids) do
    local jk = jkey(id)
    local f = redis.call('HMGET', jk, 'status', 'task')
    -- f[1] is false when the job expired but its index entry was not pruned yet
    if f[1] and (status == '' or f[1] == status) and (task == '' or f[2] == task) then
      if skip > 0 then
        skip = skip - 1
      elseif #out < limit then
        out[#out + 1] = record(jk)
      end
    end
  end
end
return out
