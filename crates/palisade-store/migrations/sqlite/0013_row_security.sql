-- Palisade schema v13 (SQLite): nothing. On PostgreSQL this version adds row-level security per
-- tenant; SQLite has none (the embedded single-node store relies on its queries' filters). The
-- version exists so both backends' migrations keep the same numbers.
SELECT 1;
