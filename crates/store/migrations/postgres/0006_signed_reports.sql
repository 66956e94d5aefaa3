-- Report batches as the device signed them, kept while a retained report came in them, so a
-- compliance claim can be checked against the device's key.
CREATE TABLE report_batches (
    device_id   TEXT   NOT NULL REFERENCES devices (id),
    seq         BIGINT NOT NULL,
    message     BYTEA   NOT NULL,
    -- length(message), so a device's total is summed without reading the messages.
    bytes       BIGINT NOT NULL,
    signature   TEXT   NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
ALTER TABLE status_reports ADD COLUMN batch_seq BIGINT;
ALTER TABLE device_update_states ADD COLUMN batch_seq BIGINT;
