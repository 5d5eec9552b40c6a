-- Take up to `limit` due jobs, best first, each with a fresh lease.
-- ARGV[3] worker, ARGV[4] limit, ARGV[5] lease seconds, ARGV[6] token prefix (random per call),
-- ARGV[7] '1' if the worker listens on P:hand:<worker> (see hand_out in lib.lua),
-- ARGV[8] how many of the jobs handed to it since its last claim it received in order (the
-- first ones of P:handed:<worker>: not read again), ARGV[9..] queue names.
-- Returns {{next, now, registered}, handed, record, record, ...}: `next` is the number of seconds
-- (Redis clock) until the earliest scheduled job of these queues is due ('' if none, only
-- computed when the queues ran dry), `now` the Redis clock (the worker judges hand-outs' age by
-- it), `registered` '1' when the worker is now registered idle (hand-outs may come), else '0';
-- `handed` the records of jobs handed to this worker since its last claim and
-- still held by it (it may have missed their message); then the claimed records in order.
local now = clock()
local worker, limit, lease, prefix = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local handoff = ARGV[7] == '1'
local received = tonumber(ARGV[8])
local queues = {}
for i = 9, #ARGV do queues[#queues + 1] = ARGV[i] end
-- seconds an idle registration stays valid: the worker claims again within a second when idle
local IDLE_TTL = 2

-- hand-outs to workers that never confirmed them come back first, at their old place
take_back(now)

-- this claim supersedes the worker's last idle registration (it is renewed below if it runs dry)
local wk = P .. ':idle:' .. worker
redis.call('DEL', wk)

local handed = {}
local hk = P .. ':handed:' .. worker
for _, id in ipairs(redis.call('LRANGE', hk, received, -1)) do
  local rec = record(jkey(id))
  if rec[4] == 'running' and rec[21] == worker then
    handed[#handed + 1] = rec
    -- the worker is alive and has it now: confirmed
    redis.call('ZREM', P .. ':handing', id .. '\n' .. rec[23])
  end
end
redis.call('DEL', hk)
-- recovered hand-outs count against the worker's free slots
limit = math.max(0, limit - #handed)

-- due scheduled lane heads join the ready set, where priority decides
for _, q in ipairs(queues) do
  local sk = qkey(q, 'scheduled')
  local due = redis.call('ZRANGEBYSCORE', sk, '-inf', ts(now), 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    local f = redis.call('HMGET', jkey(id), 'priority', 'seq')
    -- a record that vanished (evicted, deleted by hand) leaves with its entry
    if f[2] then
      redis.call('ZADD', qkey(q, 'ready'), -(tonumber(f[1]) or 0), member(tonumber(f[2]), id))
    end
  end
  chunked('ZREM', sk, due)
end

-- candidates: the best `limit` of each queue, merged by (score, member), taken off the index
local picked = {}
if #queues == 1 then
  if limit > 0 then
    local got = redis.call('ZPOPMIN', qkey(queues[1], 'ready'), limit)
    for i = 1, #got, 2 do picked[#picked + 1] = got[i] end
  end
else
  local all = {}
  for _, q in ipairs(queues) do
    local rk = qkey(q, 'ready')
    local got = limit > 0 and redis.call('ZRANGE', rk, 0, limit - 1, 'WITHSCORES') or {}
    for i = 1, #got, 2 do all[#all + 1] = {rk, got[i], tonumber(got[i + 1])} end
  end
  table.sort(all, function(a, b)
    if a[3] ~= b[3] then return a[3] < b[3] end
    return a[2] < b[2]
  end)
  for i = 1, math.min(limit, #all) do
    redis.call('ZREM', all[i][1], all[i][2])
    picked[i] = all[i][2]
  end
end

local out = {{'', ts(now), '0'}, handed}
for i, m in ipairs(picked) do
  local rec = take(string.sub(m, 17), worker, prefix .. i, now + lease, now)
  if rec then out[#out + 1] = rec end
end

if #out - 2 < limit then
  local soonest = nil
  for _, q in ipairs(queues) do
    local first = redis.call('ZRANGE', qkey(q, 'scheduled'), 0, 0, 'WITHSCORES')
    if first[2] and (soonest == nil or tonumber(first[2]) < soonest) then
      soonest = tonumber(first[2])
    end
    if handoff then redis.call('SADD', qkey(q, 'idle'), worker) end
  end
  -- a pending hand-out may come back: look again when it would
  local hand = redis.call('ZRANGE', P .. ':handing', 0, 0, 'WITHSCORES')
  if hand[2] and (soonest == nil or tonumber(hand[2]) < soonest) then soonest = tonumber(hand[2]) end
  if soonest then out[1][1] = ts(math.max(0, soonest - now)) end
  if handoff then
    redis.call('HSET', wk, 'free', limit - (#out - 2), 'until', ts(now + IDLE_TTL),
               'lease', lease, 'token', prefix, 'n', 0)
    redis.call('EXPIRE', wk, IDLE_TTL + 1)
    out[1][3] = '1'
  end
end
settle(now)
return out
