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

-- events: stored in the job hash (they expire with it), announced on the job's channel
local function emit(id, jk, kind, data, at)
  local n = redis.call('HINCRBY', jk, 'ev', 1)
  redis.call('HSET', jk, 'e' .. n, '[' .. ts(at) .. ',"' .. kind .. '",' .. data .. ']')
  redis.call('PUBLISH', P .. ':ev:' .. id, n)
end

-- a status event; `extra` is '' or ',"name":<json>' pairs
local function status_event(id, jk, status, attempts, extra, at)
  emit(id, jk, 'status',
       '{"status":"' .. status .. '","attempt":' .. attempts .. extra .. '}', at)
end

local woken = {}
local function wake_all()
  for q in pairs(woken) do
    redis.call('PUBLISH', P .. ':wake:' .. q, '')
  end
end

-- index a waiting lane head so claim can find it (idempotent)
local function make_available(id, q, status, priority, seq, due)
  if status == 'scheduled' and due then
    redis.call('ZADD', qkey(q, 'scheduled'), due, id)
  else
    redis.call('ZADD', qkey(q, 'ready'), -priority, member(seq, id))
  end
  woken[q] = true
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
