-- PostgreSQL schema, version 1 to 2.
-- v2, as SQLite's v5: a failed job's backoff, a message's in-flight mark, the alerts
-- Alertmanager truncated, the health probe's row, an incident's alerts as rows.
ALTER TABLE jobs ADD COLUMN next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN sending_at DOUBLE PRECISION;
ALTER TABLE incidents ADD COLUMN truncated_alerts INTEGER NOT NULL DEFAULT 0;
CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at DOUBLE PRECISION NOT NULL);
INSERT INTO heartbeat (id, at) VALUES (1, 0);
CREATE TABLE incident_alerts (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id  TEXT NOT NULL REFERENCES incidents (id),
    fingerprint  TEXT NOT NULL,
    starts       DOUBLE PRECISION NOT NULL,
    resolved     INTEGER NOT NULL,
    alert        TEXT NOT NULL,
    UNIQUE (incident_id, fingerprint)
);
INSERT INTO incident_alerts (incident_id, fingerprint, starts, resolved, alert)
    SELECT i.id, j.key, (j.value ->> 'starts')::float8,
           CASE WHEN (j.value ->> 'resolved')::boolean THEN 1 ELSE 0 END, (j.value -> 'alert')::text
    FROM incidents i, jsonb_each(i.alerts::jsonb) j;
UPDATE incidents SET alerts = '{}';
