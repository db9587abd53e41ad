-- Hash chain (src/ledger/audit/chain.py) ------------------------------------------------------

-- name: chain_before
SELECT notification_id, hash
FROM stored_events
WHERE notification_id < $1
ORDER BY notification_id DESC
LIMIT 1

-- name: chain_copy
-- $1 < positions <= $3 ($3: the end of a range verify checks, else the largest bigint).
-- Read with COPY (FORMAT binary) by ledger.audit.chain.verify: the head column is the
-- message's first 32 bytes and COPY's int4 length words before the topic and the state are
-- the message's own length fields, so each row's message is one contiguous byte range.
SELECT int8send(notification_id) || uuid_send(originator_id) || int8send(originator_version),
       convert_to(coalesce(topic, ''), 'UTF8'), coalesce(state, ''::bytea), hash
FROM stored_events
WHERE notification_id > $1 AND notification_id <= $3
ORDER BY notification_id
LIMIT $2

-- name: chain_page
-- The same rows, one record each: the walk that names the first mismatch in a page.
-- Raw bytes (uuid_send, convert_to) so the verifier builds no Python objects it does not need.
SELECT notification_id, uuid_send(originator_id), originator_version,
       convert_to(coalesce(topic, ''), 'UTF8'), coalesce(state, ''::bytea), hash
FROM stored_events
WHERE notification_id > $1 AND notification_id <= $3
ORDER BY notification_id
LIMIT $2

-- name: chain_head
SELECT notification_id, hash
FROM stored_events
ORDER BY notification_id DESC
LIMIT 1

-- Audit index (src/ledger/audit/index.py) ------------------------------------------------------

-- name: index_lock
-- One catch-up at a time (across processes): the tracking row is the lock.
SELECT position FROM audit_index_tracking WHERE id = 1 FOR UPDATE

-- name: index_behind
-- Lock-free check first: an index that is current needs no transaction (a row lock would
-- cost a commit, i.e. an fsync, on every audit request).
SELECT (SELECT position FROM audit_index_tracking WHERE id = 1) AS position,
       (SELECT coalesce(max(notification_id), 0) FROM stored_events) AS head

-- name: index_source
SELECT notification_id, originator_id, originator_version, topic, state, hash
FROM stored_events
WHERE notification_id > $1
ORDER BY notification_id
LIMIT $2

-- name: index_insert
INSERT INTO audit_index (
    position, event_id, topic, received_at, category, provider, kind, dedup_key, customer,
    order_id, status, amount, paid_amount, currency, body_sha256, actor, target, hash
)
SELECT * FROM unnest(
    $1::bigint[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::numeric[],
    $13::numeric[], $14::text[], $15::text[], $16::text[], $17::text[], $18::bytea[]
)
ON CONFLICT (position) DO NOTHING

-- name: index_advance
UPDATE audit_index_tracking SET position = $1 WHERE id = 1

-- name: index_hashes
-- Chain hashes of the events a retry of poisoned events indexes.
SELECT notification_id, hash FROM stored_events WHERE notification_id = ANY($1::bigint[])

-- name: search
-- Optional filters are NULL when absent; keyset pagination by position.
SELECT *
FROM audit_index i
WHERE i.position > $1
  AND ($3::text IS NULL OR i.provider = $3)
  AND ($4::text IS NULL OR i.customer = $4)
  AND ($5::text IS NULL OR i.order_id = $5)
  AND ($6::text IS NULL OR $6 IN (i.kind, i.topic, split_part(i.topic, ':', 2)))
  AND ($7::timestamptz IS NULL OR i.received_at >= $7)
  AND ($8::timestamptz IS NULL OR i.received_at < $8)
ORDER BY i.position
LIMIT $2

-- name: time_bounds
-- The position range holding events received in [$1, $2) (received_at follows the
-- position closely, so exports then walk positions and drop the few rows at the edges
-- whose time is outside the range).
SELECT min(position) AS lo, max(position) AS hi
FROM audit_index
WHERE received_at >= $1 AND received_at < $2

-- name: export_page
-- A primary-key range scan: cost per page is independent of the export's size. The export
-- columns come out as text, formatted here (times in UTC with microseconds, exact decimals,
-- hex hashes); the last two columns are for the cursor and the time filter.
-- expected_amount and paid_amount have the order view's one definition (ADR 0016): expected
-- is the registered amount, else the total the provider states; paid what it says was paid.
SELECT position::text, event_id::text,
       to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
       category, provider, kind, dedup_key, customer, order_id, status,
       coalesce(
           (SELECT r.amount FROM audit_index r
            WHERE i.order_id IS NOT NULL AND r.order_id = i.order_id
              AND r.category = 'registration' AND r.provider = i.provider
            ORDER BY r.position LIMIT 1),
           i.amount)::text,
       paid_amount::text,
       currency, body_sha256, encode(hash, 'hex'),
       position AS cursor, received_at AS at
FROM audit_index i
WHERE i.position > $1 AND i.position <= $2
ORDER BY i.position
LIMIT $3

-- name: export_csv_page
-- One page of the CSV export, formatted here as Python's csv.writer (QUOTE_MINIMAL, "\n"
-- line ends) writes the export_page columns: a field is quoted, its quotes doubled, when it
-- holds a character of $5 (a regular expression class the caller derives from csv
-- itself: ledger.audit.queries.CSV_QUOTED); NULL and '' are empty. Positions,
-- ids, times, amounts and hex cannot hold those characters; the text columns are tested
-- together first (``odd``), one by one only when one of them does. Rows received in
-- [$3, $4) at positions ($1, $2] (NULL when none). The registered amount is looked up as
-- export_page does, but in a LATERAL join that PostgreSQL memoizes: once per order of the
-- page (a semi-join instead had the planner, seeing few registrations, scan the whole
-- index for them on every page). The time range is tested on the page's rows: tested in
-- the scan, the generic plan ANDs the position range with the whole received_at index
-- (10x slower).
WITH page AS MATERIALIZED (  -- materialized: ``odd`` is computed once, not once per use
    SELECT position, event_id, received_at, category, provider, kind, dedup_key, customer,
           order_id, status, amount, paid_amount, currency, body_sha256, hash,
           concat(category, provider, kind, dedup_key, customer, order_id, status, currency,
                  body_sha256) ~ $5 AS odd
    FROM audit_index
    WHERE position > $1 AND position <= $2  -- the time is tested after: see the comment above
    ORDER BY position
), rows AS (
    SELECT i.*, coalesce(g.amount, i.amount) AS expected
    FROM page i
    LEFT JOIN LATERAL (  -- export_page's subquery; Memoize asks once per order
        SELECT r.amount FROM audit_index r
        WHERE i.order_id IS NOT NULL AND r.order_id = i.order_id
          AND r.category = 'registration' AND r.provider = i.provider
        ORDER BY r.position
        LIMIT 1
    ) g ON true
    WHERE i.received_at >= $3 AND i.received_at < $4
), lines AS (
    SELECT position,
           position::text
           || ',' || event_id::text
           || ',' || to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
           || ',' || CASE WHEN odd AND category ~ $5 THEN '"' || replace(category, '"', '""') || '"' ELSE coalesce(category, '') END
           || ',' || CASE WHEN odd AND provider ~ $5 THEN '"' || replace(provider, '"', '""') || '"' ELSE coalesce(provider, '') END
           || ',' || CASE WHEN odd AND kind ~ $5 THEN '"' || replace(kind, '"', '""') || '"' ELSE coalesce(kind, '') END
           || ',' || CASE WHEN odd AND dedup_key ~ $5 THEN '"' || replace(dedup_key, '"', '""') || '"' ELSE coalesce(dedup_key, '') END
           || ',' || CASE WHEN odd AND customer ~ $5 THEN '"' || replace(customer, '"', '""') || '"' ELSE coalesce(customer, '') END
           || ',' || CASE WHEN odd AND order_id ~ $5 THEN '"' || replace(order_id, '"', '""') || '"' ELSE coalesce(order_id, '') END
           || ',' || CASE WHEN odd AND status ~ $5 THEN '"' || replace(status, '"', '""') || '"' ELSE coalesce(status, '') END
           || ',' || coalesce(expected::text, '')
           || ',' || coalesce(paid_amount::text, '')
           || ',' || CASE WHEN odd AND currency ~ $5 THEN '"' || replace(currency, '"', '""') || '"' ELSE coalesce(currency, '') END
           || ',' || CASE WHEN odd AND body_sha256 ~ $5 THEN '"' || replace(body_sha256, '"', '""') || '"' ELSE coalesce(body_sha256, '') END
           || ',' || coalesce(encode(hash, 'hex'), '')
           || E'\n' AS line
    FROM rows
    ORDER BY position
)
SELECT convert_to(string_agg(line, '' ORDER BY position), 'UTF8') AS body
FROM lines

-- name: summary_counts
SELECT provider,
       count(*) AS deliveries,
       count(*) FILTER (WHERE category = 'received') AS received,
       count(*) FILTER (WHERE category = 'quarantined') AS quarantined,
       count(*) FILTER (WHERE category = 'conflicted') AS conflicted,
       count(*) FILTER (WHERE category = 'received' AND status = 'paid') AS paid_notifications,
       count(*) FILTER (WHERE category = 'received' AND status = 'failed') AS failures,
       count(*) FILTER (
           WHERE category = 'received' AND status IN ('refunded', 'partially_refunded')
       ) AS refunds,
       count(*) FILTER (
           WHERE category = 'received' AND status IN ('charged_back', 'partially_charged_back')
       ) AS chargebacks
FROM audit_index
WHERE received_at >= $1 AND received_at < $2 AND provider IS NOT NULL
GROUP BY provider
ORDER BY provider

-- name: summary_paid
-- Money counts once per order: an order is paid on the day of its first paid notification
-- or verified status-API answer (a Midtrans capture followed by its settlement, a
-- redelivery or a recovered payment's later webhook is not paid twice). Paid and expected
-- amounts have the order view's definition (ADR 0016): expected is the registered amount,
-- else the total the provider states; paid what the provider says was paid.
WITH day_paid AS (
    SELECT DISTINCT provider, coalesce(order_id, event_id::text) AS ref
    FROM audit_index
    WHERE received_at >= $1 AND received_at < $2
      AND category IN ('received', 'reconciliation') AND status = 'paid'
      AND provider IS NOT NULL
), first_paid AS (
    SELECT DISTINCT ON (i.provider, coalesce(i.order_id, i.event_id::text))
           i.provider, i.order_id, i.received_at, coalesce(i.paid_amount, i.amount) AS paid,
           i.amount AS stated
    FROM audit_index i
    JOIN day_paid d ON d.provider = i.provider AND d.ref = coalesce(i.order_id, i.event_id::text)
    WHERE i.category IN ('received', 'reconciliation') AND i.status = 'paid'
    ORDER BY i.provider, coalesce(i.order_id, i.event_id::text), i.position
), judged AS (
    SELECT f.provider, f.received_at, f.paid,
           coalesce(
               (SELECT r.amount FROM audit_index r
                WHERE f.order_id IS NOT NULL AND r.order_id = f.order_id
                  AND r.category = 'registration' AND r.provider = f.provider
                ORDER BY r.position LIMIT 1),
               f.stated) AS expected
    FROM first_paid f
)
SELECT provider, count(*) AS paid_orders, coalesce(sum(paid), 0) AS paid_amount,
       coalesce(sum(expected), 0) AS expected_amount,
       count(*) FILTER (WHERE paid < expected) AS partially_paid_orders,
       count(*) FILTER (WHERE paid > expected) AS overpaid_orders
FROM judged
WHERE received_at >= $1 AND received_at < $2
GROUP BY provider

-- Timelines ---------------------------------------------------------------------------------

-- name: timeline_order
-- $5/$6: as of a position / a time (events received at or before it); NULL: now.
-- The columns ledger.audit.queries.timeline shows (not the dedup key, actor, ...).
SELECT position, event_id, received_at, category, provider, kind, order_id, customer,
       status, amount, body_sha256, hash
FROM audit_index
WHERE order_id = $2 AND provider = $1 AND position > $3
  AND ($5::bigint IS NULL OR position <= $5)
  AND ($6::timestamptz IS NULL OR received_at <= $6)
ORDER BY position
LIMIT $4

-- name: timeline_customer
SELECT position, event_id, received_at, category, provider, kind, order_id, customer,
       status, amount, body_sha256, hash
FROM audit_index
WHERE customer = $1 AND position > $2
  AND ($4::bigint IS NULL OR position <= $4)
  AND ($5::timestamptz IS NULL OR received_at <= $5)
ORDER BY position
LIMIT $3

-- name: outbox_for_order
-- Messages the order's deliveries caused (outbox.order_ref is "provider:order id"), with
-- the latest attempt's outcome.
SELECT o.id, o.source_event_id, o.kind, o.target, o.state, o.attempts, a.outcome, a.status
FROM outbox o
LEFT JOIN LATERAL (
    SELECT outcome, status FROM outbox_attempts
    WHERE message_id = o.id ORDER BY id DESC LIMIT 1
) a ON true
WHERE o.order_ref = $1

-- name: outbox_for_customer
SELECT o.id, o.source_event_id, o.kind, o.target, o.state, o.attempts, a.outcome, a.status
FROM outbox o
LEFT JOIN LATERAL (
    SELECT outcome, status FROM outbox_attempts
    WHERE message_id = o.id ORDER BY id DESC LIMIT 1
) a ON true
WHERE o.customer = $1

-- As-of balances (src/ledger/audit/asof.py) -----------------------------------------------------

-- name: asof_cutoff
-- The position of the last event received at or before $1 (an index walk backwards).
SELECT position FROM audit_index WHERE received_at <= $1
ORDER BY received_at DESC, position DESC
LIMIT 1

-- name: asof_balance_records
-- What can decide customer $1's balance at position $2: their spends ($3, the spend topic)
-- and paid Mayar deliveries ($4, the delivery topic; $5, the paid kinds), and every other
-- paid Mayar delivery naming the same payment ids (a payment's credit goes to the delivery
-- with the smallest event id, whoever it names). The customer's index rows are read once;
-- the log is read only for rows the fold uses (an index row's provider and kind are its
-- delivery's own: ledger.payments.facts.payment_fact), a third fewer than every Mayar row.
WITH mine AS MATERIALIZED (
    SELECT position, topic, provider, kind, order_id FROM audit_index
    WHERE customer = $1 AND position <= $2
), paid AS (
    SELECT position, order_id FROM mine
    WHERE topic = $4 AND provider = 'mayar' AND kind = ANY($5::text[])
), picked AS (
    SELECT position FROM mine WHERE topic = $3
    UNION
    SELECT position FROM paid
    UNION
    SELECT a.position FROM audit_index a
    WHERE a.order_id IN (SELECT order_id FROM paid WHERE order_id IS NOT NULL)
      AND a.position <= $2 AND a.topic = $4 AND a.provider = 'mayar'
      AND a.kind = ANY($5::text[])
)
SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, e.state
FROM picked p
JOIN stored_events e ON e.notification_id = p.position
ORDER BY e.notification_id

-- name: asof_subscription_records
-- Customer $1's Mayar deliveries up to position $2 (subscription facts are among them).
SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, e.state
FROM audit_index a
JOIN stored_events e ON e.notification_id = a.position
WHERE a.customer = $1 AND a.position <= $2 AND a.provider = 'mayar' AND a.category = 'received'
ORDER BY a.position

-- name: asof_recorded_at
SELECT received_at FROM audit_index WHERE position <= $1 ORDER BY position DESC LIMIT 1
