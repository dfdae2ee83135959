-- Named queries of the PostgreSQL store. {schema} is the job's schema, quoted.
-- Every statement that locks rows of shared tables takes them in one order (items, counts,
-- counters, meta, keys, key_days), so two workers never wait on each other in a cycle.

-- name: job
SELECT value FROM {schema}.meta WHERE key = 'job';

-- name: bind
INSERT INTO {schema}.meta (key, value) VALUES ('job', %(job)s), ('schema', %(version)s)
ON CONFLICT (key) DO NOTHING;

-- name: live_workers
SELECT worker_id, run_id, pid, host, started_at, heartbeat, finished_at, state, stats
FROM {schema}.workers
WHERE finished_at IS NULL AND heartbeat > %(since)s
ORDER BY started_at DESC;

-- name: all_workers
SELECT worker_id, run_id, pid, host, started_at, heartbeat, finished_at, state, stats
FROM {schema}.workers ORDER BY started_at DESC LIMIT 200;

-- name: last_worker
SELECT worker_id, run_id, pid, host, started_at, heartbeat, finished_at, state, stats
FROM {schema}.workers ORDER BY started_at DESC LIMIT 1;

-- name: insert_worker
INSERT INTO {schema}.workers (worker_id, run_id, pid, host, started_at, heartbeat, state)
VALUES (%(worker)s, %(run)s, %(pid)s, %(host)s, %(now)s, %(now)s, 'running');

-- name: heartbeat
WITH old AS (
    SELECT started_at, finished_at FROM {schema}.workers WHERE worker_id = %(worker)s
    FOR UPDATE),
beat AS (
    UPDATE {schema}.workers SET heartbeat = %(now)s, stats = %(stats)s,
        finished_at = NULL, state = 'running'
    WHERE worker_id = %(worker)s)
SELECT old.started_at, old.finished_at,
    (SELECT value FROM {schema}.meta WHERE key = 'stop_requested_at')
FROM old;

-- name: finish_worker
UPDATE {schema}.workers SET heartbeat = %(now)s, finished_at = %(now)s, state = %(state)s,
    stats = %(stats)s
WHERE worker_id = %(worker)s;

-- name: request_stop
INSERT INTO {schema}.meta (key, value) VALUES ('stop_requested_at', %(now)s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: bury_workers
UPDATE {schema}.workers SET finished_at = %(now)s, state = 'dead'
WHERE finished_at IS NULL AND heartbeat <= %(since)s;

-- name: live_here
SELECT worker_id, pid, started_at FROM {schema}.workers
WHERE finished_at IS NULL AND host = %(host)s;

-- name: bury
UPDATE {schema}.workers SET finished_at = %(now)s, state = 'dead'
WHERE worker_id = ANY(%(workers)s) AND finished_at IS NULL;

-- name: recover
UPDATE {schema}.items SET status = 'pending', lease = NULL
WHERE status = 'running'
  AND (lease IS NULL
       OR lease NOT IN (SELECT worker_id FROM {schema}.workers WHERE finished_at IS NULL))
RETURNING seq;

-- name: source_position
SELECT "offset", line, exhausted FROM {schema}.source_state;

-- name: set_source_position
INSERT INTO {schema}.source_state (one, "offset", line, exhausted)
VALUES (1, %(offset)s, %(line)s, %(exhausted)s)
ON CONFLICT (one) DO UPDATE SET "offset" = excluded."offset", line = excluded.line,
    exhausted = excluded.exhausted;

-- name: stage
CREATE TEMPORARY TABLE IF NOT EXISTS paceline_stage2 (
    id TEXT, data TEXT, status TEXT, priority DOUBLE PRECISION, line BIGINT, src_offset BIGINT
) ON COMMIT DELETE ROWS;

-- name: ingest_staged
INSERT INTO {schema}.items (id, data, status, priority, line, updated_at, src_offset)
SELECT id, data, status, priority, line, %(now)s, src_offset FROM paceline_stage2 ORDER BY line
ON CONFLICT (id) DO NOTHING
RETURNING status;

-- name: ingest_invalid
INSERT INTO {schema}.items (id, data, status, attempts, last_error, line, updated_at)
SELECT * FROM unnest(%(ids)s::text[], %(nulls)s::text[], %(statuses)s::text[],
    %(zeros)s::int[], %(errors)s::text[], %(lines)s::bigint[], %(nows)s::float8[])
ON CONFLICT (id) DO NOTHING
RETURNING seq;

-- name: fill
UPDATE {schema}.items AS i SET data = v.data
FROM unnest(%(seqs)s::bigint[], %(datas)s::text[]) AS v(seq, data)
WHERE i.seq = v.seq AND i.data IS NULL;

-- name: first_lines
SELECT id, line FROM {schema}.items WHERE id = ANY(%(ids)s);

-- name: record_duplicates
INSERT INTO {schema}.duplicates (line, id, first_line)
SELECT * FROM unnest(%(lines)s::bigint[], %(ids)s::text[], %(firsts)s::bigint[])
ON CONFLICT DO NOTHING
RETURNING line;

-- name: duplicates_count
SELECT count(*) FROM {schema}.duplicates;

-- name: duplicates_some
SELECT line, id, first_line FROM {schema}.duplicates ORDER BY line LIMIT %(limit)s;

-- name: statuses_of
SELECT id, status FROM {schema}.items WHERE id = ANY(%(ids)s);

-- name: claim
UPDATE {schema}.items SET status = 'running', lease = %(worker)s
WHERE seq IN (
    SELECT seq FROM {schema}.items WHERE status = 'pending'
    ORDER BY priority DESC, seq LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
RETURNING seq, id, data, priority, attempts, src_offset, line;

-- name: claim_expedited
UPDATE {schema}.items SET status = 'running', lease = %(worker)s
WHERE seq IN (
    SELECT seq FROM {schema}.items WHERE status = 'pending' AND priority >= %(expedited)s
    ORDER BY priority DESC, seq LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
RETURNING seq, id, data, priority, attempts, src_offset, line;

-- name: counter_for_update
SELECT name, n FROM {schema}.counters WHERE name = ANY(%(names)s) ORDER BY name FOR UPDATE;

-- name: ensure_counters
INSERT INTO {schema}.counters (name, n) SELECT unnest(%(names)s::text[]), 0
ON CONFLICT (name) DO NOTHING;

-- name: spend
UPDATE {schema}.counters SET n = n + %(n)s WHERE name = ANY(%(names)s);

-- name: counter
SELECT n FROM {schema}.counters WHERE name = %(name)s;

-- name: release
UPDATE {schema}.items SET status = 'pending', lease = NULL
WHERE status = 'running' AND lease = %(worker)s
RETURNING seq;

-- name: promote_due
UPDATE {schema}.items SET status = 'pending'
WHERE seq IN (
    SELECT seq FROM {schema}.items WHERE status = 'retry' AND not_before <= %(now)s
    FOR UPDATE SKIP LOCKED)
RETURNING seq;

-- name: next_due
SELECT min(not_before) FROM {schema}.items WHERE status = 'retry';

-- name: complete
UPDATE {schema}.items AS i SET status = v.status, attempts = v.attempts,
    last_error = v.error, not_before = v.not_before, lease = NULL, wrote = v.wrote,
    updated_at = %(now)s, data = CASE WHEN v.status = 'done' THEN NULL ELSE i.data END
FROM unnest(%(seqs)s::bigint[], %(statuses)s::text[], %(attempts)s::int[],
            %(errors)s::text[], %(not_befores)s::float8[], %(wrotes)s::bool[])
     AS v(seq, status, attempts, error, not_before, wrote)
WHERE i.seq = v.seq AND i.status = 'running' AND i.lease = %(worker)s
RETURNING i.seq;

-- name: refuse
UPDATE {schema}.items SET status = 'failed', last_error = v.error, wrote = FALSE
FROM unnest(%(seqs)s::bigint[], %(errors)s::text[]) AS v(seq, error)
WHERE {schema}.items.seq = v.seq;

-- name: move_counts
INSERT INTO {schema}.counts (shard, status, n)
SELECT %(shard)s, s, d FROM unnest(%(statuses)s::text[], %(deltas)s::bigint[]) AS m(s, d)
ORDER BY s
ON CONFLICT (shard, status) DO UPDATE SET n = {schema}.counts.n + excluded.n;

-- name: counts
SELECT status, sum(n)::bigint FROM {schema}.counts GROUP BY status;

-- name: add_cost
INSERT INTO {schema}.meta (key, value) VALUES ('cost_usd', %(cost)s::text)
ON CONFLICT (key) DO UPDATE
SET value = ({schema}.meta.value::double precision + %(cost)s)::text;

-- name: cost
SELECT value FROM {schema}.meta WHERE key = 'cost_usd';

-- name: sink_state
SELECT value FROM {schema}.sink_state;

-- name: set_sink_state
INSERT INTO {schema}.sink_state (one, value) VALUES (1, %(value)s)
ON CONFLICT (one) DO UPDATE SET value = excluded.value;

-- name: add_key_usage
INSERT INTO {schema}.keys AS k (fingerprint, masked, requests, tokens, rate_limited, errors,
    state, until, reason, info, updated_at)
SELECT * FROM unnest(%(fps)s::text[], %(masked)s::text[], %(requests)s::bigint[],
    %(tokens)s::bigint[], %(limited)s::bigint[], %(errors)s::bigint[], %(states)s::text[],
    %(untils)s::float8[], %(reasons)s::text[], %(infos)s::text[], %(nows)s::float8[])
    AS u(fingerprint, masked, requests, tokens, rate_limited, errors, state, until, reason,
         info, updated_at)
ORDER BY fingerprint
ON CONFLICT (fingerprint) DO UPDATE SET
    requests = k.requests + excluded.requests, tokens = k.tokens + excluded.tokens,
    rate_limited = k.rate_limited + excluded.rate_limited, errors = k.errors + excluded.errors,
    state = excluded.state, until = excluded.until, reason = excluded.reason,
    info = excluded.info, updated_at = excluded.updated_at;

-- name: key_days
INSERT INTO {schema}.key_days AS d (fingerprint, day_start, unit, used)
SELECT * FROM unnest(%(fps)s::text[], %(starts)s::float8[], %(units)s::text[],
    %(used)s::float8[]) AS u(fingerprint, day_start, unit, used)
ORDER BY fingerprint, day_start, unit
ON CONFLICT (fingerprint, day_start, unit) DO UPDATE SET used = greatest(d.used, excluded.used);

-- name: key_usage
SELECT fingerprint, masked, requests, tokens, rate_limited, errors, state, until, reason, info
FROM {schema}.keys ORDER BY masked;

-- name: day_usage
SELECT unit, used FROM {schema}.key_days WHERE fingerprint = %(fp)s AND day_start = %(start)s;

-- name: expedite
WITH old AS (
    SELECT seq, status FROM {schema}.items
    WHERE id = ANY(%(ids)s) AND status IN ('pending', 'retry', 'failed', 'skipped')
      AND data IS NOT NULL
    FOR UPDATE)
UPDATE {schema}.items AS i SET status = 'pending', priority = %(expedited)s,
    not_before = NULL, updated_at = %(now)s
FROM old WHERE i.seq = old.seq
RETURNING old.status;

-- name: requeue
WITH old AS (
    SELECT seq, status FROM {schema}.items
    WHERE id = ANY(%(ids)s) AND status IN ('done', 'failed', 'skipped', 'retry')
      AND (data IS NOT NULL OR status = 'done')
    FOR UPDATE)
UPDATE {schema}.items AS i SET status = 'pending', attempts = 0, not_before = NULL,
    updated_at = %(now)s
FROM old WHERE i.seq = old.seq
RETURNING old.status;

-- name: retry_failed
UPDATE {schema}.items SET status = 'pending', attempts = 0, not_before = NULL
WHERE status = 'failed' AND data IS NOT NULL
RETURNING seq;

-- name: forget_invalid
DELETE FROM {schema}.items WHERE status = 'failed' AND data IS NULL RETURNING seq;

-- name: forget_position
DELETE FROM {schema}.source_state;

-- name: iter_statuses
SELECT seq, id, status, coalesce(wrote, TRUE)::int FROM {schema}.items
WHERE seq > %(after)s ORDER BY seq LIMIT %(limit)s;

-- name: iter_items
SELECT seq, id, status, attempts, last_error, line, coalesce(wrote, FALSE) FROM {schema}.items
WHERE seq > %(after)s AND (cardinality(%(statuses)s::text[]) = 0 OR status = ANY(%(statuses)s))
ORDER BY seq LIMIT 1000;

-- name: failures
SELECT id, attempts, last_error, line, updated_at, data IS NULL FROM {schema}.items
WHERE status = 'failed' ORDER BY updated_at DESC NULLS LAST, seq DESC LIMIT %(limit)s;
