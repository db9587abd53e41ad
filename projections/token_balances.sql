-- name: schema
-- One credit per Mayar payment (data.id; the event id when there is none). When several
-- deliveries name the same payment, the one with the smallest event id is the credit, so
-- the choice does not depend on arrival order.
CREATE TABLE credits (
    payment_key text PRIMARY KEY,
    event_id uuid NOT NULL,
    customer text NOT NULL,
    package text NOT NULL,
    tokens bigint NOT NULL CHECK (tokens > 0),
    position bigint NOT NULL
);
CREATE INDEX credits_customer_idx ON credits (customer);
-- Audit timelines find the credit an event made (ledger.audit.queries.timeline): without it,
-- a scan of every credit per timeline request (ADR 0020).
CREATE INDEX credits_event_idx ON credits (event_id);

-- One row per Spent event; balance_after comes from the event (decided under the lock).
CREATE TABLE spends (
    event_id uuid PRIMARY KEY,
    customer text NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    idempotency_key text NOT NULL,
    balance_after bigint NOT NULL,
    position bigint NOT NULL
);
CREATE INDEX spends_customer_idx ON spends (customer);

-- Totals per customer: each batch adds what it changed (a replaced credit moves its tokens
-- from the old row's customer to the new one's).
CREATE TABLE accounts (
    customer text PRIMARY KEY,
    credited bigint NOT NULL,
    spent bigint NOT NULL,
    last_position bigint NOT NULL
);

-- name: existing_credits
SELECT payment_key, event_id, customer, tokens FROM credits WHERE payment_key = ANY($1::text[])

-- name: upsert_credits
INSERT INTO credits (payment_key, event_id, customer, package, tokens, position)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::bigint[])
ON CONFLICT (payment_key) DO UPDATE
SET event_id = excluded.event_id, customer = excluded.customer, package = excluded.package,
    tokens = excluded.tokens, position = excluded.position
WHERE excluded.event_id < credits.event_id

-- name: insert_spends
INSERT INTO spends (event_id, customer, amount, idempotency_key, balance_after, position)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[])
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id

-- name: add_to_accounts
INSERT INTO accounts AS a (customer, credited, spent, last_position)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
ON CONFLICT (customer) DO UPDATE
SET credited = a.credited + excluded.credited, spent = a.spent + excluded.spent,
    last_position = greatest(a.last_position, excluded.last_position)

-- name: account
SELECT customer, credited, spent, credited - spent AS tokens, last_position
FROM accounts WHERE customer = $1

-- name: balance
SELECT coalesce((SELECT credited - spent FROM accounts WHERE customer = $1), 0)

-- name: digest_credits
SELECT payment_key, event_id, customer, package, tokens FROM credits ORDER BY payment_key

-- name: digest_spends
SELECT event_id, customer, amount, idempotency_key, balance_after FROM spends ORDER BY event_id

-- name: digest_accounts
SELECT customer, credited, spent FROM accounts
WHERE credited <> 0 OR spent <> 0
ORDER BY customer
