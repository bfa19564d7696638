-- PostgreSQL schema, version 0 to 1.
-- The SQLite schema at version 4, in PostgreSQL's types. ``seq`` orders incidents created in the
-- same instant (SQLite uses its rowid).
CREATE TABLE notifications (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_key    TEXT NOT NULL,
    incident_id  TEXT,
    status       TEXT NOT NULL,
    received_at  DOUBLE PRECISION NOT NULL,
    raw          BYTEA NOT NULL
);
CREATE TABLE incidents (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id             TEXT PRIMARY KEY,
    group_key      TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
    created_at     DOUBLE PRECISION NOT NULL,
    updated_at     DOUBLE PRECISION NOT NULL,
    resolved_at    DOUBLE PRECISION,
    labels         TEXT NOT NULL DEFAULT '{}',
    alerts         TEXT NOT NULL DEFAULT '{}',
    playbook       TEXT,
    verdict        TEXT,
    capture        TEXT,
    report         TEXT,
    thread         TEXT NOT NULL DEFAULT '{}',
    error          TEXT,
    evidence       TEXT,
    links          TEXT,
    attributed_at  DOUBLE PRECISION,
    acknowledged   TEXT
);
CREATE UNIQUE INDEX incidents_open_group ON incidents (group_key) WHERE status = 'firing';
CREATE INDEX incidents_created ON incidents (created_at);
CREATE TABLE alert_events (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_key        TEXT NOT NULL,
    fingerprint      TEXT NOT NULL,
    status           TEXT NOT NULL,
    starts_at        TEXT NOT NULL,
    incident_id      TEXT REFERENCES incidents (id),
    notification_id  BIGINT NOT NULL REFERENCES notifications (id),
    received_at      DOUBLE PRECISION NOT NULL,
    UNIQUE (group_key, fingerprint, status, starts_at)
);
CREATE TABLE jobs (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id  TEXT NOT NULL REFERENCES incidents (id),
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    created_at   DOUBLE PRECISION NOT NULL,
    claimed_at   DOUBLE PRECISION,
    finished_at  DOUBLE PRECISION,
    lease_owner  TEXT,
    lease_until  DOUBLE PRECISION
);
CREATE INDEX jobs_state ON jobs (state, id);
CREATE INDEX jobs_incident ON jobs (incident_id, state);
CREATE TABLE outbox (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id      TEXT NOT NULL REFERENCES incidents (id),
    sink             TEXT NOT NULL,
    step             TEXT NOT NULL,
    body             TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       DOUBLE PRECISION NOT NULL,
    next_attempt_at  DOUBLE PRECISION NOT NULL,
    sent_at          DOUBLE PRECISION,
    response         TEXT,
    lease_owner      TEXT,
    lease_until      DOUBLE PRECISION,
    UNIQUE (incident_id, sink, step)
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at, id);
CREATE INDEX outbox_thread ON outbox (incident_id, sink, state);
