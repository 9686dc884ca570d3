-- The sweep's safety net (queue_service/postgres/sweep.py, repair of pending counts): run on a
-- SQLAlchemy connection through exec_driver_sql.

-- name: miscounted
-- Not-started tasks whose pending count disagrees with their dependencies (by construction none;
-- the history checker asserts it), a batch at a time.
SELECT t.id FROM tasks t
WHERE t.status = 'not-started' AND t.pending_deps <> (
    SELECT count(*) FROM task_dependencies d JOIN tasks p ON p.id = d.depends_on_id
    WHERE d.task_id = t.id AND p.status <> 'done'
)
ORDER BY t.id LIMIT 500

-- name: lock_miscounted
-- Lock those of $1 (ids) still not-started, in id order, skipping the ones a writer holds.
SELECT id FROM tasks WHERE id = ANY($1::bigint[]) AND status = 'not-started' ORDER BY id FOR UPDATE SKIP LOCKED
