-- Consequences of task status changes for the direct dependents, run inside the caller's
-- transaction after it changed the tasks' own rows (queue_service/postgres/transitions.py). Run
-- on asyncpg connections and, through exec_driver_sql, on SQLAlchemy ones: the same text for both.

-- name: lock_dependents
-- The direct dependents of the tasks $1 (ids), locked in id order: the one lock order for
-- dependents everywhere (completion, sweep, fail, cancel, PATCH). Its own statement, run after the
-- tasks' rows were changed: the statements that follow then see every edge to them that will ever
-- count (an edge writer reads a dependency's status under FOR SHARE, which waits for the change).
SELECT dep.id FROM tasks dep JOIN task_dependencies d ON d.task_id = dep.id
WHERE d.depends_on_id = ANY($1::bigint[]) ORDER BY dep.id FOR UPDATE OF dep

-- name: recount_pending_deps
-- Set pending_deps of the tasks $1 (locked by the caller) from their dependencies as they are now:
-- a count derived in a fresh snapshot, never a delta applied to a stale one. Returns every recounted
-- task, with due judged by the database's clock.
UPDATE tasks t SET pending_deps = (
    SELECT count(*) FROM task_dependencies d JOIN tasks p ON p.id = d.depends_on_id
    WHERE d.task_id = t.id AND p.status <> 'done'
)
WHERE t.id = ANY($1::bigint[])
RETURNING t.id, t.project, t.key, t.role, t.priority, t.seq, t.not_before, t.status, t.pending_deps,
          (t.not_before IS NULL OR t.not_before <= statement_timestamp()) AS due

-- name: block_dependents
-- Not-started dependents of tasks that just failed or were cancelled become blocked, the reason
-- naming their first such dependency in declared order.
-- $1 ids, $2 reasons (one per id), $3 now, $4 project.
WITH src AS (
    SELECT s.id, s.reason FROM unnest($1::bigint[], $2::text[]) AS s(id, reason)
), hit AS (
    SELECT DISTINCT ON (d.task_id) d.task_id, src.reason, src.id AS cause
    FROM task_dependencies d JOIN src ON src.id = d.depends_on_id
    ORDER BY d.task_id, d.position
)
UPDATE tasks t
SET status = 'blocked', blocked_reason = hit.reason, version = t.version + 1, updated_at = $3::timestamptz
FROM hit
WHERE t.id = hit.task_id AND t.status = 'not-started' AND t.project = $4::text
RETURNING t.id, t.project, t.key, t.version, t.blocked_reason, hit.cause

-- name: unblock_dependents
-- A dependent blocked because of one of $1 (ids) goes back to not-started, unless another of its
-- deps is still failed/cancelled: then it stays blocked and the reason names that dep instead.
-- $2 the block reasons naming the tasks $1, $3 the reason prefix, $4 now, $5 project.
WITH cand AS (
    SELECT DISTINCT d.task_id FROM task_dependencies d WHERE d.depends_on_id = ANY($1::bigint[])
), tgt AS (
    SELECT t.id, other.key AS other_key, other.status AS other_status
    FROM tasks t
    JOIN cand ON cand.task_id = t.id
    LEFT JOIN LATERAL (
        SELECT p.key, p.status
        FROM task_dependencies d2 JOIN tasks p ON p.id = d2.depends_on_id
        WHERE d2.task_id = t.id AND p.status IN ('failed', 'cancelled')
        ORDER BY d2.position
        LIMIT 1
    ) other ON true
    WHERE t.status = 'blocked' AND t.blocked_reason = ANY($2::text[]) AND t.project = $5::text
)
UPDATE tasks t
SET status = CASE WHEN tgt.other_key IS NULL THEN 'not-started' ELSE 'blocked' END,
    blocked_reason = CASE WHEN tgt.other_key IS NULL THEN NULL
                          ELSE $3::text || tgt.other_key || ' is ' || tgt.other_status END,
    version = t.version + 1,
    updated_at = $4::timestamptz
FROM tgt
WHERE t.id = tgt.id
RETURNING t.id, t.project, t.key, t.role, t.priority, t.seq, t.not_before, t.status,
          t.pending_deps, t.version, t.blocked_reason

-- name: insert_events
-- Any number of event rows in one statement: arrays in, ids out. ORDER BY ord makes the serial ids
-- follow the input order (nextval runs row by row in that order), so sorting the returned ids
-- restores the input order without a sentinel column.
-- $1 project, $2 task_key, $3 kind, $4 status, $5 version, $6 at, $7 data (JSON text).
INSERT INTO events (project, task_key, kind, status, version, at, data)
SELECT x.project, x.task_key, x.kind, x.status, x.version, x.at, x.data::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[], $7::text[])
     WITH ORDINALITY AS x(project, task_key, kind, status, version, at, data, ord)
ORDER BY x.ord
RETURNING id
