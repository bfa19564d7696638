-- SQLite schema, version 1 to 2.
-- v2: the application's own evidence (Prometheus, traces), the links a report carries, and when
-- the verdict was reached (detection time is measured to it).
ALTER TABLE incidents ADD COLUMN evidence TEXT;
ALTER TABLE incidents ADD COLUMN links TEXT;
ALTER TABLE incidents ADD COLUMN attributed_at REAL;
