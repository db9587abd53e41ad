-- Statements of the projection runner and read-model access (ADR 0005).

-- name: register
-- First start of a projection: generation 1. A concurrent second registrar waits on the
-- primary key and then does nothing; RETURNING tells the winner to create the schema.
INSERT INTO projections (name, version, live_generation, state)
VALUES ($1, $2, 1, 'running')
ON CONFLICT DO NOTHING
RETURNING name

-- name: add_generation
INSERT INTO projection_tracking (name, generation) VALUES ($1, $2)
ON CONFLICT DO NOTHING

-- name: create_schema
SELECT ledger_create_projection_schema($1)

-- name: schema_exists
SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)

-- name: get_projection
SELECT name, version, live_generation, building_generation, state, error, updated_at
FROM projections
WHERE name = $1

-- name: lock_projection
SELECT name, version, live_generation, building_generation, state, error, updated_at
FROM projections
WHERE name = $1
FOR UPDATE

-- name: all_projections
SELECT name, version, live_generation, building_generation, state, error, updated_at
FROM projections
ORDER BY name

-- name: max_generation
SELECT coalesce(max(generation), 0) FROM projection_tracking WHERE name = $1

-- name: start_building
UPDATE projections
SET building_generation = $2, state = 'rebuilding', error = NULL, updated_at = now()
WHERE name = $1

-- name: lock_tracking
-- Taken at the start of every batch transaction: a second runner applying the same
-- generation (split brain) waits here, then sees the moved position and backs off.
SELECT position FROM projection_tracking WHERE name = $1 AND generation = $2 FOR UPDATE

-- name: tracking_position
SELECT position FROM projection_tracking WHERE name = $1 AND generation = $2

-- name: advance
UPDATE projection_tracking SET position = $3, updated_at = now()
WHERE name = $1 AND generation = $2

-- name: notify_progress
SELECT pg_notify('ledger_projections', $1)

-- name: read_batch
-- Every event after the position (so the position advances past other topics too), with
-- the state only for the projection's topics: skipped events cost a few bytes each.
SELECT notification_id, originator_id, originator_version, topic,
       CASE WHEN topic = ANY($3::text[]) THEN state END AS state
FROM stored_events
WHERE notification_id > $1
ORDER BY notification_id
LIMIT $2

-- name: switch
UPDATE projections
SET live_generation = $2, building_generation = NULL, version = $3,
    state = CASE WHEN state = 'failed' THEN 'failed' ELSE 'running' END, updated_at = now()
WHERE name = $1

-- name: fail
UPDATE projections SET state = 'failed', error = $2, updated_at = now() WHERE name = $1

-- name: recover
UPDATE projections
SET state = CASE WHEN building_generation IS NULL THEN 'running' ELSE 'rebuilding' END,
    error = NULL, updated_at = now()
WHERE name = $1 AND state = 'failed'

-- name: retired_generations
-- Generations neither live nor building, once the switch is older than the grace period.
SELECT t.name, t.generation
FROM projection_tracking t
JOIN projections p ON p.name = t.name
WHERE t.generation <> p.live_generation
  AND t.generation IS DISTINCT FROM p.building_generation
  AND p.updated_at < now() - make_interval(secs => $1)

-- name: drop_tracking
DELETE FROM projection_tracking WHERE name = $1 AND generation = $2

-- name: status
SELECT p.name, p.version, p.live_generation, p.building_generation, p.state, p.error,
       p.updated_at, lt.position AS position, bt.position AS building_position
FROM projections p
LEFT JOIN projection_tracking lt ON lt.name = p.name AND lt.generation = p.live_generation
LEFT JOIN projection_tracking bt ON bt.name = p.name AND bt.generation = p.building_generation
ORDER BY p.name

-- name: live_position
SELECT t.position, p.live_generation
FROM projections p
JOIN projection_tracking t ON t.name = p.name AND t.generation = p.live_generation
WHERE p.name = $1

-- name: live_generation
SELECT live_generation FROM projections WHERE name = $1

-- name: first_after
SELECT state FROM stored_events WHERE notification_id > $1 ORDER BY notification_id LIMIT 1

-- name: lock_generation
-- Wait for a generation's lock (a rebuild's own processes queue for it; ADR 0026).
SELECT pg_advisory_lock($1)

-- name: unlock_generation
SELECT pg_advisory_unlock($1)

-- name: lock_queued
-- Whether a session of this database waits for the advisory lock with this 64-bit key
-- (PostgreSQL keeps such a key as classid = high 32 bits, objid = low 32 bits, objsubid 1).
SELECT EXISTS (
    SELECT FROM pg_locks
    WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid = ((($1::bigint) >> 32) & 4294967295)::oid
      AND objid = (($1::bigint) & 4294967295)::oid
)
