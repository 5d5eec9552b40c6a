-- Mark attempts succeeded. ARGV[3] = a JSON array of [id, token, result JSON text] triples
-- (one argument: cheaper to send than three per ack).
-- Returns one 1/0 per ack: 0 when the token no longer holds the job's lease; then 1 if work
-- became claimable (a lane moved on), else 0.
local now = clock()
local out = {}
for i, ack in ipairs(cjson.decode(ARGV[3])) do
  local id = ack[1]
  local jk = jkey(id)
  local f = held(jk, ack[2])
  if f then
    finish(id, jk, f[3], 'running', 'succeeded', f[4], f[5], f[6], '', now,
           {'result', ack[3]}, {'error'}, f[7], f[8])
    out[i] = 1
  else
    out[i] = 0
  end
end
-- retention: as many expired jobs leave as jobs finish here, so the indexes stay bounded
-- however fast jobs go through (recover() prunes too, for queues that went quiet)
prune(now - RETENTION, #out + 8)
out[#out + 1] = settle(now) and 1 or 0
return out
