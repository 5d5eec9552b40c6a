-- Every transition of a stored job after enqueue and claim. Each is fenced by the lease token
-- where a worker names its attempt, and writes the job's status event and the count deltas in
-- the same transaction. Terminal jobs with a key hand their lane on (handoff).

-- Acknowledge successful attempts: one call for a batch. Returns the places (1-based) of the
-- acks that were taken; an ack whose token is not the job's current one changes nothing.
CREATE FUNCTION @s@.complete(p_ids text[], p_tokens text[], p_results text[])
RETURNS SETOF integer
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    a_ord integer[];
    a_queue text[];
    a_key text[];
BEGIN
    PERFORM @s@.lock_lanes_of(p_ids);
    WITH a AS (
        SELECT DISTINCT ON (u.id, u.token) u.id, u.token, u.result, u.i
        FROM unnest(p_ids, p_tokens, p_results) WITH ORDINALITY AS u(id, token, result, i)
        ORDER BY u.id, u.token, u.i
    ), upd AS (
        UPDATE @s@.jobs j
        SET status = 'succeeded', finished_at = v_now, result = a.result, error = NULL,
            lease_token = NULL, lease_expires_at = NULL, last_event = j.last_event + 1
        FROM a WHERE j.id = a.id AND j.lease_token = a.token AND j.status = 'running'
        RETURNING a.i, j.id, j.queue, j.key, j.last_event, j.attempts
    ), ev AS (
        INSERT INTO @s@.events (job_id, seq, type, at, data)
        SELECT upd.id, upd.last_event, 'status', v_now,
               '{"status":"succeeded","attempt":' || upd.attempts || '}'
        FROM upd
    ), cnt AS (
        INSERT INTO @s@.counts (queue, status, n)
        SELECT upd.queue, 'running', -count(*) FROM upd GROUP BY upd.queue
        UNION ALL
        SELECT upd.queue, 'succeeded', count(*) FROM upd GROUP BY upd.queue
    )
    SELECT array_agg(upd.i::integer),
           array_agg(upd.queue) FILTER (WHERE upd.key IS NOT NULL),
           array_agg(upd.key) FILTER (WHERE upd.key IS NOT NULL)
    INTO a_ord, a_queue, a_key FROM upd;
    IF a_key IS NOT NULL THEN
        PERFORM @s@.handoff(a_queue, a_key);
    END IF;
    RETURN QUERY SELECT unnest(a_ord);
END
$$;

-- End a failed attempt: again at p_retry_at (queued or scheduled; it keeps its lane and its
-- place), else p_final ('failed' or 'dead'). A job asked to cancel is not tried again.
CREATE FUNCTION @s@.fail(p_id text, p_token text, p_error text, p_retry_at timestamptz,
                         p_final text)
RETURNS boolean
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    r record;
BEGIN
    PERFORM @s@.lock_lanes_of(ARRAY[p_id]);
    UPDATE @s@.jobs j
    SET status = CASE WHEN p_retry_at IS NULL THEN p_final
                      WHEN j.cancel_requested THEN 'cancelled'
                      WHEN p_retry_at > v_now THEN 'scheduled'
                      ELSE 'queued' END,
        finished_at = CASE WHEN p_retry_at IS NULL OR j.cancel_requested THEN v_now END,
        scheduled_for = CASE WHEN p_retry_at IS NULL THEN j.scheduled_for ELSE p_retry_at END,
        run_at = CASE WHEN p_retry_at IS NULL THEN j.run_at ELSE greatest(p_retry_at, v_now) END,
        error = p_error, due = false, lease_token = NULL, lease_expires_at = NULL,
        last_event = j.last_event + 1
    WHERE j.id = p_id AND j.lease_token = p_token AND j.status = 'running'
    RETURNING j.queue, j.key, j.status, j.last_event, j.attempts INTO r;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM @s@.status_events(ARRAY[p_id], ARRAY[r.last_event], ARRAY[r.status::text],
                              ARRAY[r.attempts], v_now, ',"error":' || p_error);
    PERFORM @s@.count_moves(ARRAY[r.queue::text], ARRAY['running'], ARRAY[r.status::text]);
    IF r.status IN ('queued', 'scheduled') THEN
        -- waiting workers look again (a scheduled retry: when it is due)
        PERFORM pg_notify(@wake@, r.queue);
    ELSIF r.status IN ('failed', 'dead', 'cancelled') AND r.key IS NOT NULL THEN
        PERFORM @s@.handoff(ARRAY[r.queue::text], ARRAY[r.key::text]);
    END IF;
    RETURN true;
END
$$;

-- Put running jobs back as queued without counting the attempt (graceful shutdown); a job
-- asked to cancel ends cancelled instead. Returns the places of the leases that were held.
CREATE FUNCTION @s@.release(p_ids text[], p_tokens text[])
RETURNS SETOF integer
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    a_ord integer[];
    a_id text[];
    a_seq integer[];
    a_att integer[];
    a_queue text[];
    a_key text[];
    a_status text[];
BEGIN
    PERFORM @s@.lock_lanes_of(p_ids);
    WITH a AS (
        SELECT DISTINCT ON (u.id, u.token) u.id, u.token, u.i
        FROM unnest(p_ids, p_tokens) WITH ORDINALITY AS u(id, token, i)
        ORDER BY u.id, u.token, u.i
    ), upd AS (
        UPDATE @s@.jobs j
        SET status = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'queued' END,
            finished_at = CASE WHEN j.cancel_requested THEN v_now END,
            due = false, attempts = j.attempts - 1, worker = NULL, run_at = v_now,
            scheduled_for = NULL, lease_token = NULL, lease_expires_at = NULL,
            last_event = j.last_event + 1
        FROM a WHERE j.id = a.id AND j.lease_token = a.token AND j.status = 'running'
        RETURNING a.i, j.id, j.queue, j.key, j.status, j.last_event, j.attempts
    )
    SELECT array_agg(upd.i::integer), array_agg(upd.id), array_agg(upd.last_event),
           array_agg(upd.attempts), array_agg(upd.queue), array_agg(upd.key),
           array_agg(upd.status)
    INTO a_ord, a_id, a_seq, a_att, a_queue, a_key, a_status FROM upd;
    IF a_id IS NULL THEN
        RETURN;
    END IF;
    PERFORM @s@.status_events(a_id, a_seq, a_status, a_att, v_now, ',"reason":"released"');
    PERFORM @s@.count_moves(a_queue, array_fill('running'::text, ARRAY[cardinality(a_id)]),
                            a_status);
    PERFORM @s@.handoff(a_queue, ARRAY(SELECT CASE WHEN s = 'cancelled' THEN k END
                                       FROM unnest(a_key, a_status) AS u(k, s)));
    PERFORM pg_notify(@wake@, d.q)
    FROM (SELECT DISTINCT u.q FROM unnest(a_queue, a_status) AS u(q, s) WHERE u.s = 'queued') d;
    RETURN QUERY SELECT unnest(a_ord);
END
$$;

-- Cancel a job. Without a token: a queued or scheduled job ends cancelled, a running one is
-- asked to stop (cancel_requested, pushed to workers on @cancel@). With the worker's token:
-- the running job ends cancelled (the worker confirms a cancel or timeout it carried out).
-- Returns the record afterwards (nothing when there is no such job).
CREATE FUNCTION @s@.cancel(p_id text, p_token text, p_error text)
RETURNS SETOF @s@.jobs
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    r record;
BEGIN
    PERFORM @s@.lock_lanes_of(ARRAY[p_id]);
    IF p_token IS NOT NULL THEN
        UPDATE @s@.jobs j
        SET status = 'cancelled', finished_at = v_now, error = p_error, lease_token = NULL,
            lease_expires_at = NULL, last_event = j.last_event + 1
        WHERE j.id = p_id AND j.lease_token = p_token AND j.status = 'running'
        RETURNING j.queue, j.key, j.last_event, j.attempts, 'running'::text AS old INTO r;
    ELSE
        WITH victim AS (
            SELECT j.id, j.status FROM @s@.jobs j
            WHERE j.id = p_id AND j.status IN ('queued', 'scheduled') FOR UPDATE
        ), upd AS (
            UPDATE @s@.jobs j SET status = 'cancelled', finished_at = v_now,
                                  last_event = j.last_event + 1
            FROM victim WHERE j.id = victim.id
            RETURNING j.queue, j.key, j.last_event, j.attempts, victim.status AS old
        )
        SELECT * INTO r FROM upd;
    END IF;
    IF FOUND THEN
        PERFORM @s@.status_events(ARRAY[p_id], ARRAY[r.last_event], ARRAY['cancelled'],
                                  ARRAY[r.attempts], v_now, '');
        PERFORM @s@.count_moves(ARRAY[r.queue::text], ARRAY[r.old::text], ARRAY['cancelled']);
        IF r.key IS NOT NULL THEN
            PERFORM @s@.handoff(ARRAY[r.queue::text], ARRAY[r.key::text]);
        END IF;
    ELSIF p_token IS NULL THEN
        UPDATE @s@.jobs SET cancel_requested = true
        WHERE id = p_id AND status = 'running' AND NOT cancel_requested;
        IF FOUND THEN
            PERFORM pg_notify(@cancel@, p_id);
        END IF;
    END IF;
    RETURN QUERY SELECT * FROM @s@.jobs WHERE id = p_id;
END
$$;

-- Put a failed, dead or cancelled job back in its queue by hand: at the back, attempts start
-- over. If an active job holds its unique value now, this one gives the value up.
CREATE FUNCTION @s@.retry(p_id text)
RETURNS SETOF @s@.jobs
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    r record;
    v_seq integer;
    v_keep_unique boolean := true;
BEGIN
    PERFORM @s@.lock_lanes_of(ARRAY[p_id]);
    SELECT j.queue, j.key, j.unique_key, j.status INTO r FROM @s@.jobs j
    WHERE j.id = p_id FOR UPDATE;
    IF FOUND AND r.status IN ('failed', 'dead', 'cancelled') THEN
        LOOP
            BEGIN
                UPDATE @s@.jobs j
                SET status = 'queued', pos = nextval('@s@.job_pos'), attempts = 0, lost = 0,
                    due = false,
                    blocked = j.key IS NOT NULL AND EXISTS (
                        SELECT 1 FROM @s@.jobs o WHERE o.queue = j.queue AND o.key = j.key
                          AND o.status IN ('queued', 'scheduled', 'running') AND o.id <> j.id),
                    unique_key = CASE WHEN v_keep_unique AND NOT EXISTS (
                        SELECT 1 FROM @s@.jobs o WHERE o.queue = j.queue
                          AND o.unique_key = j.unique_key
                          AND o.status IN ('queued', 'scheduled', 'running') AND o.id <> j.id)
                        THEN j.unique_key END,
                    run_at = v_now, scheduled_for = NULL, started_at = NULL, finished_at = NULL,
                    cancel_requested = false, worker = NULL, lease_token = NULL,
                    lease_expires_at = NULL, last_event = j.last_event + 1
                WHERE j.id = p_id
                RETURNING j.last_event INTO v_seq;
                EXIT;
            EXCEPTION WHEN unique_violation THEN
                -- an active job took the value between the look and the write
                v_keep_unique := false;
            END;
        END LOOP;
        PERFORM @s@.status_events(ARRAY[p_id], ARRAY[v_seq], ARRAY['queued'], ARRAY[0], v_now,
                                  ',"reason":"retried"');
        PERFORM @s@.count_moves(ARRAY[r.queue::text], ARRAY[r.status::text], ARRAY['queued']);
        PERFORM pg_notify(@wake@, r.queue);
    END IF;
    RETURN QUERY SELECT * FROM @s@.jobs WHERE id = p_id;
END
$$;

-- Put running jobs whose lease expired (by the server's clock) back as queued, at most
-- p_batch of them; one whose lease has now expired p_max_lost times ends dead with p_error
-- (NULL: no limit), one asked to cancel ends cancelled. Returns their ids. Also folds the
-- count deltas together, so stats() stays a read of a few rows.
CREATE FUNCTION @s@.recover(p_max_lost integer, p_error text, p_batch integer)
RETURNS SETOF text
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_ids text[];
    a_id text[];
    a_seq integer[];
    a_att integer[];
    a_queue text[];
    a_key text[];
    a_status text[];
BEGIN
    v_ids := ARRAY(SELECT j.id FROM @s@.jobs j
                   WHERE j.status = 'running' AND j.lease_expires_at < v_now
                   ORDER BY j.id LIMIT p_batch);
    IF cardinality(v_ids) > 0 THEN
        PERFORM @s@.lock_lanes_of(v_ids);
        WITH upd AS (
            UPDATE @s@.jobs j
            SET status = CASE WHEN j.cancel_requested THEN 'cancelled'
                              WHEN j.lost + 1 >= p_max_lost THEN 'dead'
                              ELSE 'queued' END,
                finished_at = CASE WHEN j.cancel_requested OR j.lost + 1 >= p_max_lost
                                   THEN v_now END,
                error = CASE WHEN NOT j.cancel_requested AND j.lost + 1 >= p_max_lost
                             THEN p_error ELSE j.error END,
                worker = CASE WHEN NOT j.cancel_requested AND j.lost + 1 >= p_max_lost
                              THEN j.worker END,
                run_at = v_now, scheduled_for = NULL, lost = j.lost + 1, due = false,
                lease_token = NULL, lease_expires_at = NULL, last_event = j.last_event + 1
            WHERE j.id = ANY(v_ids) AND j.status = 'running' AND j.lease_expires_at < v_now
            RETURNING j.id, j.queue, j.key, j.status, j.last_event, j.attempts
        )
        SELECT array_agg(upd.id), array_agg(upd.last_event), array_agg(upd.attempts),
               array_agg(upd.queue), array_agg(upd.key), array_agg(upd.status)
        INTO a_id, a_seq, a_att, a_queue, a_key, a_status FROM upd;
    END IF;
    IF a_id IS NOT NULL THEN
        PERFORM @s@.status_events(
            ARRAY(SELECT i FROM unnest(a_id, a_status) AS u(i, s) WHERE s <> 'dead'),
            ARRAY(SELECT q FROM unnest(a_seq, a_status) AS u(q, s) WHERE s <> 'dead'),
            ARRAY(SELECT s FROM unnest(a_status) AS s WHERE s <> 'dead'),
            ARRAY(SELECT t FROM unnest(a_att, a_status) AS u(t, s) WHERE s <> 'dead'),
            v_now, ',"reason":"lease expired"');
        PERFORM @s@.status_events(
            ARRAY(SELECT i FROM unnest(a_id, a_status) AS u(i, s) WHERE s = 'dead'),
            ARRAY(SELECT q FROM unnest(a_seq, a_status) AS u(q, s) WHERE s = 'dead'),
            ARRAY(SELECT s FROM unnest(a_status) AS s WHERE s = 'dead'),
            ARRAY(SELECT t FROM unnest(a_att, a_status) AS u(t, s) WHERE s = 'dead'),
            v_now, ',"error":' || coalesce(p_error, 'null') || ',"reason":"lease expired"');
        PERFORM @s@.count_moves(a_queue, array_fill('running'::text, ARRAY[cardinality(a_id)]),
                                a_status);
        PERFORM @s@.handoff(a_queue, ARRAY(SELECT CASE WHEN s <> 'queued' THEN k END
                                           FROM unnest(a_key, a_status) AS u(k, s)));
        PERFORM pg_notify(@wake@, d.q)
        FROM (SELECT DISTINCT u.q FROM unnest(a_queue, a_status) AS u(q, s)
              WHERE u.s = 'queued') AS d;
    END IF;
    -- fold the count deltas: rows deleted here are summed into one per (queue, status)
    WITH gone AS (DELETE FROM @s@.counts RETURNING queue, status, n)
    INSERT INTO @s@.counts (queue, status, n)
    SELECT gone.queue, gone.status, sum(gone.n) FROM gone
    GROUP BY gone.queue, gone.status HAVING sum(gone.n) <> 0;
    RETURN QUERY SELECT unnest(a_id);
END
$$;

-- Delete up to p_batch finished jobs (and their events) that finished before p_before.
CREATE FUNCTION @s@.purge(p_before timestamptz, p_batch integer)
RETURNS integer
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_ids text[];
BEGIN
    -- ids as arrays, rows reached by primary key: a join with a subquery could be planned
    -- (generic plans know no sizes) as a scan of the whole table
    WITH gone AS (
        DELETE FROM @s@.jobs WHERE id = ANY(ARRAY(
            SELECT j.id FROM @s@.jobs j
            WHERE j.status IN ('succeeded', 'failed', 'cancelled', 'dead')
              AND j.finished_at < p_before
            ORDER BY j.finished_at LIMIT p_batch FOR UPDATE SKIP LOCKED))
        RETURNING id, queue, status
    ), cnt AS (
        INSERT INTO @s@.counts (queue, status, n)
        SELECT gone.queue, gone.status, -count(*) FROM gone GROUP BY gone.queue, gone.status
    )
    SELECT array_agg(gone.id) INTO v_ids FROM gone;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM @s@.events WHERE job_id = ANY(v_ids);
    RETURN cardinality(v_ids);
END
$$;

-- Forget up to p_batch lanes untouched since p_before that hold no unfinished job.
CREATE FUNCTION @s@.purge_lanes(p_before timestamptz, p_batch integer)
RETURNS integer
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_done integer;
BEGIN
    WITH gone AS (
        DELETE FROM @s@.lanes l WHERE l.ctid = ANY(ARRAY(
            SELECT o.ctid FROM @s@.lanes o
            WHERE o.touched_at < p_before
              AND NOT EXISTS (SELECT 1 FROM @s@.jobs j WHERE j.queue = o.queue AND j.key = o.key
                                AND j.status IN ('queued', 'scheduled', 'running'))
            LIMIT p_batch FOR UPDATE SKIP LOCKED))
        RETURNING 1
    )
    SELECT count(*) INTO v_done FROM gone;
    RETURN v_done;
END
$$;
