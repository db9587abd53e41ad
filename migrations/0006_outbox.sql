-- The outbox: messages to partners, customers and caches, derived from the log by the
-- outbox projection and delivered by the dispatcher (ADR 0007).
--
-- These tables live in public, NOT in a projection generation schema: a rebuild of the
-- projections re-derives the same deterministic message ids and inserts nothing new
-- (ON CONFLICT DO NOTHING), so no message is ever sent twice because of a rebuild.
-- They are mutable work queues, not the log: ledger_app gets DML through the default
-- privileges granted in 0001.

CREATE TABLE public.outbox (
    id uuid PRIMARY KEY,                 -- uuid5(source event id | kind | target): stable
    kind text NOT NULL CHECK (kind IN ('partner', 'email', 'revalidate')),
    target text NOT NULL,                -- URL or recipient address; never a secret
    source_event_id uuid NOT NULL,       -- the log event that caused the message
    source_position bigint NOT NULL,
    order_ref text,                      -- provider:order id, for operators' searches
    customer text,
    payload bytea NOT NULL,              -- the exact body sent (fixed at creation)
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    due_at timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz,             -- a worker owns the message until then
    lease_token uuid,                    -- fences a worker whose lease expired
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    dead_at timestamptz
);
CREATE INDEX outbox_due_idx ON public.outbox (due_at) WHERE state = 'pending';
CREATE INDEX outbox_state_idx ON public.outbox (state, created_at DESC);
CREATE INDEX outbox_order_idx ON public.outbox (order_ref);
CREATE INDEX outbox_customer_idx ON public.outbox (customer);

-- One row per delivery attempt: when, how long, what came back (a short excerpt, no secrets).
CREATE TABLE public.outbox_attempts (
    id bigserial PRIMARY KEY,
    message_id uuid NOT NULL REFERENCES public.outbox (id),
    attempt integer NOT NULL,
    started_at timestamptz NOT NULL,
    latency_ms integer NOT NULL,
    status integer,                      -- HTTP status or SMTP reply code; NULL: no answer
    outcome text NOT NULL CHECK (outcome IN ('delivered', 'retry', 'dead')),
    excerpt text
);
CREATE INDEX outbox_attempts_message_idx ON public.outbox_attempts (message_id, id);

-- Wake idle dispatchers in every process as soon as messages are committed.
CREATE FUNCTION ledger_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ledger_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify
    AFTER INSERT OR UPDATE OF due_at ON public.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_outbox_notify();
