-- On a downstream replica: when each device's signed report batch reached the upstream (NULL:
-- not yet), so the batches are forwarded once each, in order, across restarts and outages.
ALTER TABLE report_batches ADD COLUMN forwarded_at BIGINT;
