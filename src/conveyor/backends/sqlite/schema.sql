-- The SQLite backend's schema, applied on every open (idempotent). Statements end with ';'.
-- conveyor_jobs.blocked: 1 while an earlier unfinished job of the same lane exists.
-- conveyor_jobs.pos: enqueue order (a retry by hand goes to the back).
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
    lost INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS conveyor_jobs_claim
    ON conveyor_jobs (queue, priority DESC, pos)
    WHERE status IN ('queued', 'scheduled') AND blocked = 0;
CREATE INDEX IF NOT EXISTS conveyor_jobs_lane
    ON conveyor_jobs (queue, key, pos)
    WHERE key IS NOT NULL AND status IN ('queued', 'scheduled', 'running');
CREATE UNIQUE INDEX IF NOT EXISTS conveyor_jobs_unique
    ON conveyor_jobs (queue, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('queued', 'scheduled', 'running');
CREATE INDEX IF NOT EXISTS conveyor_jobs_running
    ON conveyor_jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS conveyor_jobs_pos ON conveyor_jobs (pos);
CREATE INDEX IF NOT EXISTS conveyor_jobs_finished
    ON conveyor_jobs (finished_at) WHERE finished_at IS NOT NULL;
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
