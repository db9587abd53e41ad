-- name: try_lock
-- One reconciliation pass at a time across processes: a session-level advisory lock on the
-- pass's own connection (released on unlock, or when that connection ends however it ends).
SELECT pg_try_advisory_lock($1::bigint)

-- name: unlock
SELECT pg_advisory_unlock($1::bigint)
