-- name: schema
-- Deliveries that need a person, one row per (event, reason).
CREATE TABLE review_items (
    event_id uuid NOT NULL,
    reason text NOT NULL,
    provider text NOT NULL,
    kind text NOT NULL,
    dedup_key text NOT NULL,
    detail text NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (event_id, reason)
);
CREATE INDEX review_items_position_idx ON review_items (position);

-- name: insert
INSERT INTO review_items (event_id, reason, provider, kind, dedup_key, detail, position)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::bigint[])
ON CONFLICT (event_id, reason) DO NOTHING

-- name: page
SELECT event_id, reason, provider, kind, dedup_key, detail, position
FROM review_items
WHERE position > $1 AND ($3::text IS NULL OR reason = $3)
ORDER BY position, reason
LIMIT $2

-- name: digest
SELECT event_id, reason, provider, kind, dedup_key, detail
FROM review_items ORDER BY event_id, reason
