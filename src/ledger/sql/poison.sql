-- Poisoned events (src/ledger/readmodels/poison.py, ADR 0010). Every statement runs in the caller's
-- transaction: the consumer's tracking position and these rows commit together.

-- name: record
-- A repeat (a retry that fails again, or a second meeting) adds its attempts and keeps the
-- first sighting.
INSERT INTO poisoned_events (consumer, generation, position, event_id, topic, error, attempts,
                             first_seen, last_seen)
VALUES ($1, $2, $3, $4, $5, $6, $7, coalesce($8, now()), now())
ON CONFLICT (consumer, generation, position) DO UPDATE
SET error = EXCLUDED.error,
    attempts = poisoned_events.attempts + EXCLUDED.attempts,
    last_seen = now(),
    resolved_at = NULL

-- name: open_for_retry
-- What a retry re-applies, in log order; the row locks keep two retries from racing.
SELECT position, event_id, topic
FROM poisoned_events
WHERE consumer = $1 AND generation = $2 AND resolved_at IS NULL
ORDER BY position
FOR UPDATE

-- name: event
SELECT notification_id, originator_id, originator_version, topic, state
FROM stored_events
WHERE notification_id = $1

-- name: resolve
UPDATE poisoned_events
SET resolved_at = now(), last_seen = now(), attempts = attempts + 1
WHERE consumer = $1 AND generation = $2 AND position = $3

-- name: still_failing
UPDATE poisoned_events
SET error = $4, last_seen = now(), attempts = attempts + 1
WHERE consumer = $1 AND generation = $2 AND position = $3

-- name: drop_generation
DELETE FROM poisoned_events WHERE consumer = $1 AND generation = $2

-- name: open_counts
-- Unresolved rows per consumer and generation, for the generations that matter: each
-- projection's live and building ones, and the audit index (generation 0).
SELECT pe.consumer, pe.generation, count(*) AS n
FROM poisoned_events pe
LEFT JOIN projections p ON p.name = pe.consumer
WHERE pe.resolved_at IS NULL
  AND (pe.consumer = 'audit_index'
       OR pe.generation = p.live_generation
       OR pe.generation = p.building_generation)
GROUP BY pe.consumer, pe.generation

-- name: open_entries
-- The first $1 unresolved rows of each of those (consumer, generation) pairs.
SELECT consumer, generation, position, event_id, topic, error, attempts, first_seen, last_seen
FROM (
    SELECT pe.*, row_number() OVER (PARTITION BY pe.consumer, pe.generation
                                    ORDER BY pe.position) AS rn
    FROM poisoned_events pe
    LEFT JOIN projections p ON p.name = pe.consumer
    WHERE pe.resolved_at IS NULL
      AND (pe.consumer = 'audit_index'
           OR pe.generation = p.live_generation
           OR pe.generation = p.building_generation)
) ranked
WHERE rn <= $1
ORDER BY consumer, generation, position

-- name: review_page
-- Review items for what is set aside by the live generations and the audit index: position
-- after $1, at most $2, optionally one reason $3 ("poisoned" matches every consumer).
SELECT pe.position, pe.event_id, 'poisoned:' || pe.consumer AS reason, pe.error AS detail,
       e.topic, e.state
FROM poisoned_events pe
LEFT JOIN projections p ON p.name = pe.consumer
JOIN stored_events e ON e.notification_id = pe.position
WHERE pe.resolved_at IS NULL AND pe.position > $1
  AND (pe.consumer = 'audit_index' OR pe.generation = p.live_generation)
  AND ($3::text IS NULL OR $3 = 'poisoned' OR $3 = 'poisoned:' || pe.consumer)
ORDER BY pe.position, reason
LIMIT $2
