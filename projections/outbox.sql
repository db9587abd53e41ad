-- name: schema
-- Per generation: what the outbox projector has already decided for each order.
CREATE TABLE IF NOT EXISTS orders (
    order_ref text PRIMARY KEY,            -- provider:order id
    first_paid_position bigint,            -- the event that first made it paid
    partner_status text,                   -- LUNAS | DP, as last reported to the partner
    partner_paid_amount numeric,
    paid_amount numeric,                   -- the most any paid fact said was paid
    email_owed bytea,                      -- the paid fact whose e-mail waits for an address
    withheld text                          -- over | currency: the amount rule withheld effects
);

-- The registrations the effects need (ADR 0016): one per order, the first one stands.
CREATE TABLE IF NOT EXISTS registrations (
    order_ref text PRIMARY KEY,            -- provider:order id
    customer text NOT NULL,
    booking_id text,
    amount text NOT NULL,
    currency text NOT NULL
);

-- name: get_orders
-- One row per order of the batch ($1, distinct): ``known`` says whether it has a row of its
-- own yet; its registration, if any.
SELECT k.order_ref, o.order_ref IS NOT NULL AS known, o.first_paid_position,
       o.partner_status, o.partner_paid_amount, o.paid_amount, o.email_owed, o.withheld,
       r.customer AS reg_customer, r.booking_id AS reg_booking_id, r.amount AS reg_amount,
       r.currency AS reg_currency
FROM unnest($1::text[]) AS k (order_ref)
LEFT JOIN orders AS o ON o.order_ref = k.order_ref
LEFT JOIN registrations AS r ON r.order_ref = k.order_ref

-- name: upsert_orders
-- The batch's final state of each order it changed ($1 distinct).
INSERT INTO orders (order_ref, first_paid_position, partner_status, partner_paid_amount,
                    paid_amount, email_owed, withheld)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::numeric[], $5::numeric[],
                     $6::bytea[], $7::text[])
ON CONFLICT (order_ref) DO UPDATE
SET first_paid_position = EXCLUDED.first_paid_position,
    partner_status = EXCLUDED.partner_status,
    partner_paid_amount = EXCLUDED.partner_paid_amount,
    paid_amount = EXCLUDED.paid_amount,
    email_owed = EXCLUDED.email_owed,
    withheld = EXCLUDED.withheld

-- name: insert_registrations
-- The batch's first registration of each order that had none ($1 distinct): the first
-- one stands.
INSERT INTO registrations (order_ref, customer, booking_id, amount, currency)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
ON CONFLICT (order_ref) DO NOTHING

-- name: insert_messages
-- Fully qualified: the outbox is outside the generation schemas, so a rebuild re-derives
-- the same ids and inserts (and therefore sends) nothing twice.
INSERT INTO public.outbox (id, kind, target, source_event_id, source_position, order_ref,
                           customer, payload)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::bigint[],
                     $6::text[], $7::text[], $8::bytea[])
ON CONFLICT (id) DO NOTHING

-- name: digest_rows
SELECT order_ref, first_paid_position, partner_status, partner_paid_amount::text,
       paid_amount::text, encode(sha256(email_owed), 'hex'), withheld
FROM orders ORDER BY order_ref

-- name: digest_registrations
SELECT order_ref, customer, booking_id, amount, currency
FROM registrations ORDER BY order_ref

-- name: withheld
-- Orders whose effects the amount rule withheld (amount_mismatch), for operators.
SELECT order_ref, withheld, paid_amount::text AS paid_amount
FROM orders WHERE withheld IS NOT NULL ORDER BY order_ref
