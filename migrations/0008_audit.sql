-- The audit index: one row per log event with the fields finance searches and exports by
-- (provider, kind, customer, order, amounts), interpreted from the raw body with the
-- provider's own decoder (src/ledger/audit.py). It is derived data: rebuildable from the
-- log at any time (TRUNCATE both tables), never a source of truth. Rows and the tracking
-- position commit in one transaction, so a replay never duplicates or skips an event.
CREATE TABLE audit_index (
    position bigint PRIMARY KEY,       -- stored_events.notification_id
    event_id uuid NOT NULL,
    topic text NOT NULL,
    received_at timestamptz NOT NULL,  -- the event's own timestamp (ingest time)
    category text NOT NULL,            -- received | quarantined | conflicted | operator | other
    provider text,                     -- NULL when not a delivery
    kind text,                         -- provider event kind, or the operator action
    dedup_key text,
    customer text,                     -- lowercased email when known
    order_id text,                     -- order / booking / invoice reference
    status text,                       -- paid, pending, failed, refunded, ... (deliveries)
    amount numeric,                    -- exact decimal, never float
    paid_amount numeric,
    currency text,
    body_sha256 text,
    actor text,                        -- operator actions: the acting key id
    target text,                       -- operator actions: what was acted on
    hash bytea                         -- the event's chain hash, copied when indexed
);
CREATE INDEX audit_index_customer_idx ON audit_index (customer, position) WHERE customer IS NOT NULL;
CREATE INDEX audit_index_order_idx ON audit_index (order_id, position) WHERE order_id IS NOT NULL;
CREATE INDEX audit_index_received_idx ON audit_index (received_at);
CREATE INDEX audit_index_kind_idx ON audit_index (kind, position);

CREATE TABLE audit_index_tracking (
    id integer PRIMARY KEY CHECK (id = 1),
    position bigint NOT NULL
);
INSERT INTO audit_index_tracking (id, position) VALUES (1, 0);

GRANT SELECT, INSERT, UPDATE, DELETE ON audit_index, audit_index_tracking TO ledger_app;
