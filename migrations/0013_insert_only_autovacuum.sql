-- Autovacuum for the two insert-only tables (issue 11, ADR 0028).
--
-- stored_events and audit_index only ever grow. PostgreSQL vacuums an insert-only table
-- after autovacuum_vacuum_insert_threshold + autovacuum_vacuum_insert_scale_factor x its
-- rows inserts (1,000 + 20 %): at 10M events, once every 2M. Until then the newest pages are
-- not all-visible, so the covering indexes' index-only scans (ADR 0025) fetch heap pages
-- for exactly the rows read most (recent customers and orders), and the first reader of
-- each new page writes its hint bits. Vacuuming every ~1 % instead keeps each pass small
-- (it only visits pages not yet all-visible) and the visibility map current.
ALTER TABLE stored_events SET (
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_vacuum_insert_threshold = 10000
);
ALTER TABLE audit_index SET (
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_vacuum_insert_threshold = 10000
);
