-- Dependency edges written and walked by the record store (queue_service/postgres/records/): run on
-- SQLAlchemy connections through exec_driver_sql (transitions.sa_fetch).

-- name: insert_edges
-- Any number of edges in one statement: $1 task ids, $2 their dependencies' ids, $3 positions.
INSERT INTO task_dependencies (task_id, depends_on_id, position)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[])

-- name: reaches
-- Whether the task $2 is reachable from one of the tasks $1 along existing edges (a new edge from $2
-- to them would close a cycle). UNION (not UNION ALL over paths): each task is visited once, so a
-- dense DAG costs O(edges); enumerating paths was exponential (the history checker's soak hung a
-- PATCH for 20 minutes).
WITH RECURSIVE reach(id) AS (
    SELECT unnest($1::bigint[])
    UNION
    SELECT d.depends_on_id FROM reach JOIN task_dependencies d ON d.task_id = reach.id
    WHERE reach.id <> $2::bigint
)
SELECT EXISTS (SELECT 1 FROM reach WHERE id = $2::bigint) AS found

-- name: reach_parents
-- The tasks reachable from $1 along existing edges (stopping at $2), each with one parent it was
-- reached from (NULL for the tasks $1 themselves) and its key: the cycle path is read from them.
WITH RECURSIVE reach(id, parent) AS (
    SELECT x, CAST(NULL AS bigint) FROM unnest($1::bigint[]) AS x
    UNION
    SELECT d.depends_on_id, reach.id FROM reach JOIN task_dependencies d ON d.task_id = reach.id
    WHERE reach.id <> $2::bigint
)
SELECT reach.id, reach.parent, t.key FROM reach JOIN tasks t ON t.id = reach.id
