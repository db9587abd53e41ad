-- The registered amount of an order, found without touching the heap (issue 11, ADR 0028).
--
-- The CSV export, the JSON export and the daily summary take an order's expected amount
-- from its first registration (ADR 0016), looked up once per order of a page. Through
-- audit_index_order_cover_idx that lookup read every notification of the order and its
-- heap page to test the category: at 10M events ~5 buffers per order, most of a page's
-- cost (EXPLAIN ANALYZE: 320 ms of a 10,000-row page, 88 ms with this index). Only
-- registrations are indexed here, so an order without one costs a probe into a small
-- index, and one with one an index-only read of its amount.
CREATE INDEX audit_index_registration_idx ON audit_index (order_id, provider, position)
    INCLUDE (amount)
    WHERE category = 'registration';
