-- name: append
-- One statement, so one implicit transaction: a batch of events commits (or not) at once.
-- Existing ids (redeliveries) are skipped; RETURNING names what was written.
INSERT INTO stored_events (originator_id, originator_version, topic, state)
SELECT id, version, topic, state
FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bytea[]) AS t(id, version, topic, state)
ON CONFLICT DO NOTHING
RETURNING originator_id, originator_version, notification_id

-- name: existing
SELECT originator_id, originator_version, notification_id, topic, state
FROM stored_events
WHERE (originator_id, originator_version) IN (
    SELECT * FROM unnest($1::uuid[], $2::bigint[])
)

-- name: read_after
SELECT notification_id, originator_id, originator_version, topic, state
FROM stored_events
WHERE notification_id > $1
ORDER BY notification_id
LIMIT $2

-- name: read_topics_after
SELECT notification_id, originator_id, originator_version, topic, state
FROM stored_events
WHERE notification_id > $1 AND topic = ANY($3::text[])
ORDER BY notification_id
LIMIT $2

-- name: get_event
SELECT notification_id, originator_id, originator_version, topic, state
FROM stored_events
WHERE originator_id = $1
ORDER BY originator_version
LIMIT 1

-- name: head
SELECT coalesce(max(notification_id), 0) FROM stored_events
