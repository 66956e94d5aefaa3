-- Automatic approval rules (the rule itself is JSON in the server's fixed schema).
CREATE TABLE approval_rules (
    id         TEXT   NOT NULL PRIMARY KEY,
    body       TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);

-- When a rule's "after" condition (success on another group) was first seen to hold for an
-- update: the rule approves once it has held for the rule's days.
CREATE TABLE rule_progress (
    rule_id   TEXT   NOT NULL REFERENCES approval_rules (id) ON DELETE CASCADE,
    update_id TEXT   NOT NULL REFERENCES updates (id),
    since     BIGINT NOT NULL,
    PRIMARY KEY (rule_id, update_id)
);

-- Rules look at recent updates only.
CREATE INDEX updates_by_created_at ON updates (created_at);
