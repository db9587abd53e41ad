-- API keys (src/ledger/audit/keys.py). Only hashes are stored; the key id is public.

-- name: create
INSERT INTO api_keys (key_id, name, scopes, key_hash) VALUES ($1, $2, $3, $4)

-- name: list
SELECT key_id, name, scopes, created_at, revoked_at FROM api_keys ORDER BY created_at

-- name: revoke
-- Only a key not revoked yet: the first revocation time stays (the database refuses any
-- later change to a revoked key's row, migration 0010).
UPDATE api_keys SET revoked_at = now()
WHERE key_id = $1 AND revoked_at IS NULL
RETURNING key_id, name, scopes, created_at, revoked_at

-- name: get
SELECT key_id, name, scopes, created_at, revoked_at FROM api_keys WHERE key_id = $1

-- name: lookup
SELECT key_id, name, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL

-- name: ping
SELECT 1
