-- Compliance, maintained as reports arrive, so a report never scans the fleet.

-- Per approval path (approvals/<group>/<publisher>/<file>) and bucket, how many accepted
-- devices' newest report on that path falls in the bucket (see compliance.rs for the buckets).
CREATE TABLE compliance_counts (
    target  TEXT   NOT NULL,
    bucket  TEXT   NOT NULL,
    devices BIGINT NOT NULL,
    PRIMARY KEY (target, bucket)
);
INSERT INTO compliance_counts (target, bucket, devices)
SELECT target,
       CASE state
           WHEN 'installed' THEN 'installed'
           WHEN 'not_applicable' THEN 'not_applicable'
           WHEN 'uninstalled' THEN 'uninstalled'
           WHEN 'failed' THEN 'failed'
           WHEN 'rolled_back' THEN 'failed'
           WHEN 'refused' THEN 'failed'
           ELSE 'needed'
       END,
       COUNT(*)
FROM device_update_states
WHERE device_id IN (SELECT id FROM devices WHERE state = 'accepted')
GROUP BY 1, 2;

-- Accepted devices per group they were enrolled in.
CREATE TABLE group_devices (
    group_name TEXT   NOT NULL PRIMARY KEY,
    devices    BIGINT NOT NULL
);
WITH RECURSIVE split (rest, name) AS (
    SELECT groups || ',', NULL FROM devices WHERE state = 'accepted'
    UNION ALL
    SELECT substr(rest, instr(rest, ',') + 1), substr(rest, 1, instr(rest, ',') - 1) FROM split WHERE rest <> ''
)
INSERT INTO group_devices (group_name, devices)
SELECT name, COUNT(*) FROM split WHERE name IS NOT NULL AND name <> '' GROUP BY name;

-- The CVEs each update fixes, from its manifest.
CREATE TABLE update_cves (
    cve       TEXT NOT NULL,
    update_id TEXT NOT NULL REFERENCES updates (id),
    PRIMARY KEY (cve, update_id)
);
INSERT INTO update_cves (cve, update_id)
SELECT DISTINCT upper(j.value), u.id FROM updates u, json_each(u.manifest, '$.cves') j;

-- Which devices reported on an approval path, in what state (the CVE report).
CREATE INDEX device_update_states_by_target ON device_update_states (target, state, device_id);
-- Devices not seen since a time.
CREATE INDEX devices_by_last_checkin ON devices (state, last_checkin);
