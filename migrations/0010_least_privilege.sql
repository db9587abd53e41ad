-- Least privilege that holds (ADR 0011).
--
-- 1. The service LOGS IN as a role that is not a superuser and does not own the log. A
--    superuser session that merely SETs ROLE ledger_app can SET ROLE back (or SET SESSION
--    AUTHORIZATION, or session_replication_role = replica) and lift every guard. So
--    ledger_app becomes a login role: in development the service migrates with the owner's
--    URL and then logs in as ledger_app on the same server; in production the operator
--    gives it a login role granted ledger_app (LEDGER_DATABASE_URL) and the owner's URL
--    for migrations (LEDGER_MIGRATE_DATABASE_URL). Roles are cluster-wide: change it once,
--    and only when this migrating user may (a superuser, or one with ADMIN on the role).
DO $$
BEGIN
    IF NOT (SELECT rolcanlogin FROM pg_roles WHERE rolname = 'ledger_app') THEN
        ALTER ROLE ledger_app LOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'ledger_app stays NOLOGIN (%); log the service in as a role granted ledger_app',
        SQLERRM;
END
$$;

-- 2. A revoked key stays revoked. The service may set revoked_at (NULL -> a time) and
--    nothing else: no other column, no DELETE, no TRUNCATE. The trigger holds for every
--    role, the owner included (only disabling it, which is DDL, gets around it).
REVOKE UPDATE, DELETE, TRUNCATE ON api_keys FROM ledger_app;
GRANT UPDATE (revoked_at) ON api_keys TO ledger_app;

CREATE FUNCTION ledger_keep_revocation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.revoked_at IS NOT NULL AND NEW IS DISTINCT FROM OLD THEN
        RAISE EXCEPTION 'api key % was revoked at %: a revocation is permanent',
            OLD.key_id, OLD.revoked_at
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER api_keys_revocation_is_permanent
    BEFORE UPDATE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION ledger_keep_revocation();

-- 3. Every process drops its cached key answers when a key changes, whoever changed it
--    (the HTTP route, `ledger keys revoke`, plain SQL): NOTIFY ledger_keys with the key id
--    (public, never the secret or its hash). Delivered at commit, to every listener.
CREATE FUNCTION ledger_keys_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('ledger_keys', OLD.key_id);
    ELSE
        PERFORM pg_notify('ledger_keys', NEW.key_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_notify
    AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION ledger_keys_notify();
