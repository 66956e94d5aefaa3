-- Stages the server runs inside what the approvers signed: growing shares (comma-separated
-- percents ending at 100), the one it holds to now and since when, how long a stage soaks and
-- what share of its devices must have installed before the next; and how many times an
-- operator asked the devices that failed to try again. Since when the group has no longer
-- approved the update for install (archived a week later).
ALTER TABLE rollouts ADD COLUMN stages TEXT NOT NULL DEFAULT '100';
ALTER TABLE rollouts ADD COLUMN stage INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollouts ADD COLUMN stage_started_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE rollouts ADD COLUMN soak_secs BIGINT NOT NULL DEFAULT 0;
ALTER TABLE rollouts ADD COLUMN success_percent INTEGER NOT NULL DEFAULT 95;
ALTER TABLE rollouts ADD COLUMN retries BIGINT NOT NULL DEFAULT 0;
-- What devices see of the newest retry: the holds version it was published in, which only grows
-- (a restarted rollout counts its retries from 0 again, its mark does not).
ALTER TABLE rollouts ADD COLUMN retry_mark BIGINT NOT NULL DEFAULT 0;
ALTER TABLE rollouts ADD COLUMN unapproved_since BIGINT;
