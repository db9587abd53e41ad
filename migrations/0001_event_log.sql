-- The append-only event log.
--
-- Layout is eventsourcing's PostgreSQL application recorder ("stored_events"): the
-- library's own recorder can read it (tests/integration/test_eventsourcing_compat.py).
-- Three triggers make the database, not the code, enforce the log's rules:
--   * serialize appends: every INSERT statement takes a transaction-level advisory lock
--     before any notification_id is drawn, so ids are issued in commit order and a reader
--     tailing "notification_id > last" can never skip a row that commits later;
--   * append-only: UPDATE, DELETE and TRUNCATE are rejected for every role;
--   * NOTIFY ledger_events with the last position, so followers wake up.

-- The restricted role the service runs as (roles are cluster-wide, so create it once).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ledger_app') THEN
        CREATE ROLE ledger_app NOLOGIN;
    END IF;
END
$$;

DO $$
BEGIN
    -- The migrating user must be able to SET ROLE ledger_app (superusers always can).
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'ledger_app', 'MEMBER') THEN
        EXECUTE format('GRANT ledger_app TO %I', current_user);
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO ledger_app;
-- /ready compares applied migrations with the files (the table is made before this runs).
GRANT SELECT ON ledger_migrations TO ledger_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ledger_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO ledger_app;

CREATE TABLE stored_events (
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    topic text,
    state bytea,
    notification_id bigserial,
    PRIMARY KEY (originator_id, originator_version)
);
CREATE UNIQUE INDEX stored_events_notification_id_idx ON stored_events (notification_id ASC);

-- eventsourcing's recorder registers this composite type when it connects.
CREATE TYPE stored_event_uuid AS (
    originator_id uuid,
    originator_version bigint,
    topic text,
    state bytea
);

REVOKE ALL ON stored_events FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON stored_events FROM ledger_app;
GRANT SELECT, INSERT ON stored_events TO ledger_app;
GRANT USAGE, SELECT ON SEQUENCE stored_events_notification_id_seq TO ledger_app;
REVOKE UPDATE ON SEQUENCE stored_events_notification_id_seq FROM ledger_app;

CREATE FUNCTION ledger_serialize_appends() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Held until commit or rollback: the next appender draws ids only after this
    -- transaction's rows are visible (or gone). Key: "ledger.stored_events".
    PERFORM pg_advisory_xact_lock(7372002);
    RETURN NULL;
END
$$;

CREATE TRIGGER stored_events_serialize
    BEFORE INSERT ON stored_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_serialize_appends();

CREATE FUNCTION ledger_reject_mutation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'stored_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER stored_events_append_only
    BEFORE UPDATE OR DELETE ON stored_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_mutation();

CREATE TRIGGER stored_events_no_truncate
    BEFORE TRUNCATE ON stored_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_mutation();

CREATE FUNCTION ledger_notify_append() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_position bigint;
BEGIN
    SELECT max(notification_id) INTO last_position FROM appended;
    IF last_position IS NOT NULL THEN
        PERFORM pg_notify('ledger_events', last_position::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER stored_events_notify
    AFTER INSERT ON stored_events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_notify_append();
