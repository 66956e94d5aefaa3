-- Ringfence schema for SQLite. Types and constraints are kept to what PostgreSQL also accepts
-- (BIGINT, TEXT, BOOLEAN; BLOB becomes BYTEA there), so the PostgreSQL schema differs only in
-- those spellings and the identity column of audit_log.

-- Published metadata: the exact bytes served for each (role, version).
CREATE TABLE metadata (
    role     TEXT   NOT NULL,
    version  BIGINT NOT NULL CHECK (version >= 0),
    expires  BIGINT NOT NULL,
    bytes    BLOB   NOT NULL,
    PRIMARY KEY (role, version)
);

-- At most one role version waiting for signatures per role.
CREATE TABLE pending_metadata (
    role       TEXT   NOT NULL PRIMARY KEY,
    version    BIGINT NOT NULL CHECK (version >= 0),
    bytes      BLOB   NOT NULL,
    created_at BIGINT NOT NULL
);

-- Admin API tokens; only the SHA-256 of the secret is kept. Scopes are comma-separated.
CREATE TABLE api_tokens (
    id            TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    secret_sha256 TEXT    NOT NULL UNIQUE,
    scopes        TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    revoked       BOOLEAN NOT NULL
);

-- Blobs known to be in the blob store.
CREATE TABLE blobs (
    sha256     TEXT   NOT NULL PRIMARY KEY,
    length     BIGINT NOT NULL CHECK (length >= 0),
    created_at BIGINT NOT NULL
);

CREATE TABLE updates (
    id         TEXT   NOT NULL PRIMARY KEY,
    publisher  TEXT   NOT NULL,
    manifest   TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);

-- A target path belongs to exactly one update, ever.
CREATE TABLE update_files (
    target_path TEXT   NOT NULL PRIMARY KEY,
    update_id   TEXT   NOT NULL REFERENCES updates (id),
    sha256      TEXT   NOT NULL,
    length      BIGINT NOT NULL CHECK (length >= 0)
);

CREATE INDEX update_files_by_update ON update_files (update_id);

-- id is SQLite's rowid (assigned in insertion order); PostgreSQL uses an identity column.
CREATE TABLE audit_log (
    id     INTEGER NOT NULL PRIMARY KEY,
    at     BIGINT  NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    detail TEXT    NOT NULL
);
