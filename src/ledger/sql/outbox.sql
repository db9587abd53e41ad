-- name: claim
-- Take due messages nobody holds: SKIP LOCKED lets workers in many processes claim
-- disjoint sets; the lease (and its token) keeps the message theirs after the commit.
WITH due AS (
    SELECT id FROM public.outbox
    WHERE state = 'pending' AND due_at <= now()
      AND (lease_until IS NULL OR lease_until < now())
    ORDER BY due_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE public.outbox o
SET lease_until = now() + make_interval(secs => $2::float8),
    lease_token = $3,
    attempts = o.attempts + 1
FROM due
WHERE o.id = due.id
RETURNING o.id, o.kind, o.target, o.payload, o.attempts

-- name: finish
-- Only the lease holder may record the outcome: a worker whose lease expired (and whose
-- message another worker took) changes nothing.
UPDATE public.outbox o
SET state = r.state,
    due_at = CASE WHEN r.state = 'pending'
                  THEN now() + make_interval(secs => r.delay) ELSE o.due_at END,
    lease_until = NULL,
    lease_token = NULL,
    last_error = r.error,
    delivered_at = CASE WHEN r.state = 'delivered' THEN now() ELSE o.delivered_at END,
    dead_at = CASE WHEN r.state = 'dead' THEN now() ELSE o.dead_at END
FROM unnest($1::uuid[], $2::text[], $3::float8[], $4::text[]) AS r(id, state, delay, error)
WHERE o.id = r.id AND o.lease_token = $5
RETURNING o.id

-- name: record_attempts
INSERT INTO public.outbox_attempts
    (message_id, attempt, started_at, latency_ms, status, outcome, excerpt)
SELECT * FROM unnest($1::uuid[], $2::int[], $3::timestamptz[], $4::int[], $5::int[],
                     $6::text[], $7::text[])

-- name: next_due
SELECT extract(epoch FROM (min(greatest(due_at, coalesce(lease_until, due_at))) - now()))
FROM public.outbox WHERE state = 'pending'

-- name: list
SELECT id, kind, target, state, attempts, due_at, created_at, delivered_at, dead_at,
       last_error, order_ref, customer, source_position
FROM public.outbox
WHERE ($1::text IS NULL OR state = $1)
  AND ($2::text IS NULL OR order_ref ILIKE '%' || $2 || '%' OR customer ILIKE '%' || $2 || '%')
ORDER BY created_at DESC, id
LIMIT $3

-- name: get
SELECT id, kind, target, state, attempts, due_at, created_at, delivered_at, dead_at,
       last_error, order_ref, customer, source_position
FROM public.outbox WHERE id = $1

-- name: attempts
SELECT attempt, started_at, latency_ms, status, outcome, excerpt
FROM public.outbox_attempts WHERE message_id = $1 ORDER BY id

-- name: retry
-- An operator's retry: due now. A message a worker holds right now is left alone (it is
-- being sent); attempts count on from where they were.
UPDATE public.outbox
SET state = 'pending', due_at = now(), dead_at = NULL
WHERE id = $1
  AND (state = 'dead' OR (state = 'pending' AND (lease_until IS NULL OR lease_until < now())))
RETURNING id

-- name: lock_message
SELECT state FROM public.outbox WHERE id = $1 FOR UPDATE
