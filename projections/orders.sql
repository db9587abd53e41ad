-- name: schema
-- Every notification about an order, as mapped (ledger.orderstatus). The order itself is
-- folded from these rows when read (highest rank wins, ties to the larger event id), and
-- ``late`` is computed from positions then: nothing here depends on arrival order except
-- ``position``, which the digest leaves out.
-- One index only (the key): an event belongs to exactly one order, so the key also makes a
-- replayed event a no-op, and an order's rows are one index range.
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
    PRIMARY KEY (provider, order_id, event_id)
);

-- name: insert_history
INSERT INTO order_history (event_id, provider, order_id, position, provider_status, status,
                           amount, currency, payment_method, customer)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::text[])
ON CONFLICT (provider, order_id, event_id) DO NOTHING

-- name: history
SELECT event_id, position, provider_status, status, amount, currency, payment_method, customer
FROM order_history WHERE provider = $1 AND order_id = $2 ORDER BY position

-- name: digest
SELECT event_id, provider, order_id, provider_status, status, amount, currency,
       payment_method, customer
FROM order_history ORDER BY provider, order_id, event_id
