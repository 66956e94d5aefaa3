-- Rollouts the server runs on top of approvals: it may hold one back (a share of the group's
-- devices), never widen it.
CREATE TABLE rollouts (
    group_name          TEXT    NOT NULL,
    update_id           TEXT    NOT NULL REFERENCES updates (id),
    -- running, paused, halted or stopped
    state               TEXT    NOT NULL,
    -- the share held to while not running
    hold                BIGINT NOT NULL,
    max_failures        BIGINT  NOT NULL,
    max_failure_percent BIGINT NOT NULL,
    stuck_secs          BIGINT  NOT NULL,
    reason              TEXT    NOT NULL,
    started_at          BIGINT  NOT NULL,
    changed_at          BIGINT  NOT NULL,
    PRIMARY KEY (group_name, update_id)
);

-- The signed hold document served to devices (one row).
CREATE TABLE rollout_holds (
    id      BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    version BIGINT  NOT NULL,
    bytes   BYTEA    NOT NULL
);
