-- 0001: the first schema of a gateway instance's store.
--
-- Three kinds of data live here, and the pair treats them differently:
--   * configuration (config_meta, config_docs, devices): written only by the
--     primary, every row stamped with the config-set version and the epoch of
--     the primary that wrote it, so a secondary can take exactly what changed
--     and refuse anything from an older epoch;
--   * local state (local_state, ended_sessions): this server's own license
--     activation, maintenance flag and role epoch, never replicated;
--   * the job log (jobs, job_pages, job_steps): written by whichever server
--     accepted the job; every job records which server and role accepted it.

CREATE TABLE local_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE config_meta (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    version    INTEGER NOT NULL,
    epoch      INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL
) STRICT;

INSERT INTO config_meta (id, version, epoch, updated_at, updated_by)
VALUES (1, 0, 0, '1970-01-01T00:00:00Z', '');

CREATE TABLE config_docs (
    name       TEXT PRIMARY KEY,
    body       TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    version    INTEGER NOT NULL,
    epoch      INTEGER NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

CREATE TABLE devices (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    serial       TEXT,
    token_sha256 TEXT NOT NULL UNIQUE,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'revoked')),
    created_at   TEXT NOT NULL,
    approved_at  TEXT,
    -- Order of approval: license seats go to the devices approved first.
    approval_seq INTEGER UNIQUE,
    version      INTEGER NOT NULL,
    epoch        INTEGER NOT NULL
) STRICT;

CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    device_id       TEXT NOT NULL,
    user_name       TEXT NOT NULL,
    workflow        TEXT NOT NULL,
    manifest        TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    page_count      INTEGER NOT NULL CHECK (page_count > 0),
    bytes           INTEGER NOT NULL,
    accepted_by     TEXT NOT NULL,
    accepted_role   TEXT NOT NULL,
    accepted_epoch  INTEGER NOT NULL,
    client_addr     TEXT,
    state           TEXT NOT NULL CHECK (state IN ('received', 'processing', 'done', 'failed')),
    reason          TEXT,
    received_at     TEXT NOT NULL,
    updated_at      TEXT NOT NULL
) STRICT;

CREATE INDEX jobs_by_state ON jobs (state, received_at);
CREATE INDEX jobs_by_device ON jobs (device_id, received_at);

CREATE TABLE job_pages (
    job_id    TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL,
    file_name TEXT NOT NULL,
    format    TEXT NOT NULL,
    bytes     INTEGER NOT NULL,
    sha256    TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) STRICT;

CREATE TABLE job_steps (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step        INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    plugin      TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    outcome     TEXT CHECK (outcome IN ('done', 'retry', 'failed')),
    reason      TEXT,
    PRIMARY KEY (job_id, step, attempt)
) STRICT;

CREATE TABLE ended_sessions (
    session_id TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
) STRICT;
