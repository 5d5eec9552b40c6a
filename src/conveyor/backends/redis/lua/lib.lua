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
--   P:q:Q:in-<status>   zset of the queue's jobs in that status by seq (listing, newest first)
--                       (no ':' in what follows a queue name: names may hold ':')
--   P:q:Q:counts        hash status -> number of jobs
--   P:lane:<#Q>:Q:<key> list of the unfinished jobs of a lane, in enqueue order; head runs
--   P:running           zset of running jobs by lease expiry (Redis clock)
--   P:done              zset of finished jobs by finish time, member "<id>\n<status>\n<Q>"
--   P:seq, P:queues     the sequence counter; the set of queue names
--   P:q:Q:idle          set of workers registered idle on the queue (see hand_out)
--   P:idle:<worker>     hash: its free slots, registration expiry, lease, token prefix, count
--   P:handed:<worker>   list of job ids handed to it since its last claim (short TTL)
--   P:handing           zset of hand-outs not confirmed yet, member "<id>\n<token>", score the
--                       time by which the worker must confirm (see hand_out, take_back)
-- Channels: P:wake:Q (work may be due), P:cancel (a running job was asked to stop),
--           P:ev:<id> (the job has a new event), P:hand:<worker> (a job claimed for it).

local P = ARGV[1]
local RETENTION = tonumber(ARGV[2])

local FIELDS = {
  'id', 'task', 'queue', 'status', 'args', 'kwargs', 'priority', 'key', 'unique', 'attempts',
  'max_attempts', 'timeout', 'enqueued_at', 'scheduled_for', 'started_at', 'finished_at',
  'result', 'error', 'progress', 'retry', 'worker', 'cancel_requested', 'lease_token',
  'lease_expires_at', 'meta',
}

local function clock()
  -- the one clock every worker agrees on: leases and due times are judged by it
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- a timestamp as stored; most scripts format the same `now` many times, so the last is kept
local last_x, last_ts
local function ts(x)
  if x ~= last_x then
    last_x, last_ts = x, string.format('%.6f', x)
  end
  return last_ts
end

-- Run `cmd key <values>` over a long list of values in slices, and return the replies joined
-- (for commands that answer a list, like HMGET). A single unpack() fails past a few thousand
-- values (Lua's C stack, LUAI_MAXCSTACK): every list that grows with a batch goes through here.
-- CHUNK is even, so field/value or score/member pairs never straddle two slices.
local CHUNK = 1000
local function chunked(cmd, key, list)
  local out = {}
  for i = 1, #list, CHUNK do
    local got = redis.call(cmd, key, unpack(list, i, math.min(i + CHUNK - 1, #list)))
    if type(got) == 'table' then
      for _, v in ipairs(got) do out[#out + 1] = v end
    end
  end
  return out
end

-- A due time a client sent (`at`, by its clock, read at `client_now`) as a time of the Redis
-- clock: as sent when the two clocks agree within CLOCK_TRUST seconds (the round trip included),
-- so `at=` is kept exactly; otherwise moved by the difference, so a client whose clock is off
-- still gets the delay it asked for. Leases and due times are judged by the Redis clock alone.
-- conveyor's own client sends no reading (nil): it converts due times to the Redis clock itself,
-- with an offset it measures on a quiet round trip, so a wait behind a long script is no skew.
local CLOCK_TRUST = 0.5
local function on_redis_clock(at, client_now, now)
  if not client_now then return at end
  local skew = client_now - now
  if skew > CLOCK_TRUST or skew < -CLOCK_TRUST then return at - skew end
  return at
end

local function jkey(id) return P .. ':job:' .. id end
local function qkey(q, what) return P .. ':q:' .. q .. ':' .. what end
-- the queue's length first: a queue name and a key may both contain ':'
local function lkey(q, key) return P .. ':lane:' .. #q .. ':' .. q .. ':' .. key end
local function member(seq, id) return string.format('%016d', seq) .. id end

-- FIELDS, the event count and seq: what claiming a job reads
local FIELDS_EV = {unpack(FIELDS)}
FIELDS_EV[#FIELDS_EV + 1] = 'ev'
FIELDS_EV[#FIELDS_EV + 1] = 'seq'
local worker_json = {}

local function record(jk)
  return redis.call('HMGET', jk, unpack(FIELDS))
end

-- Writes many jobs share are gathered while a script runs and applied once by settle():
-- status counts, the running set (lease expiry) and the finished set.
local deltas = {}
-- `running`: id -> lease expiry (it entered the running set) or false (it left); the last
-- change of a job in a script wins (a claim may take back an unconfirmed hand-out and claim it
-- again in one script: applied as two lists in a fixed order, the job would end up outside)
local running, done_add = {}, {}

local function count(q, status, delta)
  local d = deltas[q]
  if not d then d = {}; deltas[q] = d end
  d[status] = (d[status] or 0) + delta
end

-- The listing indexes (P:q:Q:in-<status>) change with every status change: the changes are
-- gathered per index and job, the last one winning, and applied by settle() in one ZADD and one
-- ZREM per index however many jobs moved.
local relisted = {}
local function relist(id, q, from, to, seq)
  if from then
    local k = qkey(q, 'in-' .. from)
    relisted[k] = relisted[k] or {}
    relisted[k][id] = false
  end
  if to then
    local k = qkey(q, 'in-' .. to)
    relisted[k] = relisted[k] or {}
    relisted[k][id] = seq
  end
end

local function move(id, jk, q, from, to, seq)
  redis.call('HSET', jk, 'status', to)
  count(q, from, -1)
  count(q, to, 1)
  relist(id, q, from, to, seq)
end

-- jobs created by this script: nobody can be listening to their events yet
local fresh = {}

local function event_text(kind, data, at)
  return '[' .. ts(at) .. ',"' .. kind .. '",' .. data .. ']'
end

-- a status event's data; `extra` is '' or ',"name":<json>' pairs
local function status_data(status, attempts, extra)
  return '{"status":"' .. status .. '","attempt":' .. attempts .. extra .. '}'
end

local function announce(id, n)
  if not fresh[id] then redis.call('PUBLISH', P .. ':ev:' .. id, n) end
end

-- events: stored in the job hash (they expire with it), announced on the job's channel
local function emit(id, jk, kind, data, at)
  local n = redis.call('HINCRBY', jk, 'ev', 1)
  redis.call('HSET', jk, 'e' .. n, event_text(kind, data, at))
  announce(id, n)
end

local function status_event(id, jk, status, attempts, extra, at)
  emit(id, jk, 'status', status_data(status, attempts, extra), at)
end

-- queues that got claimable work in this script: see settle
local woken = {}
-- whether settle may hand jobs to idle workers: only enqueue does, where pickup latency
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

-- The first job of a lane whose record still exists. Records can vanish behind the scripts'
-- back (evicted under memory pressure, deleted by hand): such ids are dropped from the front
-- whenever the lane is touched (enqueue, a finishing job), so it moves on then; a claim that
-- meets such an id cannot (the lane key was in the lost record). Returns the head (or nil) and
-- whether any went.
local function lane_head(lk)
  local dropped = false
  while true do
    local head = redis.call('LINDEX', lk, 0)
    if not head or redis.call('EXISTS', jkey(head)) == 1 then return head, dropped end
    redis.call('LPOP', lk)
    dropped = true
  end
end

-- append the stored job `id` to its lane; true when it is the lane's head (it may run now)
local function join_lane(q, key, id)
  local lk = lkey(q, key)
  if redis.call('RPUSH', lk, id) == 1 then return true end
  -- the head may be a job whose record vanished: drop it and free whoever is next
  local first, dropped = lane_head(lk)
  if dropped and first ~= id then make_available_by_id(first) end
  return first == id
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
    local head = lane_head(lk)
    redis.call('LREM', lk, 1, id)
    if head == id then
      local nxt = lane_head(lk)
      if nxt then make_available_by_id(nxt) end
    end
  end
end

-- end a job: final status (and any `sets` field/value pairs) with its status event in one
-- HSET, lease gone (and any `dels` fields), unique and lane released, retention clock started;
-- `ev` is the job's event count and `seq` its sequence number when the caller has read them
local function finish(id, jk, q, from, to, key, unique, attempts, extra, now, sets, dels, ev, seq)
  local n = ev and tonumber(ev) + 1 or redis.call('HINCRBY', jk, 'ev', 1)
  local fields = {'status', to, 'finished_at', ts(now), 'ev', n,
                  'e' .. n, event_text('status', status_data(to, attempts, extra), now)}
  for _, v in ipairs(sets or {}) do fields[#fields + 1] = v end
  redis.call('HSET', jk, unpack(fields))
  if dels then
    redis.call('HDEL', jk, 'lease_token', 'lease_expires_at', unpack(dels))
  else
    redis.call('HDEL', jk, 'lease_token', 'lease_expires_at')
  end
  announce(id, n)
  count(q, from, -1)
  count(q, to, 1)
  relist(id, q, from, to, seq or redis.call('HGET', jk, 'seq'))
  running[id] = false
  leave(id, q, key, unique)
  done_add[#done_add + 1] = ts(now)
  done_add[#done_add + 1] = id .. '\n' .. to .. '\n' .. q
  redis.call('EXPIRE', jk, RETENTION)
end

-- the fields a fenced transition needs: nil unless `token` holds the running job's lease
local function held(jk, token)
  local f = redis.call('HMGET', jk, 'status', 'lease_token', 'queue', 'key', 'unique', 'attempts',
                       'ev', 'seq')
  if f[1] ~= 'running' or f[2] ~= token then return nil end
  return f
end

-- back to queued without a verdict (release, expired lease): the job keeps its lane and place;
-- a job someone asked to cancel is not put back: its cancel completes instead
local function requeue(id, jk, q, reason, now)
  local f = redis.call('HMGET', jk, 'attempts', 'priority', 'seq', 'cancel_requested', 'key',
                       'unique')
  if f[4] == '1' then
    finish(id, jk, q, 'running', 'cancelled', f[5], f[6], f[1], ',"reason":"' .. reason .. '"',
           now, nil, nil, nil, f[3])
    return
  end
  move(id, jk, q, 'running', 'queued', f[3])
  redis.call('HDEL', jk, 'lease_token', 'lease_expires_at', 'worker', 'scheduled_for')
  running[id] = false
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
    relist(id, q, status, nil)
    count(q, status, -1)
  end
  chunked('ZREM', dk, old)
  return #old
end

-- Claim the job `id` (just removed from its ready set) for `worker`; its record, or nil when
-- the entry was stale (the index only holds waiting lane heads; anything else is dropped).
-- One HMGET and one HSET carry the whole transition and its event: this runs once per job.
local function take(id, worker, token, lease_until, now)
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, unpack(FIELDS_EV))
  local status, q = f[4], f[3]
  if status ~= 'queued' and status ~= 'scheduled' then return nil end
  local n = (tonumber(f[26]) or 0) + 1
  relist(id, q, status, 'running', f[27])
  f[26], f[27] = nil, nil
  local attempts = (tonumber(f[10]) or 0) + 1
  local expires = ts(lease_until)
  local at = ts(now)
  worker_json[worker] = worker_json[worker] or cjson.encode(worker)
  redis.call('HSET', jk, 'status', 'running', 'attempts', attempts, 'started_at', at,
    'worker', worker, 'cancel_requested', 0, 'lease_token', token, 'lease_expires_at', expires,
    'ev', n, 'e' .. n, event_text('status', status_data('running', attempts,
                                                        ',"worker":' .. worker_json[worker]), now))
  if f[16] then redis.call('HDEL', jk, 'finished_at') end
  announce(id, n)
  count(q, status, -1)
  count(q, 'running', 1)
  running[id] = expires
  -- the record as it is now, without reading it again
  f[4], f[10], f[15], f[16], f[21], f[22], f[23], f[24] =
    'running', tostring(attempts), at, false, worker, '0', token, expires
  return f
end

-- seconds a worker has to confirm a hand-out before the job goes back to its queue
local HAND_CONFIRM = 1

-- Hand the best ready jobs of queue q straight to idle workers (registered by claim.lua when
-- they ran dry): the job is claimed for the worker here and its record published on the
-- worker's channel, which saves the worker a claim round trip. A worker may have died since it
-- registered (a registration lives two seconds): the hand-out stays in P:handing until the
-- worker confirms it (a batched ZREM right behind the job's start, its ack, or its next claim),
-- and take_back
-- returns it to its queue after HAND_CONFIRM seconds without a word. True when ready jobs
-- are left (no idle worker had a free slot for them).
local function hand_out(q, now)
  local ik = qkey(q, 'idle')
  local rk = qkey(q, 'ready')
  while redis.call('ZCARD', rk) > 0 do
    local worker = redis.call('SRANDMEMBER', ik)
    if not worker then return true end
    local wk = P .. ':idle:' .. worker
    local w = redis.call('HMGET', wk, 'free', 'until', 'lease', 'token', 'n')
    local free = tonumber(w[1] or '0')
    if free <= 0 or tonumber(w[2]) < now then
      redis.call('SREM', ik, worker)
    else
      local best = redis.call('ZPOPMIN', rk)
      -- hand-outs are numbered 1, 2, ... with no gap (the worker counts those it got in order)
      local n = tonumber(w[5]) + 1
      local rec = take(string.sub(best[1], 17), worker, w[4] .. 'h' .. n,
                       now + tonumber(w[3]), now)
      if not rec then n = n - 1 end
      if rec then
        redis.call('PUBLISH', P .. ':hand:' .. worker, cjson.encode(rec))
        -- pub/sub may drop a message (a connection going down): the worker's next claim also
        -- returns what was handed to it since, and it keeps whichever copy arrives first
        local hk = P .. ':handed:' .. worker
        redis.call('RPUSH', hk, rec[1])
        redis.call('EXPIRE', hk, 60)
        redis.call('ZADD', P .. ':handing', now + HAND_CONFIRM, rec[1] .. '\n' .. rec[23])
        free = free - 1
        if free <= 0 then redis.call('SREM', ik, worker) end
      end
      redis.call('HSET', wk, 'free', free, 'n', n)
    end
  end
  return false
end

-- Hand-outs nobody confirmed in time go back to their queue, at their old place (priority,
-- then enqueue order), as if never handed: the attempt is not counted and no lease is counted
-- lost (the job did nothing wrong). The worker they went to is most likely dead: its idle
-- registration goes too, so nothing more is handed to it.
local function take_back(now)
  local hk = P .. ':handing'
  local late = redis.call('ZRANGEBYSCORE', hk, '-inf', '(' .. ts(now), 'LIMIT', 0, 1000)
  for _, m in ipairs(late) do
    local id, token = string.match(m, '^([^\n]*)\n(.*)$')
    local jk = jkey(id)
    local f = redis.call('HMGET', jk, 'status', 'lease_token', 'queue', 'worker')
    if f[1] == 'running' and f[2] == token then
      redis.call('DEL', P .. ':idle:' .. f[4])
      redis.call('SREM', qkey(f[3], 'idle'), f[4])
      requeue(id, jk, f[3], 'hand-off unconfirmed', now)
      redis.call('HINCRBY', jk, 'attempts', -1)
    end
  end
  chunked('ZREM', hk, late)
end

-- a sorted set's gathered changes, id -> score (it is in the set) or false (it left), applied
-- as one ZADD and one ZREM (chunked)
local function apply_changes(key, changes)
  local add, del = {}, {}
  for id, score in pairs(changes) do
    if score then
      add[#add + 1] = score
      add[#add + 1] = id
    else
      del[#del + 1] = id
    end
  end
  chunked('ZADD', key, add)
  chunked('ZREM', key, del)
end

-- End of every writing script: hand new work to idle workers, wake the others if any is left
-- (or if a scheduled job arrived: waiters recompute when to look next), then apply the
-- gathered writes. True when it published a wake-up.
local function settle(now)
  local woke = false
  for q, kind in pairs(woken) do
    local left
    if handing then
      left = hand_out(q, now)
    else
      left = redis.call('ZCARD', qkey(q, 'ready')) > 0
    end
    if kind == 'scheduled' or left then
      redis.call('PUBLISH', P .. ':wake:' .. q, '')
      woke = true
    end
  end
  for q, d in pairs(deltas) do
    local ck = qkey(q, 'counts')
    for status, delta in pairs(d) do
      if delta ~= 0 then redis.call('HINCRBY', ck, status, delta) end
    end
  end
  for k, ops in pairs(relisted) do apply_changes(k, ops) end
  apply_changes(P .. ':running', running)
  chunked('ZADD', P .. ':done', done_add)
  return woke
end
