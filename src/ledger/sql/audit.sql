-- Hash chain (src/ledger/chain.py) ------------------------------------------------------

-- name: chain_before
SELECT notification_id, hash
FROM stored_events
WHERE notification_id < $1
ORDER BY notification_id DESC
LIMIT 1

-- name: chain_page
SELECT notification_id, originator_id, originator_version, topic, state, hash
FROM stored_events
WHERE notification_id > $1
ORDER BY notification_id
LIMIT $2

-- name: chain_head
SELECT notification_id, hash
FROM stored_events
ORDER BY notification_id DESC
LIMIT 1
