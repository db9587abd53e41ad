-- name: schema
-- One row per (customer, license code): the maxima the fold keeps (ledger.folding). The
-- status is decided at query time against the clock, never stored.
CREATE TABLE subscriptions (
    customer text NOT NULL,
    license_code text NOT NULL,
    expiry timestamptz NULL,             -- latest grant's period end ('infinity': no end)
    cancelled_through timestamptz NULL,  -- latest period end a cancellation covers
    expired_through timestamptz NULL,    -- latest period end an expiry covers
    last_position bigint NOT NULL,
    PRIMARY KEY (customer, license_code)
);

-- name: upsert
INSERT INTO subscriptions AS s
    (customer, license_code, expiry, cancelled_through, expired_through, last_position)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[],
                     $5::timestamptz[], $6::bigint[])
ON CONFLICT (customer, license_code) DO UPDATE
SET expiry = greatest(s.expiry, excluded.expiry),
    cancelled_through = greatest(s.cancelled_through, excluded.cancelled_through),
    expired_through = greatest(s.expired_through, excluded.expired_through),
    last_position = greatest(s.last_position, excluded.last_position)

-- name: for_customer
SELECT license_code, expiry, cancelled_through, expired_through, last_position
FROM subscriptions WHERE customer = $1 ORDER BY license_code

-- name: digest
SELECT customer, license_code, expiry, cancelled_through, expired_through
FROM subscriptions ORDER BY customer, license_code
