-- The SQLite backend's schema, applied on every open (idempotent) by schema.py, in two parts:
-- the tables, then (once columns added since are in place and older versions are migrated)
-- the indexes and triggers below the `-- indexes` line.
-- conveyor_jobs.blocked: 1 while an earlier unfinished job of the same lane exists.
-- conveyor_jobs.pos: enqueue order (a retry by hand goes to the back).
-- conveyor_jobs.due: 1 once a claim has found a scheduled job due and moved it into the claim
--   index (its status stays 'scheduled' until it is claimed); it stays 1 while that job runs
--   (claim counts it as leaving 'scheduled') and goes back to 0 whenever the job is put back as
--   queued or scheduled.
-- conveyor_counts: how many jobs each (queue, status) holds, kept by the triggers, for stats().
-- conveyor_jobs.meta: the job's metadata as a JSON object of strings; NULL when it has none.
CREATE TABLE IF NOT EXISTS conveyor_jobs (
    id TEXT PRIMARY KEY,
    pos INTEGER NOT NULL,
    task TEXT NOT NULL,
    queue TEXT NOT NULL,
    status TEXT NOT NULL,
    args TEXT NOT NULL,
    kwargs TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    key TEXT,
    unique_key TEXT,
    blocked INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 1,
    timeout REAL,
    enqueued_at REAL NOT NULL,
    scheduled_for REAL,
    run_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result TEXT,
    error TEXT,
    progress TEXT,
    retry TEXT,
    worker TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    lease_token TEXT,
    lease_expires_at REAL,
    last_event INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    due INTEGER NOT NULL DEFAULT 0,
    meta TEXT
);
CREATE TABLE IF NOT EXISTS conveyor_events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    at REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conveyor_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO conveyor_meta VALUES ('pos', 0);
CREATE TABLE IF NOT EXISTS conveyor_counts (
    queue TEXT NOT NULL,
    status TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (queue, status)
) WITHOUT ROWID;
-- indexes
-- what claim reads: claimable jobs only, best first (statements must repeat this WHERE as it is)
CREATE INDEX IF NOT EXISTS conveyor_jobs_ready
    ON conveyor_jobs (queue, priority DESC, pos)
    WHERE blocked = 0 AND (status = 'queued' OR (status = 'scheduled' AND due = 1));
-- scheduled lane heads not yet moved to the claim index, soonest first
CREATE INDEX IF NOT EXISTS conveyor_jobs_due
    ON conveyor_jobs (queue, run_at)
    WHERE status = 'scheduled' AND blocked = 0 AND due = 0;
CREATE INDEX IF NOT EXISTS conveyor_jobs_lane
    ON conveyor_jobs (queue, key, pos)
    WHERE key IS NOT NULL AND status IN ('queued', 'scheduled', 'running');
CREATE UNIQUE INDEX IF NOT EXISTS conveyor_jobs_unique
    ON conveyor_jobs (queue, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('queued', 'scheduled', 'running');
CREATE INDEX IF NOT EXISTS conveyor_jobs_running
    ON conveyor_jobs (lease_expires_at) WHERE status = 'running';
-- list_jobs, newest first: the ranges of the (queue, status) pairs asked for, merged. Running
-- jobs are left out (list_jobs reads them through conveyor_jobs_running: there are only as many
-- as workers' slots), so a job's entry is written when it is stored, moved once when it is
-- claimed and written again when it finishes, not moved at every step
CREATE INDEX IF NOT EXISTS conveyor_jobs_list
    ON conveyor_jobs (queue, status, pos) WHERE status != 'running';
CREATE INDEX IF NOT EXISTS conveyor_jobs_finished
    ON conveyor_jobs (finished_at) WHERE finished_at IS NOT NULL;
-- the counts: a job never changes queue. The two moves every job makes (claim: into running;
-- complete: into succeeded) are counted by those verbs, once per batch; the triggers count the rest
CREATE TRIGGER IF NOT EXISTS conveyor_count_insert AFTER INSERT ON conveyor_jobs BEGIN
    INSERT INTO conveyor_counts VALUES (NEW.queue, NEW.status, 1)
        ON CONFLICT (queue, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS conveyor_count_delete AFTER DELETE ON conveyor_jobs BEGIN
    UPDATE conveyor_counts SET n = n - 1 WHERE queue = OLD.queue AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS conveyor_count_update AFTER UPDATE OF status ON conveyor_jobs
    WHEN OLD.status IS NOT NEW.status AND NEW.status NOT IN ('running', 'succeeded') BEGIN
    UPDATE conveyor_counts SET n = n - 1 WHERE queue = OLD.queue AND status = OLD.status;
    INSERT INTO conveyor_counts VALUES (NEW.queue, NEW.status, 1)
        ON CONFLICT (queue, status) DO UPDATE SET n = n + 1;
END;
