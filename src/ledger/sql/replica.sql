-- Reads on a streaming replica (ADR 0019).

-- name: audit_position
-- How far the audit index has applied the log, on the server asked.
SELECT position FROM audit_index_tracking WHERE id = 1

-- name: replay_lag
-- The replica's head, and how far behind its replay is in seconds: 0 when it has replayed
-- all it received (an idle primary sends nothing, so the last replayed commit may be old),
-- else the age of the last replayed commit; NULL when the server cannot tell.
SELECT
    (SELECT coalesce(max(notification_id), 0) FROM stored_events) AS head,
    CASE
        WHEN NOT pg_is_in_recovery() THEN 0.0
        WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
        ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
    END AS seconds
