-- Upgrade a store written before the listing indexes: move up to ARGV[3] entries of each
-- queue's old P:q:Q:all (every job by seq) into P:q:Q:in-<status>. Idempotent, and safe beside
-- running workers (a job that moves meanwhile is relisted by the script that moves it, and the
-- last write wins here too: only entries still in the old index are read, at their present
-- status). Returns how many entries are left in old indexes.
local batch = tonumber(ARGV[3])
local left = 0
for _, q in ipairs(redis.call('SMEMBERS', P .. ':queues')) do
  local old = qkey(q, 'all')
  local got = redis.call('ZRANGE', old, 0, batch - 1, 'WITHSCORES')
  local gone = {}
  for i = 1, #got, 2 do
    local id, seq = got[i], got[i + 1]
    local status = redis.call('HGET', jkey(id), 'status')
    if status then relist(id, q, nil, status, seq) end
    gone[#gone + 1] = id
  end
  chunked('ZREM', old, gone)
  left = left + redis.call('ZCARD', old)
end
settle(nil)
return left
