-- Lanes, and what every transition shares.
--
-- Lock order, kept by every function: lanes (sorted by queue, key) before job rows. A job's
-- queue and key never change, so reading them to know which lanes to lock needs no lock.

-- Lock the lanes of these (queue, key) pairs (NULL keys are skipped), sorted. The row is
-- written, not only locked: a REPEATABLE READ transaction that decided on an older view of the
-- lane then fails with a serialization error instead of storing a wrong `blocked`.
CREATE FUNCTION @s@.lock_lanes(p_queues text[], p_keys text[]) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    INSERT INTO @s@.lanes AS l (queue, key, touched_at)
    SELECT d.q, d.k, clock_timestamp()
    FROM (SELECT DISTINCT u.q, u.k FROM unnest(p_queues, p_keys) AS u(q, k)
          WHERE u.k IS NOT NULL) AS d
    ORDER BY d.q, d.k
    ON CONFLICT (queue, key) DO UPDATE SET touched_at = excluded.touched_at;
END
$$;

-- Lock the lanes of these jobs (those that have a key).
CREATE FUNCTION @s@.lock_lanes_of(p_ids text[]) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    INSERT INTO @s@.lanes AS l (queue, key, touched_at)
    SELECT d.queue, d.key, clock_timestamp()
    FROM (SELECT DISTINCT j.queue, j.key FROM @s@.jobs j
          WHERE j.id = ANY(p_ids) AND j.key IS NOT NULL) AS d
    ORDER BY d.queue, d.key
    ON CONFLICT (queue, key) DO UPDATE SET touched_at = excluded.touched_at;
END
$$;

-- Unblock the head (earliest unfinished job) of each lane; wake workers (a scheduled head too:
-- idle workers then look again when it is due).
-- The caller holds the lanes' locks and has already written the change that freed them.
CREATE FUNCTION @s@.handoff(p_queues text[], p_keys text[]) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_woken integer;
BEGIN
    WITH heads AS (
        SELECT (SELECT j.id FROM @s@.jobs j
                WHERE j.queue = l.q AND j.key = l.k
                  AND j.status IN ('queued', 'scheduled', 'running')
                ORDER BY j.pos LIMIT 1) AS id
        FROM (SELECT DISTINCT u.q, u.k FROM unnest(p_queues, p_keys) AS u(q, k)
              WHERE u.k IS NOT NULL) AS l
    ), freed AS (
        UPDATE @s@.jobs j SET blocked = false
        FROM heads WHERE j.id = heads.id AND j.blocked
        RETURNING j.queue, j.status
    )
    SELECT count(pg_notify(@wake@, f.queue)) INTO v_woken
    FROM (SELECT DISTINCT freed.queue FROM freed) AS f;
END
$$;

-- Status events for jobs whose last_event was just numbered: (id, seq, status, attempt).
-- `p_extra` is more JSON members as text, each after a comma (',"reason":"released"'), or ''.
-- Built as text, not jsonb: an error message may hold a NUL, which jsonb refuses.
CREATE FUNCTION @s@.status_events(
    p_ids text[], p_seqs integer[], p_statuses text[], p_attempts integer[], p_at timestamptz,
    p_extra text
) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    INSERT INTO @s@.events (job_id, seq, type, at, data)
    SELECT u.id, u.seq, 'status', p_at,
           '{"status":' || to_json(u.st)::text || ',"attempt":' || u.att || p_extra || '}'
    FROM unnest(p_ids, p_seqs, p_statuses, p_attempts) AS u(id, seq, st, att);
END
$$;

-- Count moves of jobs between statuses: -1 in `from` (NULL: a new job), +1 in `to`.
CREATE FUNCTION @s@.count_moves(p_queues text[], p_from text[], p_to text[]) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    INSERT INTO @s@.counts (queue, status, n)
    SELECT m.q, m.st, sum(m.n)
    FROM (SELECT u.q, u.f AS st, -1 AS n FROM unnest(p_queues, p_from, p_to) AS u(q, f, t)
          WHERE u.f IS NOT NULL AND u.f IS DISTINCT FROM u.t
          UNION ALL
          SELECT u.q, u.t, 1 FROM unnest(p_queues, p_from, p_to) AS u(q, f, t)
          WHERE u.t IS NOT NULL AND u.f IS DISTINCT FROM u.t) AS m
    GROUP BY m.q, m.st
    HAVING sum(m.n) <> 0;
END
$$;
