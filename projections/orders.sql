-- name: schema
-- Every notification about an order, as mapped (ledger.orderstatus). ``late`` is not
-- stored: it depends on arrival order and is computed from positions when read.
CREATE TABLE order_history (
    event_id uuid PRIMARY KEY,
    provider text NOT NULL,
    order_id text NOT NULL,
    position bigint NOT NULL,
    provider_status text NOT NULL,
    status text NOT NULL,
    rank integer NOT NULL,
    amount text NULL,
    currency text NULL,
    payment_method text NULL,
    customer text NULL
);
CREATE INDEX order_history_order_idx ON order_history (provider, order_id, position);

-- The order as the highest-ranked notification says (ties: the larger event id), so the
-- row does not depend on arrival order.
CREATE TABLE orders (
    provider text NOT NULL,
    order_id text NOT NULL,
    status text NOT NULL,
    rank integer NOT NULL,
    decided_by uuid NOT NULL,
    amount text NULL,
    currency text NULL,
    payment_method text NULL,
    customer text NULL,
    PRIMARY KEY (provider, order_id)
);

-- name: insert_history
INSERT INTO order_history (event_id, provider, order_id, position, provider_status, status,
                           rank, amount, currency, payment_method, customer)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                     $7::int[], $8::text[], $9::text[], $10::text[], $11::text[])
ON CONFLICT (event_id) DO NOTHING

-- name: upsert_orders
INSERT INTO orders AS o (provider, order_id, status, rank, decided_by, amount, currency,
                         payment_method, customer)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::uuid[], $6::text[],
                     $7::text[], $8::text[], $9::text[])
ON CONFLICT (provider, order_id) DO UPDATE
SET status = excluded.status, rank = excluded.rank, decided_by = excluded.decided_by,
    amount = excluded.amount, currency = excluded.currency,
    payment_method = excluded.payment_method, customer = excluded.customer
WHERE (excluded.rank, excluded.decided_by) > (o.rank, o.decided_by)

-- name: order
SELECT provider, order_id, status, amount, currency, payment_method, customer
FROM orders WHERE provider = $1 AND order_id = $2

-- name: history
SELECT event_id, position, provider_status, status, amount, payment_method
FROM order_history WHERE provider = $1 AND order_id = $2 ORDER BY position

-- name: digest_orders
SELECT provider, order_id, status, decided_by, amount, currency, payment_method, customer
FROM orders ORDER BY provider, order_id

-- name: digest_history
SELECT event_id, provider, order_id, provider_status, status, amount, currency,
       payment_method, customer
FROM order_history ORDER BY event_id
