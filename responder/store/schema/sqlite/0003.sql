-- SQLite schema, version 2 to 3.
-- v3: who acknowledged the incident (a chat button), shown on the thread's root.
ALTER TABLE incidents ADD COLUMN acknowledged TEXT;
