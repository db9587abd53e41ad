-- name: schema
-- Every notification about an order, as mapped (ledger.orderstatus). The order itself is
-- folded from these rows when read (highest rank wins, ties to the larger event id), and
-- ``late`` is computed from positions then: nothing here depends on arrival order except
-- ``position``, which the digest leaves out.
-- The key: an event belongs to exactly one order, so the key also makes a replayed event a
-- no-op, and an order's rows are one index range. ``provider_ref`` is the provider's own id
-- for the order (Xendit's invoice id), indexed where present so an order is found by it too.
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
    PRIMARY KEY (provider, order_id, event_id)
);
CREATE INDEX order_history_ref ON order_history (provider, provider_ref)
    WHERE provider_ref IS NOT NULL;

-- name: insert_history
INSERT INTO order_history (event_id, provider, order_id, position, provider_status, status,
                           amount, currency, payment_method, customer, provider_ref, source)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                     $12::text[])
ON CONFLICT (provider, order_id, event_id) DO NOTHING

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
       payment_method, customer, source
FROM order_history h JOIN wanted w ON h.order_id = w.order_id
WHERE h.provider = $1 ORDER BY position

-- name: digest
SELECT event_id, provider, order_id, provider_status, status, amount, currency,
       payment_method, customer, provider_ref, source
FROM order_history ORDER BY provider, order_id, event_id
