-- Enqueue a batch: one call, in the caller's transaction (conveyor's own autocommit call, or an
-- application's open transaction: nothing here commits). Ids must be distinct within the batch
-- (the Python side answers repeated ids itself). Returns, per job, its place in the batch, the
-- id and status of the record that answers it, and whether that record existed already (the
-- id was stored before, or an active job holds its unique value): then nothing was written for
-- it, and o_record is that record as JSON, as it was then (a later job of the same batch may
-- still change it, by supersede). Workers are woken by NOTIFY, which PostgreSQL delivers at commit, and only then.
CREATE FUNCTION @s@.enqueue(
    p_ids text[], p_tasks text[], p_queues text[], p_args text[], p_kwargs text[],
    p_priorities integer[], p_keys text[], p_uniques text[], p_max_attempts integer[],
    p_timeouts double precision[], p_enqueued_at timestamptz[], p_scheduled_for timestamptz[],
    p_retries text[], p_supersede boolean[], p_meta text[]
) RETURNS TABLE (o_ord integer, o_id text, o_status text, o_existing boolean, o_record text)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_n integer := coalesce(cardinality(p_ids), 0);
    v_pos bigint[];
    v_ids text[];
    v_sts text[];
    v_stored integer := 0;
    v_special boolean;
    v_tries integer;
    a_id text[];
    a_seq integer[];
    a_att integer[];
    a_queue text[];
    a_old text[];
    a_new text[];
    r record;
BEGIN
    IF v_n = 0 THEN
        RETURN;
    END IF;
    -- enqueue order: positions drawn in batch order
    v_pos := ARRAY(SELECT nextval('@s@.job_pos') FROM generate_series(1, v_n));
    v_special := EXISTS (SELECT 1 FROM unnest(p_keys, p_uniques) AS u(k, q)
                         WHERE u.k IS NOT NULL OR u.q IS NOT NULL);
    IF v_special THEN
        PERFORM @s@.lock_lanes(p_queues, p_keys);
    END IF;

    -- jobs with neither key nor unique value: one statement for all of them
    WITH ins AS (
        INSERT INTO @s@.jobs (id, pos, task, queue, status, args, kwargs, priority,
                              max_attempts, timeout, enqueued_at, scheduled_for, run_at, retry,
                              meta, last_event)
        SELECT u.id, v_pos[u.i], u.task, u.queue,
               CASE WHEN u.sched > v_now THEN 'scheduled' ELSE 'queued' END,
               u.args, u.kwargs, u.prio, u.maxa, u.tmo, u.enq, u.sched,
               coalesce(u.sched, v_now), u.retry, u.meta, 1
        FROM unnest(p_ids, p_tasks, p_queues, p_args, p_kwargs, p_priorities, p_keys, p_uniques,
                    p_max_attempts, p_timeouts, p_enqueued_at, p_scheduled_for, p_retries, p_meta)
             WITH ORDINALITY AS u(id, task, queue, args, kwargs, prio, key, uniq, maxa, tmo, enq,
                                  sched, retry, meta, i)
        WHERE u.key IS NULL AND u.uniq IS NULL
        ORDER BY u.i
        ON CONFLICT DO NOTHING
        RETURNING id, queue, status
    ), ev AS (
        INSERT INTO @s@.events (job_id, seq, type, at, data)
        SELECT ins.id, 1, 'status', v_now, '{"status":"' || ins.status || '","attempt":0}'
        FROM ins
    ), cnt AS (
        INSERT INTO @s@.counts (queue, status, n)
        SELECT ins.queue, ins.status, count(*) FROM ins GROUP BY ins.queue, ins.status
    )
    SELECT array_agg(ins.id), array_agg(ins.status) INTO v_ids, v_sts FROM ins;
    v_stored := coalesce(cardinality(v_ids), 0);
    RETURN QUERY
        SELECT u.i::integer, coalesce(n.id, j.id), coalesce(n.st, j.status), n.id IS NULL,
               CASE WHEN n.id IS NULL THEN row_to_json(j)::text END
        FROM unnest(p_ids, p_keys, p_uniques) WITH ORDINALITY AS u(id, key, uniq, i)
        LEFT JOIN unnest(v_ids, v_sts) AS n(id, st) ON n.id = u.id
        LEFT JOIN @s@.jobs j ON n.id IS NULL AND j.id = u.id
        WHERE u.key IS NULL AND u.uniq IS NULL;

    -- jobs with a key or a unique value, one by one in batch order (lanes and unique values
    -- are decided against everything stored before them, the batch's earlier jobs included)
    FOR r IN
        SELECT u.*, v_pos[u.i] AS pos,
               CASE WHEN u.sched > v_now THEN 'scheduled' ELSE 'queued' END AS st
        FROM unnest(p_ids, p_tasks, p_queues, p_args, p_kwargs, p_priorities, p_keys, p_uniques,
                    p_max_attempts, p_timeouts, p_enqueued_at, p_scheduled_for, p_retries,
                    p_supersede, p_meta)
             WITH ORDINALITY AS u(id, task, queue, args, kwargs, prio, key, uniq, maxa, tmo, enq,
                                  sched, retry, supersede, meta, i)
        WHERE v_special AND (u.key IS NOT NULL OR u.uniq IS NOT NULL)
        ORDER BY u.i
    LOOP
        o_ord := r.i;
        v_tries := 0;
        LOOP
            -- the unique index decides: ON CONFLICT waits for a concurrent insert of the same
            -- value and then skips, so no two active jobs ever share one
            INSERT INTO @s@.jobs (id, pos, task, queue, status, args, kwargs, priority, key,
                                  unique_key, blocked, max_attempts, timeout, enqueued_at,
                                  scheduled_for, run_at, retry, meta, last_event)
            VALUES (r.id, r.pos, r.task, r.queue, r.st, r.args, r.kwargs, r.prio, r.key, r.uniq,
                    r.key IS NOT NULL AND EXISTS (
                        SELECT 1 FROM @s@.jobs j WHERE j.queue = r.queue AND j.key = r.key
                          AND j.status IN ('queued', 'scheduled', 'running')),
                    r.maxa, r.tmo, r.enq, r.sched, coalesce(r.sched, v_now), r.retry, r.meta, 1)
            ON CONFLICT DO NOTHING
            RETURNING id, status INTO o_id, o_status;
            IF FOUND THEN
                o_existing := false;
                o_record := NULL;
                EXIT;
            END IF;
            o_existing := true;
            SELECT j.id, j.status, row_to_json(j)::text INTO o_id, o_status, o_record
            FROM @s@.jobs j WHERE j.id = r.id;
            EXIT WHEN FOUND;
            SELECT j.id, j.status, row_to_json(j)::text INTO o_id, o_status, o_record
            FROM @s@.jobs j
            WHERE j.queue = r.queue AND j.unique_key = r.uniq
              AND j.status IN ('queued', 'scheduled', 'running');
            EXIT WHEN FOUND;
            -- the holder finished between the insert and the look: try again
            v_tries := v_tries + 1;
            IF v_tries >= 20 THEN
                RAISE EXCEPTION 'conveyor: job % conflicts with a job that keeps changing', r.id;
            END IF;
        END LOOP;
        IF NOT o_existing THEN
            v_stored := v_stored + 1;
            INSERT INTO @s@.events (job_id, seq, type, at, data)
            VALUES (r.id, 1, 'status', v_now, '{"status":"' || r.st || '","attempt":0}');
            INSERT INTO @s@.counts (queue, status, n) VALUES (r.queue, r.st, 1);
            IF r.supersede AND r.key IS NOT NULL THEN
                -- cancel the lane's jobs that never started (the lane is locked)
                WITH victims AS (
                    SELECT j.id, j.status AS old FROM @s@.jobs j
                    WHERE j.queue = r.queue AND j.key = r.key
                      AND j.status IN ('queued', 'scheduled', 'running')
                      AND j.status IN ('queued', 'scheduled') AND j.attempts = 0 AND j.id <> r.id
                    FOR UPDATE
                ), gone AS (
                    UPDATE @s@.jobs j SET status = 'cancelled', finished_at = v_now,
                                          last_event = j.last_event + 1
                    FROM victims v WHERE j.id = v.id
                    RETURNING j.id, j.queue, j.last_event, j.attempts, v.old
                )
                SELECT array_agg(gone.id), array_agg(gone.last_event), array_agg(gone.attempts),
                       array_agg(gone.queue), array_agg(gone.old)
                INTO a_id, a_seq, a_att, a_queue, a_old FROM gone;
                IF a_id IS NOT NULL THEN
                    a_new := array_fill('cancelled'::text, ARRAY[cardinality(a_id)]);
                    PERFORM @s@.status_events(a_id, a_seq, a_new, a_att, v_now,
                                              ',"reason":"superseded"');
                    PERFORM @s@.count_moves(a_queue, a_old, a_new);
                END IF;
                PERFORM @s@.handoff(ARRAY[r.queue], ARRAY[r.key]);
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;

    IF v_stored > 0 THEN
        PERFORM pg_notify(@wake@, d.q) FROM (SELECT DISTINCT q FROM unnest(p_queues) AS q) AS d;
    END IF;
END
$$;
