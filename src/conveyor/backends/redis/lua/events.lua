-- A job's events after ARGV[4] (a seq), oldest first. ARGV[3] id.
-- Returns the stored events, each '[at, "type", data]' JSON, numbered from ARGV[4] + 1.
local jk = jkey(ARGV[3])
local after = tonumber(ARGV[4])
local n = tonumber(redis.call('HGET', jk, 'ev') or '0')
if n <= after then return {} end
local names = {}
for i = after + 1, n do names[#names + 1] = 'e' .. i end
return chunked('HMGET', jk, names)
