-- API keys: only a SHA-256 of the key is stored (keys are 256-bit random, so a slow hash
-- buys nothing). The key id is public and appears in logs and operator events.
CREATE TABLE api_keys (
    key_id text PRIMARY KEY,
    name text NOT NULL,
    scopes text[] NOT NULL,
    key_hash bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
