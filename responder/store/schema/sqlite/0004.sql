-- SQLite schema, version 3 to 4.
-- v4: who claimed a job or message (the lease's expiry stays empty: one process, no takeover).
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until REAL;
ALTER TABLE outbox ADD COLUMN lease_owner TEXT;
ALTER TABLE outbox ADD COLUMN lease_until REAL;
