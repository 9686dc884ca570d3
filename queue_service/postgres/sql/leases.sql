-- The dispatcher's lease statements (claim, heartbeat, complete), run on raw asyncpg connections
-- (queue_service/postgres/asyncpg_pool.py) and prepared once per connection by asyncpg's cache.
-- Every lease decision uses the database's clock (statement_timestamp()), never a replica's.
-- {task_returning}: every task column but the lease token, plus the dependency keys in declared
-- order (queue_service/postgres/rows.py).

-- name: claim
-- Claim one task: the conditional UPDATE (still not-started, pending_deps = 0, not_before passed,
-- role allowed) and its 'claimed' event row, in one statement.
-- $1 project, $2 key, $3 agent, $4 token, $5 lease seconds, $6 event data, $7 roles (NULL: any).
WITH claimed AS (
    UPDATE tasks
    SET status = 'in-progress', assignee = $3, lease_holder = $3, lease_token = $4,
        lease_expires_at = statement_timestamp() + make_interval(secs => $5::float8),
        started_at = coalesce(started_at, statement_timestamp()), updated_at = statement_timestamp(),
        version = version + 1
    WHERE project = $1 AND key = $2 AND status = 'not-started' AND pending_deps = 0
      AND (not_before IS NULL OR not_before <= statement_timestamp())
      AND ($7::text[] IS NULL OR role = ANY($7::text[]))
    RETURNING {task_returning}
), logged AS (
    INSERT INTO events (project, task_key, kind, status, version, at, data)
    SELECT project, key, 'claimed', status, version, updated_at, $6::jsonb FROM claimed
    RETURNING id
)
SELECT claimed.*, logged.id AS event_id FROM claimed, logged

-- name: claim_many
-- Claim every listed task that is still ready (the batched claim).
-- $1 project, $2 keys, $3 agent, $4 tokens (one per key), $5 lease seconds, $6 event data,
-- $7 roles (NULL: any). Keys are sorted by the caller so racing batches lock shared rows in one order.
WITH wanted AS (
    SELECT k, tok FROM unnest($2::text[], $4::text[]) AS u(k, tok)
), claimed AS (
    UPDATE tasks
    SET status = 'in-progress', assignee = $3, lease_holder = $3, lease_token = wanted.tok,
        lease_expires_at = statement_timestamp() + make_interval(secs => $5::float8),
        started_at = coalesce(started_at, statement_timestamp()), updated_at = statement_timestamp(),
        version = version + 1
    FROM wanted
    WHERE project = $1 AND key = wanted.k AND status = 'not-started' AND pending_deps = 0
      AND (not_before IS NULL OR not_before <= statement_timestamp())
      AND ($7::text[] IS NULL OR role = ANY($7::text[]))
    RETURNING wanted.tok AS claim_token, {task_returning}
), logged AS (
    INSERT INTO events (project, task_key, kind, status, version, at, data)
    SELECT project, key, 'claimed', status, version, updated_at, $6::jsonb FROM claimed ORDER BY priority, seq
    RETURNING id, task_key
)
SELECT claimed.*, logged.id AS event_id FROM claimed JOIN logged ON logged.task_key = claimed.key
ORDER BY claimed.priority, claimed.seq

-- name: complete
-- Complete a leased task: the update and its event, in one statement (run inside a transaction
-- followed by the dependents' lock and recount, sql/dependents.sql).
-- $1 project, $2 key, $3 token, $4 result. No row: the lease did not match.
WITH done AS (
    UPDATE tasks
    SET status = 'done', result = $4::jsonb, completed_at = statement_timestamp(),
        updated_at = statement_timestamp(), version = version + 1,
        lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL
    WHERE project = $1 AND key = $2 AND lease_token = $3 AND status = 'in-progress'
      AND lease_expires_at > statement_timestamp()
    RETURNING {task_returning}
), logged AS (
    INSERT INTO events (project, task_key, kind, status, version, at, data)
    SELECT project, key, 'completed', status, version, updated_at, '{}'::jsonb FROM done
    RETURNING id
)
SELECT done.*, logged.id AS event_id FROM done, logged

-- name: complete_many
-- Complete many leased tasks in one statement: $1 project, $2 keys, $3 tokens, $4 results (JSON
-- text, NULL for none). Each item matches only with its own live token, so a bad item just returns
-- no row. Dependents are recounted afterwards in the same transaction, as for complete.
WITH items AS (
    SELECT k, tok, res FROM unnest($2::text[], $3::text[], $4::text[]) AS u(k, tok, res)
), done AS (
    UPDATE tasks
    SET status = 'done', result = items.res::jsonb, completed_at = statement_timestamp(),
        updated_at = statement_timestamp(), version = version + 1,
        lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL
    FROM items
    WHERE project = $1 AND key = items.k AND lease_token = items.tok AND status = 'in-progress'
      AND lease_expires_at > statement_timestamp()
    RETURNING items.tok AS done_token, {task_returning}
), logged AS (
    INSERT INTO events (project, task_key, kind, status, version, at, data)
    SELECT project, key, 'completed', status, version, updated_at, '{}'::jsonb FROM done ORDER BY seq
    RETURNING id, task_key
)
SELECT done.*, logged.id AS event_id
FROM done JOIN logged ON logged.task_key = done.key
ORDER BY logged.id

-- name: batch_state
-- Why batch items did not claim/complete: $1 project, $2 keys.
SELECT key, status, pending_deps, not_before, role, priority, lease_expires_at,
       (not_before IS NOT NULL AND not_before > statement_timestamp()) AS not_due
FROM tasks
WHERE project = $1 AND key = ANY($2::text[])

-- name: heartbeat
-- Extend a lease by $4 seconds of database time: $1 project, $2 key, $3 token.
UPDATE tasks SET lease_expires_at = statement_timestamp() + make_interval(secs => $4::float8)
WHERE project = $1 AND key = $2 AND lease_token = $3 AND status = 'in-progress'
  AND lease_expires_at > statement_timestamp()
RETURNING lease_holder, lease_expires_at

-- name: ready_keys
-- The best ready keys in the dispatch order (domain.dispatch_order: priority, then how many
-- not-done tasks each unblocks, then age), by database time: $1 project, $2 roles (NULL: any), $3 limit.
SELECT t.key,
       (SELECT count(*) FROM task_dependencies d JOIN tasks c ON c.id = d.task_id
        WHERE d.depends_on_id = t.id AND c.status <> 'done') AS unblocks
FROM tasks t
WHERE t.project = $1 AND t.status = 'not-started' AND t.pending_deps = 0
  AND (t.not_before IS NULL OR t.not_before <= statement_timestamp())
  AND ($2::text[] IS NULL OR t.role = ANY($2::text[]))
ORDER BY t.priority, unblocks DESC, t.seq
LIMIT $3

-- name: restage
-- Where a popped key that did not claim belongs now: $1 project, $2 key.
SELECT status, pending_deps, not_before, role, priority,
       (not_before IS NOT NULL AND not_before > statement_timestamp()) AS not_due
FROM tasks
WHERE project = $1 AND key = $2
