-- SQLite schema, version 0 to 1.
-- Version 1: the tables.
CREATE TABLE notifications (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    group_key    TEXT NOT NULL,
    incident_id  TEXT,
    status       TEXT NOT NULL,
    received_at  REAL NOT NULL,
    raw          BLOB NOT NULL
);
CREATE TABLE incidents (
    id           TEXT PRIMARY KEY,
    group_key    TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    resolved_at  REAL,
    labels       TEXT NOT NULL DEFAULT '{}',
    alerts       TEXT NOT NULL DEFAULT '{}',
    playbook     TEXT,
    verdict      TEXT,
    capture      TEXT,
    report       TEXT,
    thread       TEXT NOT NULL DEFAULT '{}',
    error        TEXT
);
-- One open incident per alert group.
CREATE UNIQUE INDEX incidents_open_group ON incidents (group_key) WHERE status = 'firing';
CREATE INDEX incidents_created ON incidents (created_at);
CREATE TABLE alert_events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    group_key        TEXT NOT NULL,
    fingerprint      TEXT NOT NULL,
    status           TEXT NOT NULL,
    starts_at        TEXT NOT NULL,
    incident_id      TEXT REFERENCES incidents (id),
    notification_id  INTEGER NOT NULL REFERENCES notifications (id),
    received_at      REAL NOT NULL,
    UNIQUE (group_key, fingerprint, status, starts_at)
);
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id  TEXT NOT NULL REFERENCES incidents (id),
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    created_at   REAL NOT NULL,
    claimed_at   REAL,
    finished_at  REAL
);
CREATE INDEX jobs_state ON jobs (state, id);
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id      TEXT NOT NULL REFERENCES incidents (id),
    sink             TEXT NOT NULL,
    step             TEXT NOT NULL,
    body             TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       REAL NOT NULL,
    next_attempt_at  REAL NOT NULL,
    sent_at          REAL,
    response         TEXT,
    UNIQUE (incident_id, sink, step)
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at, id);
