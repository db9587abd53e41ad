-- Covering indexes for the per-customer and per-order audit reads (issue 11, ADR 0025).
--
-- A customer's ~170 index rows lie on as many heap pages of audit_index (the heap is in
-- log order, a customer's events are spread over it), and the as-of balance probed the
-- heap once per payment id. Once the index no longer fits in shared buffers every one of
-- those pages is a miss. The same keys, carrying the columns those reads use, let them be
-- index-only scans: the customer timeline (ledger.audit.queries.timeline) and the rows of
-- an as-of balance read a few leaf pages instead of a heap page per row. The keys and the
-- partial predicates are those of 0008, so every other query plans as before.
--
-- Derived data (rebuildable from the log): the old indexes are replaced, not kept beside.
-- CREATE INDEX (not CONCURRENTLY: migrations run in a transaction) blocks the indexer's
-- writes to audit_index while it builds, about 5 s per million rows; reads go on.

CREATE INDEX audit_index_customer_cover_idx ON audit_index (customer, position)
    INCLUDE (topic, provider, kind, order_id, category, event_id, received_at, status,
             amount, body_sha256, hash)
    WHERE customer IS NOT NULL;
DROP INDEX audit_index_customer_idx;

CREATE INDEX audit_index_order_cover_idx ON audit_index (order_id, position)
    INCLUDE (topic, provider, kind)
    WHERE order_id IS NOT NULL;
DROP INDEX audit_index_order_idx;
