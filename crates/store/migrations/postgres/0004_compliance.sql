-- Compliance, maintained as reports arrive, so a report never scans the fleet.

-- Per approval path (approvals/<group>/<publisher>/<file>) and bucket, how many accepted
-- devices' newest report on that path falls in the bucket (see compliance.rs for the buckets).
CREATE TABLE compliance_counts (
    target  TEXT   NOT NULL,
    bucket  TEXT   NOT NULL,
    devices BIGINT NOT NULL,
    PRIMARY KEY (target, bucket)
);

-- Accepted devices per group they were enrolled in.
CREATE TABLE group_devices (
    group_name TEXT   NOT NULL PRIMARY KEY,
    devices    BIGINT NOT NULL
);

-- The CVEs each update fixes, from its manifest.
CREATE TABLE update_cves (
    cve       TEXT NOT NULL,
    update_id TEXT NOT NULL REFERENCES updates (id),
    PRIMARY KEY (cve, update_id)
);

-- Which devices reported on an approval path, in what state (the CVE report).
CREATE INDEX device_update_states_by_target ON device_update_states (target, state, device_id);
-- Devices not seen since a time.
CREATE INDEX devices_by_last_checkin ON devices (state, last_checkin);
