-- name: schema
-- Every notification about an order, as mapped (ledger.orderstatus). The order itself is
-- folded from these rows when read (highest rank wins, ties to the larger event id), and
-- ``late`` is computed from positions then: nothing here depends on arrival order except
-- ``position``, which the digest leaves out.
-- The key: an event belongs to exactly one order, so the key also makes a replayed event a
-- no-op, and an order's rows are one index range. ``provider_ref`` is the provider's own id
-- for the order (Xendit's invoice id), indexed where present so an order is found by it too.
-- ``amount`` is what the row notes (paid if stated, else the total); ``total_amount`` the
-- order's total as the provider states it; ``paid_amount`` what it says was paid.
-- ``held``: a notification that lowers what the merchant keeps, from a provider whose
-- notifications must be confirmed by its status API before they count (ADR 0016).
CREATE TABLE order_history (
    provider text NOT NULL,
    order_id text NOT NULL,
    event_id uuid NOT NULL,
    position bigint NOT NULL,
    provider_status text NOT NULL,
    status text NOT NULL,
    amount text NULL,
    currency text NULL,
    payment_method text NULL,
    customer text NULL,
    provider_ref text NULL,
    -- 'notification' (a webhook) or 'reconciliation' (a provider's status API, ADR 0017)
    source text NOT NULL DEFAULT 'notification',
    total_amount text NULL,
    paid_amount text NULL,
    held boolean NOT NULL DEFAULT false,
    PRIMARY KEY (provider, order_id, event_id)
);
CREATE INDEX order_history_ref ON order_history (provider, provider_ref)
    WHERE provider_ref IS NOT NULL;
CREATE INDEX order_history_held ON order_history (provider, order_id, position) WHERE held;

-- The merchant's registration of an order (PUT /v1/orders/..., ADR 0016): one per order.
CREATE TABLE order_registrations (
    provider text NOT NULL,
    order_id text NOT NULL,
    event_id uuid NOT NULL,
    position bigint NOT NULL,
    registered_at timestamptz NOT NULL,
    customer text NOT NULL,
    amount text NOT NULL,
    currency text NOT NULL,
    package text NULL,
    booking_id text NULL,
    expires_at timestamptz NULL,
    metadata jsonb NOT NULL,
    PRIMARY KEY (provider, order_id)
);
CREATE INDEX order_registrations_at ON order_registrations (registered_at);

-- Each answer of a provider's status API, beside what the ledger said before it (ADR 0017):
-- ``state`` missed (the API knew more: recovered), unconfirmed (it contradicted a held
-- notification), mismatch (it disagreed otherwise), ok (it agreed).
CREATE TABLE order_checks (
    event_id uuid PRIMARY KEY,
    provider text NOT NULL,
    order_id text NOT NULL,
    position bigint NOT NULL,
    checked_at timestamptz NOT NULL,
    reading text NOT NULL,
    provider_status text NULL,
    ledger_status text NULL,
    state text NOT NULL,
    resolution text NOT NULL
);
CREATE INDEX order_checks_position ON order_checks (position);
CREATE INDEX order_checks_order ON order_checks (provider, order_id, position);

-- name: insert_history
INSERT INTO order_history (event_id, provider, order_id, position, provider_status, status,
                           amount, currency, payment_method, customer, provider_ref, source,
                           total_amount, paid_amount, held)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                     $12::text[], $13::text[], $14::text[], $15::boolean[])
ON CONFLICT (provider, order_id, event_id) DO NOTHING

-- name: insert_registration
INSERT INTO order_registrations (provider, order_id, event_id, position, registered_at,
                                 customer, amount, currency, package, booking_id, expires_at,
                                 metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb)
ON CONFLICT (provider, order_id) DO NOTHING

-- name: insert_check
INSERT INTO order_checks (event_id, provider, order_id, position, checked_at, reading,
                          provider_status, ledger_status, state, resolution)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (event_id) DO NOTHING

-- name: history_before
-- An order's rows before a position (what the ledger knew when a check answered).
SELECT event_id, position, provider_status, status, amount, currency, payment_method,
       customer, source, total_amount, paid_amount, held
FROM order_history WHERE provider = $1 AND order_id = $2 AND position < $3
ORDER BY position

-- name: history
-- $2 is the order id, or else the provider's own id for the order (an order id wins).
WITH wanted AS (
    SELECT coalesce(
        (SELECT order_id FROM order_history WHERE provider = $1 AND order_id = $2 LIMIT 1),
        (SELECT order_id FROM order_history WHERE provider = $1 AND provider_ref = $2
         ORDER BY position LIMIT 1)
    ) AS order_id
)
SELECT h.order_id, event_id, position, provider_status, status, amount, currency,
       payment_method, customer, source, total_amount, paid_amount, held
FROM order_history h JOIN wanted w ON h.order_id = w.order_id
WHERE h.provider = $1 ORDER BY position

-- name: registration
SELECT provider, order_id, event_id, position, registered_at, customer, amount, currency,
       package, booking_id, expires_at, metadata::text AS metadata
FROM order_registrations WHERE provider = $1 AND order_id = $2

-- name: checks
-- Answers of the status APIs, in log order, after a position; optionally one state.
SELECT event_id, provider, order_id, position, checked_at, reading, provider_status,
       ledger_status, state, resolution
FROM order_checks
WHERE position > $1 AND ($3::text IS NULL OR state = $3)
  AND ($4::timestamptz IS NULL OR checked_at >= $4)
ORDER BY position
LIMIT $2

-- name: check_counts
-- How many orders each state holds among checks in [$1, $2) (the daily summary).
SELECT provider, state, count(DISTINCT order_id) AS orders
FROM order_checks WHERE checked_at >= $1 AND checked_at < $2
GROUP BY provider, state

-- name: candidates
-- Orders the reconciler should ask about now ($1 provider or NULL, $2 limit, $3 the cutoff:
-- now minus LEDGER_RECONCILE_AFTER):
-- * a held notification with no answer of the status API after it (at once, any age);
-- * a registered order with nothing paid yet, registered before the cutoff, not expired
--   before the cutoff, and not asked since the cutoff (each such order is asked again every
--   LEDGER_RECONCILE_AFTER, for at most 7 days after its registration).
SELECT provider, order_id, 'held' AS why, min(position) AS position
FROM order_history h
WHERE held AND ($1::text IS NULL OR provider = $1)
  AND NOT EXISTS (
      SELECT 1 FROM order_checks c
      WHERE c.provider = h.provider AND c.order_id = h.order_id AND c.position > h.position
  )
GROUP BY provider, order_id
UNION ALL
SELECT r.provider, r.order_id, 'pending' AS why, r.position
FROM order_registrations r
WHERE ($1::text IS NULL OR r.provider = $1)
  AND r.registered_at < $3 AND r.registered_at > $3 - interval '7 days'
  AND (r.expires_at IS NULL OR r.expires_at > $3)
  AND NOT EXISTS (
      SELECT 1 FROM order_history h
      WHERE h.provider = r.provider AND h.order_id = r.order_id AND NOT h.held
        AND h.status IN ('paid', 'partially_refunded', 'refunded', 'partially_charged_back',
                         'charged_back')
  )
  AND NOT EXISTS (
      SELECT 1 FROM order_checks c
      WHERE c.provider = r.provider AND c.order_id = r.order_id AND c.checked_at >= $3
  )
ORDER BY position
LIMIT $2

-- name: digest
SELECT event_id, provider, order_id, provider_status, status, amount, currency,
       payment_method, customer, provider_ref, source, total_amount, paid_amount, held
FROM order_history ORDER BY provider, order_id, event_id

-- name: digest_registrations
SELECT provider, order_id, event_id, registered_at, customer, amount, currency, package,
       booking_id, expires_at, metadata::text
FROM order_registrations ORDER BY provider, order_id

-- name: digest_checks
SELECT event_id, provider, order_id, checked_at, reading, provider_status, ledger_status,
       state, resolution
FROM order_checks ORDER BY event_id

-- name: review_unconfirmed
-- Held notifications a status-API answer contradicted and none confirmed since (ADR 0016):
-- kept in the log, never applied, listed in /v1/review under reason 'unconfirmed'.
SELECT h.event_id, h.position, 'unconfirmed' AS reason,
       'order ' || h.order_id || ': ' || c.resolution AS detail,
       h.provider, h.provider_status AS kind,
       coalesce(convert_from(e.state, 'UTF8')::jsonb ->> 'dedup_key', '') AS dedup_key
FROM order_history h
JOIN LATERAL (
    SELECT resolution FROM order_checks c
    WHERE c.provider = h.provider AND c.order_id = h.order_id AND c.position > h.position
      AND c.state = 'unconfirmed'
    ORDER BY c.position DESC LIMIT 1
) c ON true
LEFT JOIN public.stored_events e ON e.originator_id = h.event_id AND e.originator_version = 1
WHERE h.held AND h.position > $1 AND ($3::text IS NULL OR $3 = 'unconfirmed')
  AND NOT EXISTS (
      SELECT 1 FROM order_history x
      WHERE x.provider = h.provider AND x.order_id = h.order_id AND x.position > h.position
        AND x.source = 'reconciliation' AND x.status = h.status
  )
ORDER BY h.position
LIMIT $2
