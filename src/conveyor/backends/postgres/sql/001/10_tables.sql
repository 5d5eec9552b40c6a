-- Version 1 of conveyor's PostgreSQL schema: the tables and indexes.
-- @s@ is the schema (quoted), @wake@ and @cancel@ the NOTIFY channels (string literals).
--
-- jobs      every job, finished ones included (kept for `retention`, purged in small batches).
--           The claim path never reads finished rows: it reads `jobs_ready`, a partial index that
--           holds only claimable jobs (see docs/postgres.md, "Bloat and growth").
--   pos           enqueue order (a sequence); a retry by hand takes a new one (back of the queue)
--   blocked       true while an earlier unfinished job of the same lane exists
--   due           true once a claim found a scheduled job due and moved it into jobs_ready; it
--                 stays set while the job runs and goes back to false when the job waits again
--   run_at        when a scheduled job is due (the server's clock decides)
--   last_event    the seq of the job's latest event (events are numbered per job from 1)
--   lost          how often the job's lease expired (max_lost_leases)
-- events    status and progress events, numbered per job
-- lanes     one row per (queue, key) ever used: every verb that adds a job to a lane or takes
--           one out of it locks (and writes) the lane's row first, so lane decisions are
--           serialized by the database, also under REPEATABLE READ (a conflicting writer
--           gets a serialization failure instead of a wrong decision)
-- counts    deltas of how many jobs each (queue, status) holds: inserted only (no row is ever
--           contended), summed by stats(), folded together by recover()

CREATE SEQUENCE @s@.job_pos AS bigint;

CREATE TABLE @s@.jobs (
    id text COLLATE "C" PRIMARY KEY,
    pos bigint NOT NULL,
    task text COLLATE "C" NOT NULL,
    queue text COLLATE "C" NOT NULL,
    status text COLLATE "C" NOT NULL CHECK (status IN
        ('queued', 'scheduled', 'running', 'succeeded', 'failed', 'cancelled', 'dead')),
    args text NOT NULL,
    kwargs text NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    key text COLLATE "C",
    unique_key text COLLATE "C",
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 1,
    timeout double precision,
    enqueued_at timestamptz NOT NULL,
    scheduled_for timestamptz,
    started_at timestamptz,
    finished_at timestamptz,
    result text,
    error text,
    progress text,
    retry text,
    meta text,
    worker text,
    cancel_requested boolean NOT NULL DEFAULT false,
    lease_token text COLLATE "C",
    lease_expires_at timestamptz,
    blocked boolean NOT NULL DEFAULT false,
    due boolean NOT NULL DEFAULT false,
    run_at timestamptz NOT NULL,
    last_event integer NOT NULL DEFAULT 0,
    lost integer NOT NULL DEFAULT 0
) WITH (fillfactor = 85);  -- room on each page for HOT updates (renew, progress)

-- what claim reads: claimable jobs only, best first (statements repeat this WHERE as it is)
CREATE INDEX jobs_ready ON @s@.jobs (queue, priority DESC, pos)
    WHERE NOT blocked AND (status = 'queued' OR (status = 'scheduled' AND due));
-- scheduled lane heads not yet moved into jobs_ready, soonest first
CREATE INDEX jobs_due ON @s@.jobs (queue, run_at)
    WHERE status = 'scheduled' AND NOT blocked AND NOT due;
CREATE INDEX jobs_lane ON @s@.jobs (queue, key, pos)
    WHERE key IS NOT NULL AND status IN ('queued', 'scheduled', 'running');
CREATE UNIQUE INDEX jobs_unique ON @s@.jobs (queue, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('queued', 'scheduled', 'running');
-- running jobs (recover, list): keyed on columns renew never changes, so renewing a lease is
-- a HOT update that writes no index
CREATE INDEX jobs_running ON @s@.jobs (queue, pos) WHERE status = 'running';
-- list_jobs, newest first, per (queue, status); running jobs come from jobs_running
CREATE INDEX jobs_list ON @s@.jobs (queue, status, pos) WHERE status <> 'running';
-- purge, oldest finished first
CREATE INDEX jobs_finished ON @s@.jobs (finished_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled', 'dead');

CREATE TABLE @s@.events (
    job_id text COLLATE "C" NOT NULL,
    seq integer NOT NULL,
    type text NOT NULL,
    at timestamptz NOT NULL,
    data text NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE @s@.lanes (
    queue text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    touched_at timestamptz NOT NULL,
    PRIMARY KEY (queue, key)
);

CREATE TABLE @s@.counts (
    queue text COLLATE "C" NOT NULL,
    status text COLLATE "C" NOT NULL,
    n bigint NOT NULL
);
