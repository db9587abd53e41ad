-- Who a session logged in as, and what that login could become (ADR 0011).

-- name: session_rights
-- The SESSION user (the login), not current_user: SET ROLE changes only the latter, and a
-- session whose login is a superuser, or may act as the log's owner, can undo any SET ROLE.
-- CREATEROLE counts: before PostgreSQL 16 it may grant itself the owner's role.
SELECT
    session_user::text AS login,
    EXISTS (
        SELECT FROM pg_roles r
        WHERE r.rolsuper AND pg_has_role(session_user, r.oid, 'MEMBER')
    ) AS superuser,
    coalesce((
        SELECT pg_has_role(session_user, c.relowner, 'MEMBER')
        FROM pg_class c
        WHERE c.oid = to_regclass('public.stored_events')
    ), false) AS owner,
    coalesce((SELECT rolcreaterole FROM pg_roles WHERE rolname = session_user), false)
        AS createrole,
    to_regclass('public.stored_events') IS NOT NULL AS migrated

-- name: stash_app_password
-- The password travels as a parameter into a session setting, then set_app_password reads
-- it: ALTER ROLE takes no parameters, and no password is ever formatted into SQL text.
SELECT set_config('ledger.app_password', $1, false)

-- name: set_app_password
DO $$
BEGIN
    EXECUTE format('ALTER ROLE ledger_app LOGIN PASSWORD %L',
                   current_setting('ledger.app_password'));
    PERFORM set_config('ledger.app_password', '', false);
END
$$

-- name: lock
SELECT pg_advisory_lock($1)

-- name: unlock
SELECT pg_advisory_unlock($1)
