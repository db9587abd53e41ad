-- Poisoned events (ADR 0010): an event a consumer of the log could not apply after a few
-- attempts, set aside so the consumer moves on. A row is written in the same transaction
-- as the consumer's tracking position that moves past the event (exactly-once), and is
-- marked resolved when an operator's retry applies it after a fix.
--
-- ``consumer`` is a projection name or ``audit_index``; ``generation`` is the projection
-- generation that met the event (a rebuild records its own), 0 for the audit index.
-- ``error`` is the exception's type and message, stripped of control characters and of
-- credentials in URLs, and bounded.
CREATE TABLE poisoned_events (
    consumer text NOT NULL,
    generation integer NOT NULL DEFAULT 0,
    position bigint NOT NULL,            -- stored_events.notification_id
    event_id uuid NOT NULL,
    topic text NOT NULL,
    error text NOT NULL,
    attempts integer NOT NULL CHECK (attempts > 0),
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz NULL,        -- NULL: still set aside
    PRIMARY KEY (consumer, generation, position)
);
-- Listing (and counting) what is still set aside is the common read.
CREATE INDEX poisoned_events_open_idx ON poisoned_events (consumer, generation, position)
    WHERE resolved_at IS NULL;
CREATE INDEX poisoned_events_position_idx ON poisoned_events (position)
    WHERE resolved_at IS NULL;

-- The runner and the audit index record rows, a retry resolves them, and a retired
-- projection generation's rows are dropped with it.
GRANT SELECT, INSERT, UPDATE, DELETE ON poisoned_events TO ledger_app;
