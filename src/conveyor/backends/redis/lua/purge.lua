-- Delete finished jobs that finished before ARGV[3] (a timestamp), at most ARGV[4] of them.
-- Returns how many were deleted.
local n = prune(tonumber(ARGV[3]), tonumber(ARGV[4]))
settle(nil)
return n
