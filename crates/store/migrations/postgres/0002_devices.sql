-- Devices, their enrollment, sessions and status reports.

-- A device is identified by its own ed25519 key; the server never sees the private half.
CREATE TABLE devices (
    id                TEXT    NOT NULL PRIMARY KEY,
    public_key        TEXT    NOT NULL UNIQUE,
    -- pending | accepted | rejected | revoked
    state             TEXT    NOT NULL,
    -- Comma-separated group names, as the enrollment token or the device's configuration said.
    groups            TEXT    NOT NULL,
    hostname          TEXT    NOT NULL,
    -- The last inventory the device reported, as validated JSON.
    inventory         TEXT    NOT NULL,
    enrolled_at       BIGINT  NOT NULL,
    last_checkin      BIGINT,
    timestamp_version BIGINT
);

CREATE TABLE enrollment_tokens (
    id            TEXT    NOT NULL PRIMARY KEY,
    secret_sha256 TEXT    NOT NULL UNIQUE,
    groups        TEXT    NOT NULL,
    expires_at    BIGINT  NOT NULL,
    max_uses      BIGINT  NOT NULL,
    uses          BIGINT  NOT NULL,
    created_at    BIGINT  NOT NULL
);

-- One-time challenges a device signs to open a session.
CREATE TABLE device_challenges (
    nonce      TEXT    NOT NULL PRIMARY KEY,
    device_id  TEXT    NOT NULL REFERENCES devices (id),
    expires_at BIGINT  NOT NULL
);

-- Sessions are stored by the hash of their secret only.
CREATE TABLE device_sessions (
    secret_sha256 TEXT    NOT NULL PRIMARY KEY,
    device_id     TEXT    NOT NULL REFERENCES devices (id),
    expires_at    BIGINT  NOT NULL
);
CREATE INDEX device_sessions_by_device ON device_sessions (device_id);

-- Status transitions a device reported; (device, id) makes a repeated batch count once.
CREATE TABLE status_reports (
    device_id   TEXT    NOT NULL REFERENCES devices (id),
    id          TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    reason      TEXT,
    exit_code   BIGINT,
    at          BIGINT  NOT NULL,
    received_at BIGINT  NOT NULL,
    -- Order of arrival per device: the last report of a target is its state.
    seq         BIGINT  NOT NULL,
    PRIMARY KEY (device_id, id)
);
