-- SQLite schema, version 4 to 5.
-- v5: a failed job's backoff; a message's in-flight mark (an attempt that may have posted it);
-- how many alerts Alertmanager truncated; a one-row table the health probe writes to; an
-- incident's alerts as rows (latest state per fingerprint) instead of one JSON document that each
-- notification had to read and rewrite whole (quadratic in a storm).
ALTER TABLE jobs ADD COLUMN next_attempt_at REAL NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN sending_at REAL;
ALTER TABLE incidents ADD COLUMN truncated_alerts INTEGER NOT NULL DEFAULT 0;
CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
INSERT INTO heartbeat (id, at) VALUES (1, 0);
CREATE TABLE incident_alerts (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id  TEXT NOT NULL REFERENCES incidents (id),
    fingerprint  TEXT NOT NULL,
    starts       REAL NOT NULL,
    resolved     INTEGER NOT NULL,
    alert        TEXT NOT NULL,
    UNIQUE (incident_id, fingerprint)
);
INSERT INTO incident_alerts (incident_id, fingerprint, starts, resolved, alert)
    SELECT i.id, j.key, json_extract(j.value, '$.starts'), json_extract(j.value, '$.resolved'),
           json_extract(j.value, '$.alert')
    FROM incidents i, json_each(i.alerts) j;
UPDATE incidents SET alerts = '{}';
