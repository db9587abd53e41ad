-- Projection bookkeeping (ADR 0005).
--
-- ``projections``: one row per read model. ``live_generation`` is the generation readers
-- use; ``building_generation`` is a blue/green rebuild in progress (NULL when none).
-- ``projection_tracking``: the position each generation has applied, written in the same
-- transaction as that generation's view rows (exactly-once). Each generation's tables live
-- in their own schema ``p_<name>_g<generation>``, created by the runner as ledger_app.

CREATE TABLE projections (
    name text PRIMARY KEY,
    version integer NOT NULL,
    live_generation integer NOT NULL,
    building_generation integer NULL,
    state text NOT NULL DEFAULT 'running'
        CHECK (state IN ('running', 'rebuilding', 'failed')),
    updated_at timestamptz NOT NULL DEFAULT now(),
    error text NULL,
    CHECK (building_generation IS NULL OR building_generation > live_generation)
);

CREATE TABLE projection_tracking (
    name text NOT NULL REFERENCES projections (name),
    generation integer NOT NULL,
    position bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, generation)
);

-- Default privileges from 0001 grant SELECT/INSERT/UPDATE/DELETE on these tables; say so
-- explicitly anyway, since the runner depends on it.
GRANT SELECT, INSERT, UPDATE, DELETE ON projections, projection_tracking TO ledger_app;

-- The runner creates one schema per projection generation. Rather than granting
-- ledger_app CREATE on the whole database (a database ACL, which CREATE DATABASE ...
-- TEMPLATE does not copy), this owner-defined function creates exactly one well-named
-- schema owned by ledger_app; ledger_app can then create tables in it and drop it.
CREATE FUNCTION ledger_create_projection_schema(schema_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    IF schema_name !~ '^p_[a-z][a-z0-9_]{0,40}_g[0-9]{1,9}$' THEN
        RAISE EXCEPTION 'not a projection schema name: %', schema_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION ledger_app', schema_name);
END
$$;

REVOKE ALL ON FUNCTION ledger_create_projection_schema(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger_create_projection_schema(text) TO ledger_app;
