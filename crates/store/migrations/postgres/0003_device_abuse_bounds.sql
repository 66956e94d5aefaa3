-- Bounds on what one device or an anonymous client can make the server store.

-- The newest report of a device is found by index, so ingest costs the same at the millionth
-- stored report as at the first.
CREATE INDEX status_reports_by_seq ON status_reports (device_id, seq);

-- The newest report per device and target: what compliance shows, kept whatever the report
-- history retention deletes.
CREATE TABLE device_update_states (
    device_id TEXT   NOT NULL REFERENCES devices (id),
    target    TEXT   NOT NULL,
    report_id TEXT   NOT NULL,
    state     TEXT   NOT NULL,
    reason    TEXT,
    exit_code BIGINT,
    at        BIGINT NOT NULL,
    seq       BIGINT NOT NULL,
    PRIMARY KEY (device_id, target)
);

-- Where a pending enrollment came from, so one source cannot fill the table.
ALTER TABLE devices ADD COLUMN source TEXT;
CREATE INDEX devices_by_state_source ON devices (state, source);

CREATE INDEX device_challenges_by_device ON device_challenges (device_id);
CREATE INDEX device_challenges_by_expiry ON device_challenges (expires_at);
CREATE INDEX device_sessions_by_expiry ON device_sessions (expires_at);
