-- Console sessions: a browser logged in with an admin token (kind 'session'), and one-time
-- login codes that become a session once (kind 'login'). Only the SHA-256 of a secret is kept;
-- a session ends when idle too long, at its expiry, at logout, or as soon as its token is
-- revoked (every lookup joins the token).
CREATE TABLE console_sessions (
    secret_sha256 TEXT   NOT NULL PRIMARY KEY,
    token_id      TEXT   NOT NULL REFERENCES api_tokens (id),
    kind          TEXT   NOT NULL CHECK (kind IN ('session', 'login')),
    created_at    BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);

CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);

-- The console's device search by exact host name.
CREATE INDEX devices_by_hostname ON devices (hostname, id);
