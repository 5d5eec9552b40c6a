-- Jobs, newest first. ARGV[3] queue or '' (every queue), ARGV[4] status or '' (every status),
-- ARGV[5] task or '', ARGV[6] limit, ARGV[7] offset, ARGV[8] most index entries to look at in
-- all (bounds the time the script holds the server). Returns the matching records.
--
-- Each (queue, status) has its own index by seq (P:q:Q:in-<status>), so a page costs about
-- `offset + limit` entries per index read, whatever the number of stored jobs. Only a task
-- filter reads the records it passes over (up to the budget, across every index).
local STATUSES = {'queued', 'scheduled', 'running', 'succeeded', 'failed', 'cancelled', 'dead'}
local queues = {}
if ARGV[3] ~= '' then queues = {ARGV[3]} else queues = redis.call('SMEMBERS', P .. ':queues') end
local statuses = ARGV[4] ~= '' and {ARGV[4]} or STATUSES
local task = ARGV[5]
local limit, skip, budget = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])

local indexes = {}
for _, q in ipairs(queues) do
  for _, s in ipairs(statuses) do indexes[#indexes + 1] = qkey(q, 'in-' .. s) end
end
-- one index: the page starts at `skip` in it; several: each one's first `skip + limit` matches
-- are merged by seq, and the newest `skip + limit` overall are among them
local start, want = 0, skip + limit
if #indexes == 1 and task == '' then start, want, skip = skip, limit, 0 end

local found = {}
if task == '' and #indexes > 1 then
  -- no record to look into: each index's newest `want` (and a few spare, for entries whose
  -- record is gone) merged by seq, then checked from the newest until `want` are live
  local all = {}
  for _, index in ipairs(indexes) do
    local ids = redis.call('ZREVRANGE', index, 0, want + 15, 'WITHSCORES')
    for i = 1, #ids, 2 do all[#all + 1] = {tonumber(ids[i + 1]), ids[i]} end
  end
  table.sort(all, function(a, b) return a[1] > b[1] end)
  for _, e in ipairs(all) do
    local jk = jkey(e[2])
    -- an entry outlives its record for a moment (retention TTL before the prune; evicted)
    if redis.call('EXISTS', jk) == 1 then
      found[#found + 1] = {e[1], jk}
      if #found >= want then break end
    end
  end
else
  local spent = 0
  for _, index in ipairs(indexes) do
    local got, pos, chunk = 0, start, math.min(math.max(want, 16), 256)
    while got < want and spent < budget do
      local ids = redis.call('ZREVRANGE', index, pos, pos + chunk - 1, 'WITHSCORES')
      if #ids == 0 then break end
      pos = pos + #ids / 2
      spent = spent + #ids / 2
      for i = 1, #ids, 2 do
        local jk = jkey(ids[i])
        local ok
        if task == '' then
          ok = redis.call('EXISTS', jk) == 1
        else
          ok = redis.call('HGET', jk, 'task') == task
        end
        if ok then
          found[#found + 1] = {tonumber(ids[i + 1]), jk}
          got = got + 1
          if got >= want then break end
        end
      end
    end
  end
  if #indexes > 1 then table.sort(found, function(a, b) return a[1] > b[1] end) end
end
local out = {}
for i = skip + 1, math.min(want, #found) do out[#out + 1] = record(found[i][2]) end
return out
