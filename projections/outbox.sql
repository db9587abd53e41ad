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

-- name: get_order
-- One row always: ``known`` says whether the order has a row of its own yet.
SELECT o.order_ref IS NOT NULL AS known, o.first_paid_position, o.partner_status,
       o.partner_paid_amount, o.paid_amount, o.email_owed, o.withheld,
       r.customer AS reg_customer, r.booking_id AS reg_booking_id, r.amount AS reg_amount,
       r.currency AS reg_currency
FROM (SELECT $1::text AS order_ref) AS k
LEFT JOIN orders AS o ON o.order_ref = k.order_ref
LEFT JOIN registrations AS r ON r.order_ref = k.order_ref

-- name: upsert_order
INSERT INTO orders (order_ref, first_paid_position, partner_status, partner_paid_amount,
                    paid_amount, email_owed, withheld)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (order_ref) DO UPDATE
SET first_paid_position = EXCLUDED.first_paid_position,
    partner_status = EXCLUDED.partner_status,
    partner_paid_amount = EXCLUDED.partner_paid_amount,
    paid_amount = EXCLUDED.paid_amount,
    email_owed = EXCLUDED.email_owed,
    withheld = EXCLUDED.withheld

-- name: register
-- Keeps the registration (the first one stands) and, in the same round trip, answers the
-- order's row when an e-mail is owed (none otherwise: the usual case, registered first).
WITH kept AS (
    INSERT INTO registrations (order_ref, customer, booking_id, amount, currency)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (order_ref) DO NOTHING
)
SELECT true AS known, first_paid_position, partner_status, partner_paid_amount, paid_amount,
       email_owed, withheld
FROM orders WHERE order_ref = $1 AND email_owed IS NOT NULL

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
