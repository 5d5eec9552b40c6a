-- Claiming: one call takes a batch of due jobs, in order, each with a fresh lease.

-- Take up to p_limit due lane heads of p_queues for p_worker, best first (priority, then enqueue
-- order), leased for p_lease seconds by the server's clock. Rows another claim holds are
-- skipped (FOR UPDATE SKIP LOCKED), so claims never wait for each other.
CREATE FUNCTION @s@.claim(p_queues text[], p_worker text, p_limit integer,
                          p_lease double precision)
RETURNS SETOF @s@.jobs
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_ids text[];
    v_old text[];
BEGIN
    IF p_limit <= 0 OR coalesce(cardinality(p_queues), 0) = 0 THEN
        RETURN;
    END IF;
    -- Ids are gathered into arrays first and rows then reached by primary key: a join with a
    -- subquery could be planned (generic plans know no sizes) as a scan of the whole table.
    -- Scheduled lane heads now due move into jobs_ready, soonest first (at most 1,000 per
    -- claim, so a claim never holds rows for long); priority then decides among all that is due
    UPDATE @s@.jobs SET due = true
    WHERE id = ANY(ARRAY(SELECT j.id FROM @s@.jobs j
                         WHERE j.queue = ANY(p_queues) AND j.status = 'scheduled'
                           AND NOT j.blocked AND NOT j.due AND j.run_at <= v_now
                         ORDER BY j.run_at LIMIT 1000 FOR UPDATE SKIP LOCKED));
    -- each queue's best from its own range of jobs_ready, then the best of those
    SELECT array_agg(c.id ORDER BY c.priority DESC, c.pos),
           array_agg(c.status ORDER BY c.priority DESC, c.pos)
    INTO v_ids, v_old
    FROM (SELECT b.id, b.status, b.priority, b.pos
          FROM (SELECT DISTINCT unnest(p_queues) AS name) AS q,
               LATERAL (SELECT j.id, j.status, j.priority, j.pos FROM @s@.jobs j
                        WHERE j.queue = q.name AND NOT j.blocked
                          AND (j.status = 'queued' OR (j.status = 'scheduled' AND j.due))
                        ORDER BY j.priority DESC, j.pos
                        LIMIT p_limit FOR UPDATE SKIP LOCKED) AS b
          ORDER BY b.priority DESC, b.pos
          LIMIT p_limit) AS c;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH upd AS (
        UPDATE @s@.jobs j
        SET status = 'running', attempts = j.attempts + 1, started_at = v_now, finished_at = NULL,
            worker = p_worker, cancel_requested = false,
            lease_token = translate(gen_random_uuid()::text, '-', ''),
            lease_expires_at = v_now + make_interval(secs => p_lease),
            last_event = j.last_event + 1
        FROM unnest(v_ids, v_old) AS p(id, old) WHERE j.id = p.id
        RETURNING j AS job, p.old AS old
    ), ev AS (
        INSERT INTO @s@.events (job_id, seq, type, at, data)
        SELECT (u.job).id, (u.job).last_event, 'status', v_now,
               '{"status":"running","attempt":' || (u.job).attempts || ',"worker":'
               || to_json(p_worker)::text || '}'
        FROM upd u
    ), cnt AS (
        INSERT INTO @s@.counts (queue, status, n)
        SELECT (u.job).queue, u.old, -count(*) FROM upd u GROUP BY (u.job).queue, u.old
        UNION ALL
        SELECT (u.job).queue, 'running', count(*) FROM upd u GROUP BY (u.job).queue
    )
    SELECT (u.job).* FROM upd u ORDER BY (u.job).priority DESC, (u.job).pos;
END
$$;

-- Seconds (by the server's clock) until the next scheduled lane head of p_queues is due, or
-- NULL when none waits: an idle worker sleeps that long unless woken first.
CREATE FUNCTION @s@.next_due(p_queues text[]) RETURNS double precision
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN (SELECT extract(epoch FROM min(d.at) - clock_timestamp())::double precision
            FROM (SELECT (SELECT min(j.run_at) FROM @s@.jobs j
                          WHERE j.queue = q.name AND j.status = 'scheduled' AND NOT j.blocked
                            AND NOT j.due) AS at
                  FROM unnest(p_queues) AS q(name)) AS d);
END
$$;
