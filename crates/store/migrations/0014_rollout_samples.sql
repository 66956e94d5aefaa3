-- A rollout's progress over time, for the console's chart: what the leading node counted when
-- it looked at a running rollout (more often early, then at most ~200 samples per stretch of
-- its life). Deleted with the rollout and when it is started again.
CREATE TABLE rollout_samples (
    group_name TEXT    NOT NULL,
    update_id  TEXT    NOT NULL,
    at         BIGINT  NOT NULL,
    -- the share the server allowed; the group's devices, those of them that installed (or to
    -- which it does not apply) and failed; devices stuck on their way past the rollout's timeout
    share      BIGINT  NOT NULL,
    devices    BIGINT  NOT NULL,
    installed  BIGINT  NOT NULL,
    failed     BIGINT  NOT NULL,
    stuck      BIGINT  NOT NULL,
    PRIMARY KEY (group_name, update_id, at)
);
