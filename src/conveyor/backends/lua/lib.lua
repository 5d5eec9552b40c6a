-- Shared by every conveyor script: it is prepended to each one before loading.
--
-- Calling convention: ARGV[1] is the key prefix (the namespace), ARGV[2] the retention of
-- finished jobs in seconds; a script's own arguments start at ARGV[3].
--
-- Layout (P = prefix, Q = queue name):
--   P:job:<id>          hash: the record's fields (absent field = null), `seq` (claim order),
--                       `ev` (events so far) and the events themselves as `e1`, `e2`, ...
--   P:q:Q:ready         zset of claimable lane heads: score -priority, member <seq %016d><id>,
--                       so equal priorities fall back to the member's order, i.e. enqueue order
--   P:q:Q:scheduled     zset of lane heads waiting for a time: score = due timestamp
--   P:q:Q:unique        hash unique value -> id of the active job holding it
--   P:q:Q:all           zset of every stored job of the queue by seq (for listing)
--   P:q:Q:counts        hash status -> number of jobs
--   P:lane:<#Q>:Q:<key> list of the unfinished jobs of a lane, in enqueue order; head runs
--   P:running           zset of running jobs by lease expiry (Redis clock)
--   P:done              zset of finished jobs by finish time, member "<id>\n<status>\n<Q>"
--   P:all, P:seq, P:queues   every job by seq; the sequence counter; the set of queue names
-- Channels: P:wake:Q (work may be due), P:cancel (a running job was asked to stop),
--           P:ev:<id> (the job has a new event).

local P = ARGV[1]
local RETENTION = tonumber(ARGV[2])

local FIELDS = {
  'id', 'task', 'queue', 'status', 'args', 'kwargs', 'priority', 'key', 'unique', 'attempts',
  'max_attempts', 'timeout', 'enqueued_at', 'scheduled_for', 'started_at', 'finished_at',
  'result', 'error', 'progress', 'retry', 'worker', 'cancel_requested', 'lease_token',
  'lease_expires_at',
}

local function clock()
  -- the one clock every worker agrees on: leases and due times are judged by it
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function ts(x)
  return string.format('%.6f', x)
end

local function jkey(id) return P .. ':job:' .. id end
local function qkey(q, what) return P .. ':q:' .. q .. ':' .. what end
-- the queue's length first: a queue name and a key may both contain ':'
local function lkey(q, key) return P .. ':lane:' .. #q .. ':' .. q .. ':' .. key end
local function member(seq, id) return string.format('%016d', seq) .. id end

local function record(jk)
  return redis.call('HMGET', jk, unpack(FIELDS))
end

local function count(q, status, delta)
  redis.call('HINCRBY', qkey(q, 'counts'), status, delta)
end

local function move(jk, q, from, to)
  redis.call('HSET', jk, 'status', to)
  count(q, from, -1)
  count(q, to, 1)
end

-- jobs created by this script: nobody can be listening to their events yet
local fresh = {}

-- events: stored in the job hash (they expire with it), announced on the job's channel
local function emit(id, jk, kind, data, at)
  local n = redis.call('HINCRBY', jk, 'ev', 1)
  redis.call('HSET', jk, 'e' .. n, '[' .. ts(at) .. ',"' .. kind .. '",' .. data .. ']')
  if not fresh[id] then redis.call('PUBLISH', P .. ':ev:' .. id, n) end
end

-- a status event; `extra` is '' or ',"name":<json>' pairs
local function status_event(id, jk, status, attempts, extra, at)
  emit(id, jk, 'status',
       '{"status":"' .. status .. '","attempt":' .. attempts .. extra .. '}', at)
end

-- queues that got claimable work in this script: see wake_all
local woken = {}
-- whether wake_all may hand jobs to idle workers: only enqueue does, where pickup latency
-- matters; jobs coming back (recover, release, retry) wait for a claim
local handing = false

-- index a waiting lane head so claim can find it (idempotent)
local function make_available(id, q, status, priority, seq, due)
  if status == 'scheduled' and due then
    redis.call('ZADD', qkey(q, 'scheduled'), due, id)
    woken[q] = 'scheduled'
  else
    redis.call('ZADD', qkey(q, 'ready'), -priority, member(seq, id))
    woken[q] = woken[q] or 'ready'
  end
end

local function make_available_by_id(id)
  local f = redis.call('HMGET', jkey(id), 'status', 'queue', 'priority', 'seq', 'scheduled_for')
  if f[1] == 'queued' or f[1] == 'scheduled' then
    make_available(id, f[2], f[1], tonumber(f[3]), tonumber(f[4]), f[5])
  end
end

local function unindex(id, q, seq)
  redis.call('ZREM', qkey(q, 'ready'), member(seq, id))
  redis.call('ZREM', qkey(q, 'scheduled'), id)
end

-- a job reached a final status: free its unique value and hand its lane on
local function leave(id, q, key, unique)
  if unique then
    local uk = qkey(q, 'unique')
    if redis.call('HGET', uk, unique) == id then
      redis.call('HDEL', uk, unique)
    end
  end
  if key then
    local lk = lkey(q, key)
    local head = redis.call('LINDEX', lk, 0)
    redis.call('LREM', lk, 1, id)
    if head == id then
      local nxt = redis.call('LINDEX', lk, 0)
      if nxt then make_available_by_id(nxt) end
    end
  end
end

-- end a job: final status, lease gone, retention clock started
local function finish(id, jk, q, from, to, key, unique, now)
  move(jk, q, from, to)
  redis.call('HSET', jk, 'finished_at', ts(now))
  redis.call('HDEL', jk, 'lease_token', 'lease_expires_at')
  redis.call('ZREM', P .. ':running', id)
  leave(id, q, key, unique)
  redis.call('ZADD', P .. ':done', ts(now), id .. '\n' .. to .. '\n' .. q)
  redis.call('EXPIRE', jk, RETENTION)
end

-- the fields a fenced transition needs: nil unless `token` holds the running job's lease
local function held(jk, token)
  local f = redis.call('HMGET', jk, 'status', 'lease_token', 'queue', 'key', 'unique', 'attempts')
  if f[1] ~= 'running' or f[2] ~= token then return nil end
  return f
end

-- back to queued without a verdict (release, expired lease): the job keeps its lane and place;
-- a job someone asked to cancel is not put back: its cancel completes instead
local function requeue(id, jk, q, reason, now)
  local f = redis.call('HMGET', jk, 'attempts', 'priority', 'seq', 'cancel_requested', 'key',
                       'unique')
  if f[4] == '1' then
    finish(id, jk, q, 'running', 'cancelled', f[5], f[6], now)
    status_event(id, jk, 'cancelled', f[1], ',"reason":"' .. reason .. '"', now)
    return
  end
  move(jk, q, 'running', 'queued')
  redis.call('HDEL', jk, 'lease_token', 'lease_expires_at', 'worker', 'scheduled_for')
  redis.call('ZREM', P .. ':running', id)
  status_event(id, jk, 'queued', f[1], ',"reason":"' .. reason .. '"', now)
  make_available(id, q, 'queued', tonumber(f[2]), tonumber(f[3]), nil)
end

-- delete up to `batch` jobs that finished before `cutoff`, with their index entries and counts
-- (the hash may already be gone by its TTL); returns how many
local function prune(cutoff, batch)
  local dk = P .. ':done'
  local old = redis.call('ZRANGEBYSCORE', dk, '-inf', '(' .. ts(cutoff), 'LIMIT', 0, batch)
  for _, m in ipairs(old) do
    local id, status, q = string.match(m, '^([^\n]*)\n([^\n]*)\n(.*)$')
    redis.call('DEL', jkey(id))
    redis.call('ZREM', P .. ':all', id)
    redis.call('ZREM', qkey(q, 'all'), id)
    count(q, status, -1)
  end
  if #old > 0 then redis.call('ZREM', dk, unpack(old)) end
  return #old
end

-- claim the job of ready-set member `m` of zset `rk` for `worker`; its record, or nil when the
-- entry was stale (the index only holds waiting lane heads; anything else is dropped)
local function take(rk, m, worker, token, lease_until, now)
  redis.call('ZREM', rk, m)
  local id = string.sub(m, 17)
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'status', 'queue')
  if f[1] ~= 'queued' and f[1] ~= 'scheduled' then return nil end
  move(jk, f[2], f[1], 'running')
  local attempts = redis.call('HINCRBY', jk, 'attempts', 1)
  redis.call('HSET', jk, 'started_at', ts(now), 'worker', worker, 'cancel_requested', 0,
    'lease_token', token, 'lease_expires_at', ts(lease_until))
  redis.call('HDEL', jk, 'finished_at')
  redis.call('ZADD', P .. ':running', ts(lease_until), id)
  status_event(id, jk, 'running', attempts, ',"worker":' .. cjson.encode(worker), now)
  return record(jk)
end

-- Hand the best ready jobs of queue q straight to idle workers (registered by claim.lua when
-- they ran dry): the job is claimed for the worker here and its record published on the
-- worker's channel, which saves the worker a claim round trip. A registration lapses after a
-- short time, so a worker that died idle cannot hold on to new jobs for long.
local function hand_out(q, now)
  local ik = qkey(q, 'idle')
  local rk = qkey(q, 'ready')
  while true do
    local worker = redis.call('SRANDMEMBER', ik)
    if not worker then return end
    local wk = P .. ':idle:' .. worker
    local w = redis.call('HMGET', wk, 'free', 'until', 'lease', 'token')
    if not w[1] or tonumber(w[1]) <= 0 or tonumber(w[2]) < now then
      redis.call('SREM', ik, worker)
    else
      local best = redis.call('ZRANGE', rk, 0, 0)
      if #best == 0 then return end
      local n = redis.call('HINCRBY', wk, 'n', 1)
      local rec = take(rk, best[1], worker, w[4] .. 'h' .. n, now + tonumber(w[3]), now)
      if rec then
        redis.call('PUBLISH', P .. ':hand:' .. worker, cjson.encode(rec))
        if redis.call('HINCRBY', wk, 'free', -1) <= 0 then redis.call('SREM', ik, worker) end
      end
    end
  end
end

-- end of a script: hand new work to idle workers, and wake the others if any is left (or if
-- a scheduled job arrived: waiters recompute when to look next)
local function wake_all(now)
  for q, kind in pairs(woken) do
    if handing then hand_out(q, now) end
    if kind == 'scheduled' or redis.call('ZCARD', qkey(q, 'ready')) > 0 then
      redis.call('PUBLISH', P .. ':wake:' .. q, '')
    end
  end
end
