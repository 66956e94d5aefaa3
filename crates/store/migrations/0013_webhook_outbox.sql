-- Webhook events waiting for delivery, kept across restarts: each is the JSON body exactly as
-- signed and posted. `next_attempt_at` is NULL once it is delivered or given up on.
CREATE TABLE webhook_outbox (
    id              TEXT    NOT NULL PRIMARY KEY,
    body            TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at BIGINT,
    delivered_at    BIGINT,
    last_error      TEXT
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at);
