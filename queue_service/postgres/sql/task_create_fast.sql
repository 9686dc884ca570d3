-- The fast path of create_task: one new task with no given key, no idempotency key and no
-- dependencies (the common call), on a raw asyncpg connection (queue_service/postgres/asyncpg_pool.py)
-- in one transaction of two statements instead of the general path's nine round trips. Anything the
-- fast path cannot answer exactly (the key is taken by an imported task, the mission does not exist,
-- the project does not exist, the queue is full) rolls back and takes the general path, which
-- raises the precise error or skips the taken number.

-- name: allocate_key
-- Take the project's row lock (FOR NO KEY UPDATE, as the general path) and its next key number.
-- Under that lock every earlier creation in the project has committed, so the next statement's
-- snapshot sees them (READ COMMITTED: a new snapshot per statement).
-- $1 project.
UPDATE projects SET next_seq = next_seq + 1, last_task_seq = last_task_seq + 1
WHERE slug = $1
RETURNING key_prefix, next_seq - 1 AS number, last_task_seq AS seq

-- name: insert_task
-- The role's ready depth, the task row if the depth leaves room, and its 'created' event.
-- $1 project, $2 key, $3 seq, $4 title, $5 role, $6 description, $7 priority, $8 assignee,
-- $9 mission, $10 milestone, $11 labels, $12 extra, $13 max_attempts, $14 not_before, $15 now,
-- $16 max_queue_depth.
WITH depth AS (
    SELECT count(*) AS n FROM tasks
    WHERE project = $1 AND role = $5 AND status = 'not-started' AND pending_deps = 0
), created AS (
    INSERT INTO tasks (project, key, seq, title, description, status, role, priority, assignee, mission,
                       milestone, labels, extra, attempts, max_attempts, not_before, pending_deps,
                       version, created_at, updated_at)
    SELECT $1, $2, $3, $4, $6, 'not-started', $5, $7, $8, $9, $10, $11::text[], $12::jsonb, 0, $13,
           $14, 0, 1, $15, $15
    FROM depth WHERE depth.n < $16
    RETURNING id
), logged AS (
    INSERT INTO events (project, task_key, kind, status, version, at, data)
    SELECT $1, $2, 'created', 'not-started', 1, $15, '{}'::jsonb FROM created
    RETURNING id
)
SELECT (SELECT n FROM depth) AS depth, (SELECT id FROM logged) AS event_id
