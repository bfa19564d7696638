-- PostgreSQL schema, version 2 to 3.
-- v3, as SQLite's v6: the preliminary verdict (from the flight recorder, at the alert's receipt).
ALTER TABLE incidents ADD COLUMN preliminary TEXT;
