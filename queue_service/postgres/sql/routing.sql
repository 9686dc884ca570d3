-- Routed claims (issue 13; queue_service/postgres/routing.py): one transaction per claim decides
-- which ready tasks an agent may take. Lock order: the agent's row, then one advisory lock per limited
-- concurrency key (sorted), then task rows (SKIP LOCKED), then offers and cursors by key.
-- Every time is the database's (statement_timestamp()).
-- {task_returning}: every task column but the lease token, plus the dependency keys (rows.py).

-- name: admit
-- Register the agent implicitly (or refresh last_seen), locking its row; with the project's routing
-- settings. $1 project, $2 agent, $3 roles of an implicit registration.
INSERT INTO agents AS a (project, id, roles, implicit, last_seen, registered_at)
VALUES ($1, $2, $3::text[], true, statement_timestamp(), statement_timestamp())
ON CONFLICT (project, id) DO UPDATE SET last_seen = statement_timestamp()
RETURNING a.*, statement_timestamp() AS now,
    (SELECT routing FROM projects WHERE slug = $1) AS project_routing,
    (SELECT concurrency_limits FROM projects WHERE slug = $1) AS project_limits

-- name: holding
-- The agent's tasks in progress, counted after admit locked its row (a fresh snapshot holds every
-- claim a racing transaction of the same agent committed meanwhile). $1 project, $2 agent.
SELECT count(*) FROM tasks WHERE project = $1 AND lease_holder = $2 AND status = 'in-progress'

-- name: drop_idle
-- Implicit agents idle a day and holding nothing leave the registry. $1 project, $2 the claimer.
DELETE FROM agents a WHERE a.project = $1 AND a.implicit AND a.id <> $2
  AND a.last_seen < statement_timestamp() - interval '24 hours'
  AND NOT EXISTS (SELECT 1 FROM tasks WHERE project = $1 AND lease_holder = a.id AND status = 'in-progress')

-- name: candidates
-- Ready tasks of the roles whose required labels the agent carries (JSONB containment), the oldest
-- $4 of each (role, priority, group), with how many not-done tasks each unblocks.
-- $1 project, $2 roles (NULL: any), $3 the agent's labels, $4 per group, $5 limit.
WITH ready AS (
    SELECT t.id, t.key, t.role, t.priority, t.seq, t.mission, t.routing, t.requires,
           row_number() OVER (
               PARTITION BY t.role, t.priority, coalesce(t.routing->>'group', t.mission) ORDER BY t.seq
           ) AS rn
    FROM tasks t
    WHERE t.project = $1 AND t.status = 'not-started' AND t.pending_deps = 0
      AND (t.not_before IS NULL OR t.not_before <= statement_timestamp())
      AND ($2::text[] IS NULL OR t.role = ANY($2::text[]))
      AND $3::jsonb @> t.requires
)
SELECT r.key, r.role, r.priority, r.seq, r.mission, r.routing, r.requires,
       (SELECT count(*) FROM task_dependencies d JOIN tasks c ON c.id = d.task_id
        WHERE d.depends_on_id = r.id AND c.status <> 'done') AS unblocks
FROM ready r WHERE r.rn <= $4 ORDER BY r.priority, r.seq LIMIT $5

-- name: lock_key
-- The transaction-scoped lock of one concurrency key ($1: project and key joined by \x1f).
SELECT pg_advisory_xact_lock(hashtextextended($1, 13))

-- name: in_progress_by_key
-- Tasks in progress per concurrency key, counted after the keys' locks: $1 project, $2 keys.
SELECT routing->>'concurrency_key' AS ck, count(*) AS n FROM tasks
WHERE project = $1 AND status = 'in-progress' AND routing IS NOT NULL
  AND routing->>'concurrency_key' = ANY($2::text[])
GROUP BY 1

-- name: agents
-- Every agent of the project with what it holds: $1 project.
SELECT a.*,
       (SELECT count(*) FROM tasks WHERE project = $1 AND lease_holder = a.id AND status = 'in-progress') AS holding
FROM agents a WHERE a.project = $1 ORDER BY a.id

-- name: offers
-- Offers on these tasks: $1 project, $2 keys.
SELECT key, agent, expires_at FROM task_offers WHERE project = $1 AND key = ANY($2::text[])

-- name: cursors
-- Round-robin positions: $1 project, $2 roles.
SELECT role, position FROM routing_cursors WHERE project = $1 AND role = ANY($2::text[])

-- name: turns
-- When each group of these roles was last served: $1 project, $2 roles.
SELECT role, grp, turn FROM group_turns WHERE project = $1 AND role = ANY($2::text[])

-- name: claim
-- Claim the first $7 of the planned keys $2 (in that order) that are still ready and that no racing
-- claim has locked: SKIP LOCKED makes racers fan out over the plan instead of queueing on its head.
-- $1 project, $2 keys in plan order, $3 agent, $4 one token per key, $5 lease seconds, $6 event data.
WITH planned AS (
    SELECT p.key, p.token, p.ord FROM unnest($2::text[], $4::text[]) WITH ORDINALITY AS p(key, token, ord)
), pick AS (
    SELECT t.id AS task_id, planned.token AS claim_token, planned.ord AS claim_ord
    FROM tasks t JOIN planned ON planned.key = t.key
    WHERE t.project = $1 AND t.status = 'not-started' AND t.pending_deps = 0
      AND (t.not_before IS NULL OR t.not_before <= statement_timestamp())
    ORDER BY planned.ord LIMIT $7
    FOR UPDATE OF t SKIP LOCKED
), claimed AS (
    UPDATE tasks
    SET status = 'in-progress', assignee = $3, lease_holder = $3, lease_token = pick.claim_token,
        lease_expires_at = statement_timestamp() + make_interval(secs => $5::float8),
        started_at = coalesce(started_at, statement_timestamp()), updated_at = statement_timestamp(),
        version = version + 1
    FROM pick WHERE tasks.id = pick.task_id
    RETURNING {task_returning}, pick.claim_ord, pick.claim_token
), logged AS (
    INSERT INTO events (project, task_key, kind, status, version, at, data)
    SELECT project, key, 'claimed', status, version, updated_at, $6::jsonb FROM claimed ORDER BY claim_ord
    RETURNING id, task_key
)
SELECT claimed.*, logged.id AS event_id FROM claimed JOIN logged ON logged.task_key = claimed.key
ORDER BY claimed.claim_ord

-- name: turn
-- Record that a group was served (after the claim committed; GREATEST keeps a late writer from
-- moving a turn back): $1 project, $2 role, $3 group, $4 the claim's event id.
INSERT INTO group_turns (project, role, grp, turn) VALUES ($1, $2, $3, $4)
ON CONFLICT (project, role, grp) DO UPDATE SET turn = GREATEST(group_turns.turn, excluded.turn)

-- name: offer
-- Reserve a task for one agent: $1 project, $2 key, $3 agent, $4 until.
INSERT INTO task_offers (project, key, agent, expires_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (project, key) DO UPDATE SET agent = excluded.agent, expires_at = excluded.expires_at

-- name: drop_offer
-- A claimed task's offer is spent: $1 project, $2 key.
DELETE FROM task_offers WHERE project = $1 AND key = $2

-- name: cursor
-- A role's round-robin position: $1 project, $2 role, $3 position.
INSERT INTO routing_cursors (project, role, position) VALUES ($1, $2, $3)
ON CONFLICT (project, role) DO UPDATE SET position = excluded.position
