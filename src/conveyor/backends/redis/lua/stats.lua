-- How many jobs are in each status. ARGV[3] a queue name, or '' for every queue.
-- Returns a flat list status, count, status, count, ...
local queues = {}
if ARGV[3] ~= '' then queues = {ARGV[3]} else queues = redis.call('SMEMBERS', P .. ':queues') end
local totals = {}
for _, q in ipairs(queues) do
  local got = redis.call('HGETALL', qkey(q, 'counts'))
  for i = 1, #got, 2 do totals[got[i]] = (totals[got[i]] or 0) + tonumber(got[i + 1]) end
end
local out = {}
for status, n in pairs(totals) do
  out[#out + 1] = status
  out[#out + 1] = n
end
return out
