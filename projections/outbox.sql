-- name: schema
-- Per generation: what the outbox projector has already decided for each order.
CREATE TABLE IF NOT EXISTS orders (
    order_ref text PRIMARY KEY,            -- provider:order id
    first_paid_position bigint,            -- the event that first made it paid
    partner_status text,                   -- LUNAS | DP, as last reported to the partner
    partner_paid_amount numeric
);

-- name: get_order
SELECT first_paid_position, partner_status, partner_paid_amount
FROM orders WHERE order_ref = $1

-- name: upsert_order
INSERT INTO orders (order_ref, first_paid_position, partner_status, partner_paid_amount)
VALUES ($1, $2, $3, $4)
ON CONFLICT (order_ref) DO UPDATE
SET first_paid_position = EXCLUDED.first_paid_position,
    partner_status = EXCLUDED.partner_status,
    partner_paid_amount = EXCLUDED.partner_paid_amount

-- name: insert_messages
-- Fully qualified: the outbox is outside the generation schemas, so a rebuild re-derives
-- the same ids and inserts (and therefore sends) nothing twice.
INSERT INTO public.outbox (id, kind, target, source_event_id, source_position, order_ref,
                           customer, payload)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::bigint[],
                     $6::text[], $7::text[], $8::bytea[])
ON CONFLICT (id) DO NOTHING

-- name: digest_rows
SELECT order_ref, first_paid_position, partner_status, partner_paid_amount::text
FROM orders ORDER BY order_ref
