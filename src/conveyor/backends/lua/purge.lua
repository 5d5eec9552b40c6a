-- Delete finished jobs that finished before ARGV[3] (a timestamp), at most ARGV[4] of them.
-- Returns how many were deleted.
return prune(tonumber(ARGV[3]), tonumber(ARGV[4]))
