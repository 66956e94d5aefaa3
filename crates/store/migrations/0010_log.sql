-- The transparency log. Entries wait in `log_queue` (written in the same transaction as what
-- they record) until the sequencer integrates them: their index in `log_entries`, the tree's
-- stored hashes in `log_hashes`, a signed checkpoint per batch in `log_checkpoints`.
CREATE TABLE log_queue (
    id    INTEGER NOT NULL PRIMARY KEY,
    entry BLOB    NOT NULL
);

CREATE TABLE log_entries (
    idx   BIGINT NOT NULL PRIMARY KEY CHECK (idx >= 0),
    entry BLOB   NOT NULL
);

-- Every complete subtree's hash, by its stored-hash index (C2SP tlog-tiles / Go's sumdb tlog).
CREATE TABLE log_hashes (
    idx  BIGINT NOT NULL PRIMARY KEY CHECK (idx >= 0),
    hash BLOB   NOT NULL
);

-- Where each published metadata version is in the log.
CREATE TABLE log_metadata (
    role    TEXT   NOT NULL,
    version BIGINT NOT NULL,
    idx     BIGINT NOT NULL,
    PRIMARY KEY (role, version)
);

-- One checkpoint per integrated batch. `tiles_written` once its tiles are in the content
-- store (only then is it served); `cosigned` is the note with the witnesses' cosignatures.
CREATE TABLE log_checkpoints (
    size          BIGINT  NOT NULL PRIMARY KEY CHECK (size >= 0),
    note          BLOB    NOT NULL,
    created_at    BIGINT  NOT NULL,
    tiles_written INTEGER NOT NULL,
    cosigned      BLOB,
    -- Witnesses whose cosignature `cosigned` carries.
    cosigners     INTEGER NOT NULL DEFAULT 0
);

-- The size each witness last cosigned (what the next add-checkpoint proves consistency from).
CREATE TABLE log_witnesses (
    name TEXT   NOT NULL PRIMARY KEY,
    size BIGINT NOT NULL
);
