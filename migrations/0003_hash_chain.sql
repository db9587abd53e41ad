-- Tamper evidence: a hash chain over the log (ADR 0006).
--
-- Every row carries hash = sha256(previous row's hash || message), where "previous row" is
-- the existing row with the greatest smaller notification_id (32 zero bytes for the first
-- row), and message is, byte for byte:
--     int8 big-endian  notification_id (the position)
--     16 bytes         originator_id (the uuid's bytes)
--     int8 big-endian  originator_version
--     int4 big-endian  length of topic as UTF-8, then those bytes (NULL = empty)
--     int4 big-endian  length of state, then the state bytes (NULL = empty)
-- The hash is computed by a BEFORE INSERT row trigger, which runs after the statement-level
-- trigger of 0001 has taken the append lock: appends are serialized, so there is exactly one
-- predecessor for every row and the chain cannot fork under concurrent writers. Rows
-- inserted earlier in the same statement are visible to the trigger's query (the row order
-- of a multi-row INSERT is the order of their notification_ids). A value a client supplies
-- for "hash" is overwritten. The service role still has no UPDATE on the table, and the
-- append-only triggers reject UPDATE for everyone, so the column cannot be rewritten
-- without disabling triggers as the owner, which `ledger verify` then detects.

ALTER TABLE stored_events ADD COLUMN hash bytea;

CREATE FUNCTION ledger_chain_message(
    pos bigint, id uuid, version bigint, topic_text text, state_bytes bytea
) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT int8send(pos)
        || uuid_send(id)
        || int8send(version)
        || int4send(octet_length(convert_to(coalesce(topic_text, ''), 'UTF8')))
        || convert_to(coalesce(topic_text, ''), 'UTF8')
        || int4send(coalesce(octet_length(state_bytes), 0))
        || coalesce(state_bytes, ''::bytea)
$$;

CREATE FUNCTION ledger_chain_hash() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    previous bytea;
    topic_bytes bytea := convert_to(coalesce(NEW.topic, ''), 'UTF8');
BEGIN
    -- Queries in a volatile function take a fresh snapshot per statement at READ COMMITTED,
    -- so this sees the predecessor committed just before the append lock was granted. A
    -- REPEATABLE READ snapshot could predate it and fork the chain: refuse those appends.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'appends to stored_events must run at READ COMMITTED (hash chain)'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT e.hash INTO previous
    FROM stored_events e
    WHERE e.notification_id < NEW.notification_id
    ORDER BY e.notification_id DESC
    LIMIT 1;
    -- Same bytes as ledger_chain_message(), written inline (a function call per row costs).
    NEW.hash := sha256(
        coalesce(previous, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
        || int8send(NEW.notification_id)
        || uuid_send(NEW.originator_id)
        || int8send(NEW.originator_version)
        || int4send(octet_length(topic_bytes))
        || topic_bytes
        || int4send(coalesce(octet_length(NEW.state), 0))
        || coalesce(NEW.state, ''::bytea)
    );
    RETURN NEW;
END
$$;

-- Row triggers of the same timing fire in name order; the statement trigger of 0001 fires
-- before any row is formed.
CREATE TRIGGER stored_events_chain
    BEFORE INSERT ON stored_events
    FOR EACH ROW EXECUTE FUNCTION ledger_chain_hash();

-- Chain the rows that exist already (a database migrated before this file), in order.
ALTER TABLE stored_events DISABLE TRIGGER stored_events_append_only;
DO $$
DECLARE
    r record;
    previous bytea := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
BEGIN
    FOR r IN SELECT * FROM stored_events ORDER BY notification_id LOOP
        previous := sha256(previous || ledger_chain_message(
            r.notification_id, r.originator_id, r.originator_version, r.topic, r.state));
        UPDATE stored_events SET hash = previous WHERE notification_id = r.notification_id;
    END LOOP;
END
$$;
ALTER TABLE stored_events ENABLE TRIGGER stored_events_append_only;
