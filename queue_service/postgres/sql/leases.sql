-- The dispatcher's lease statements (heartbeat, complete; claims are in routing.sql), run on raw asyncpg connections
-- (queue_service/postgres/asyncpg_pool.py) and prepared once per connection by asyncpg's cache.
-- Every lease decision uses the database's clock (statement_timestamp()), never a replica's.
-- {task_returning}: every task column but the lease token, plus the dependency keys in declared
-- order (queue_service/postgres/rows.py).

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

-- name: heartbeat
-- Extend a lease by $4 seconds of database time: $1 project, $2 key, $3 token.
UPDATE tasks SET lease_expires_at = statement_timestamp() + make_interval(secs => $4::float8)
WHERE project = $1 AND key = $2 AND lease_token = $3 AND status = 'in-progress'
  AND lease_expires_at > statement_timestamp()
RETURNING lease_holder, lease_expires_at
