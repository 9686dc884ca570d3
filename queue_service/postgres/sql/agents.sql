-- The agent registry (issue 13; queue_service/postgres/agents.py). Readiness and the lease seconds
-- left are computed from the database's clock (statement_timestamp()).

-- name: project_exists
SELECT 1 FROM projects WHERE slug = $1

-- name: register
-- Register or update an agent (explicit: undrained, seen now): $1 project, $2 id, $3 roles, $4 labels,
-- $5 capacity.
INSERT INTO agents AS a (project, id, roles, labels, capacity, implicit, drained, last_seen, registered_at)
VALUES ($1, $2, $3::text[], $4::jsonb, $5, false, false, statement_timestamp(), statement_timestamp())
ON CONFLICT (project, id) DO UPDATE SET roles = excluded.roles, labels = excluded.labels,
    capacity = excluded.capacity, implicit = false, drained = false, last_seen = statement_timestamp()
RETURNING a.id

-- name: heartbeat
-- $1 project, $2 id.
UPDATE agents SET last_seen = statement_timestamp() WHERE project = $1 AND id = $2 RETURNING id

-- name: drain
-- $1 project, $2 id.
UPDATE agents SET drained = true WHERE project = $1 AND id = $2 RETURNING id

-- name: list
-- Agents as listed: $1 project, $2 readiness window (seconds), $3 one agent id or NULL for all.
SELECT a.id, a.roles, a.labels, a.capacity, a.drained, a.last_seen,
       (NOT a.drained AND a.last_seen >= statement_timestamp() - make_interval(secs => $2::float8)) AS ready,
       coalesce((
           SELECT json_agg(json_build_object(
               'key', t.key,
               'lease_seconds_left', greatest(0, extract(epoch FROM t.lease_expires_at - statement_timestamp()))
           ) ORDER BY t.key)
           FROM tasks t
           WHERE t.project = a.project AND t.lease_holder = a.id AND t.status = 'in-progress'
             AND t.lease_expires_at IS NOT NULL
       ), '[]'::json) AS holding,
       (SELECT count(*) FROM tasks t WHERE t.project = a.project AND t.assignee = a.id
          AND t.status IN ('done', 'needs-qa')) AS done,
       (SELECT count(*) FROM tasks t WHERE t.project = a.project AND t.assignee = a.id
          AND t.status = 'failed') AS failed
FROM agents a
WHERE a.project = $1 AND ($3::text IS NULL OR a.id = $3)
  AND NOT (a.implicit AND a.last_seen < statement_timestamp() - interval '24 hours'
           AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.project = a.project AND t.lease_holder = a.id
                           AND t.status = 'in-progress'))
ORDER BY a.id
