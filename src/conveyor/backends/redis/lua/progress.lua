-- Record a progress report of a running attempt. ARGV[3] id, ARGV[4] token, ARGV[5] the
-- report as JSON {"fraction": f, "message": m}. Returns 1, or 0 when fenced out.
local now = clock()
local id = ARGV[3]
local jk = jkey(id)
if not held(jk, ARGV[4]) then return 0 end
redis.call('HSET', jk, 'progress', ARGV[5])
emit(id, jk, 'progress', ARGV[5], now)
return 1
