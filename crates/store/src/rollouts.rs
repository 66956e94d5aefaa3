//! Rollouts the server runs, and the signed document of its holds.

use sqlx::Row;

use crate::sql::{SqlStore, from_bigint, to_bigint};
use crate::{Result, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRecord {
    pub group: String,
    pub update_id: String,
    /// `running`, `paused`, `halted` or `stopped`.
    pub state: String,
    /// The share (percent) held to while not running.
    pub hold: u8,
    pub max_failures: u64,
    pub max_failure_percent: u8,
    pub stuck_secs: u64,
    pub reason: String,
    pub started_at: i64,
    pub changed_at: i64,
    /// The server's stages (growing percents ending at 100), the one held to, since when.
    pub stages: Vec<u8>,
    pub stage: u8,
    pub stage_started_at: i64,
    pub soak_secs: u64,
    pub success_percent: u8,
    /// Times an operator asked the devices that failed to try again, and the mark devices see
    /// of the newest (the holds version it was published in).
    pub retries: u64,
    pub retry_mark: u64,
    /// Since when the group no longer approves the update for install.
    pub unapproved_since: Option<i64>,
}

/// An accepted device of a rollout's groups: its key and its newest state per approval path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutDevice {
    pub public_key: String,
    pub states: std::collections::BTreeMap<String, String>,
}

/// What the leading node counted of a rollout at one moment (the console's chart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSample {
    pub at: i64,
    /// The share (percent) the server allowed then.
    pub share: u8,
    /// The group's accepted devices, those that installed it (or to which it does not apply),
    /// those that failed, and those stuck on their way past the rollout's timeout.
    pub devices: u64,
    pub installed: u64,
    pub failed: u64,
    pub stuck: u64,
}

/// Samples kept per rollout at most; past it the oldest half is thinned to every other one.
pub const MAX_ROLLOUT_SAMPLES: u64 = 2_000;

#[async_trait::async_trait]
pub trait RolloutStore: Send + Sync + 'static {
    /// Start (or restart) a rollout; `Conflict` if one runs for that group and update.
    async fn insert_rollout(&self, rollout: &RolloutRecord) -> Result<()>;
    async fn rollouts(&self) -> Result<Vec<RolloutRecord>>;
    async fn set_rollout_state(
        &self,
        group: &str,
        update_id: &str,
        state: &str,
        hold: u8,
        reason: &str,
        at: i64,
    ) -> Result<()>;
    /// Devices whose newest report on any of `targets`, made at or after `since`, is still on
    /// its way (downloading, downloaded, installing, waiting for a reboot) since before `before`.
    async fn stuck_devices(&self, targets: &[String], since: i64, before: i64) -> Result<u64>;
    /// Accepted devices whose newest report on any of `targets` came at or after `since`, by
    /// report state.
    async fn states_since(&self, targets: &[String], since: i64) -> Result<std::collections::BTreeMap<String, u64>>;
    /// Count a rollout's failures from `at` on (a resume starts afresh).
    async fn restart_rollout_clock(&self, group: &str, update_id: &str, at: i64) -> Result<()>;
    /// Move a rollout to stage `stage` (an index into its stages) from `at`; hold to `hold`.
    async fn set_rollout_stage(&self, group: &str, update_id: &str, stage: u8, hold: u8, at: i64) -> Result<()>;
    /// Ask the failed devices to try again: one more retry marked `mark`, failures counted
    /// afresh from `at`. Returns the number of retries.
    async fn retry_rollout(&self, group: &str, update_id: &str, mark: u64, at: i64) -> Result<u64>;
    /// Note since when the group no longer approves the update for install (none: it does).
    async fn set_rollout_unapproved(&self, group: &str, update_id: &str, since: Option<i64>) -> Result<()>;
    /// Forget a rollout (its record stays in the audit trail).
    async fn delete_rollout(&self, group: &str, update_id: &str) -> Result<()>;
    /// Accepted devices enrolled in any of `groups`, with their newest state on each of
    /// `targets` they reported on.
    async fn rollout_devices(&self, groups: &[String], targets: &[String]) -> Result<Vec<RolloutDevice>>;
    /// Keep a sample of a rollout's progress, unless one was kept less than `min_gap` seconds
    /// before it. Returns whether it was kept.
    async fn add_rollout_sample(
        &self,
        group: &str,
        update_id: &str,
        sample: &RolloutSample,
        min_gap: i64,
    ) -> Result<bool>;
    /// A rollout's samples from `since` on, oldest first (at most [`MAX_ROLLOUT_SAMPLES`]).
    async fn rollout_samples(&self, group: &str, update_id: &str, since: i64) -> Result<Vec<RolloutSample>>;
    /// The signed holds document and its version.
    async fn rollout_holds(&self) -> Result<Option<(u64, Vec<u8>)>>;
    async fn put_rollout_holds(&self, version: u64, bytes: &[u8]) -> Result<()>;
    /// The version of the holds document (0: none yet).
    async fn rollout_holds_version(&self) -> Result<u64>;
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<RolloutRecord> {
    Ok(RolloutRecord {
        group: r.try_get("group_name")?,
        update_id: r.try_get("update_id")?,
        state: r.try_get("state")?,
        hold: u8::try_from(r.try_get::<i64, _>("hold")?).unwrap_or(0),
        max_failures: from_bigint(r.try_get("max_failures")?, "max_failures")?,
        max_failure_percent: u8::try_from(r.try_get::<i64, _>("max_failure_percent")?).unwrap_or(0),
        stuck_secs: from_bigint(r.try_get("stuck_secs")?, "stuck_secs")?,
        reason: r.try_get("reason")?,
        started_at: r.try_get("started_at")?,
        changed_at: r.try_get("changed_at")?,
        stages: r
            .try_get::<String, _>("stages")?
            .split(',')
            .map(|p| {
                p.parse::<u8>().map_err(|_| {
                    StoreError::Database(sqlx::Error::ColumnDecode {
                        index: "stages".into(),
                        source: format!("not a percent: {p:?}").into(),
                    })
                })
            })
            .collect::<Result<_>>()?,
        stage: u8::try_from(r.try_get::<i64, _>("stage")?).unwrap_or(0),
        stage_started_at: r.try_get("stage_started_at")?,
        soak_secs: from_bigint(r.try_get("soak_secs")?, "soak_secs")?,
        success_percent: u8::try_from(r.try_get::<i64, _>("success_percent")?).unwrap_or(100),
        retries: from_bigint(r.try_get("retries")?, "retries")?,
        retry_mark: from_bigint(r.try_get("retry_mark")?, "retry_mark")?,
        unapproved_since: r.try_get("unapproved_since")?,
    })
}

fn stages_text(stages: &[u8]) -> String {
    stages.iter().map(u8::to_string).collect::<Vec<_>>().join(",")
}

#[async_trait::async_trait]
impl RolloutStore for SqlStore {
    async fn insert_rollout(&self, r: &RolloutRecord) -> Result<()> {
        let mut tx = self.begin_write().await?;
        // A write first, so SQLite takes its write lock before the read (see `enqueue_event`).
        sqlx::query("UPDATE rollouts SET state = state WHERE group_name = $1 AND update_id = $2")
            .bind(&r.group)
            .bind(&r.update_id)
            .execute(&mut *tx)
            .await?;
        let running = sqlx::query("SELECT state FROM rollouts WHERE group_name = $1 AND update_id = $2")
            .bind(&r.group)
            .bind(&r.update_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.try_get::<String, _>("state"))
            .transpose()?;
        if running.as_deref() == Some("running") {
            return Err(StoreError::Conflict(format!("a rollout of {} runs in {}", r.update_id, r.group)));
        }
        for table in ["rollouts", "rollout_samples"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE group_name = $1 AND update_id = $2"))
                .bind(&r.group)
                .bind(&r.update_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO rollouts (group_name, update_id, state, hold, max_failures, max_failure_percent, \
             stuck_secs, reason, started_at, changed_at, stages, stage, stage_started_at, soak_secs, \
             success_percent, retries, retry_mark) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(&r.group)
        .bind(&r.update_id)
        .bind(&r.state)
        .bind(i64::from(r.hold))
        .bind(to_bigint(r.max_failures, "max_failures")?)
        .bind(i64::from(r.max_failure_percent))
        .bind(to_bigint(r.stuck_secs, "stuck_secs")?)
        .bind(&r.reason)
        .bind(r.started_at)
        .bind(r.changed_at)
        .bind(stages_text(&r.stages))
        .bind(i64::from(r.stage))
        .bind(r.stage_started_at)
        .bind(to_bigint(r.soak_secs, "soak_secs")?)
        .bind(i64::from(r.success_percent))
        .bind(to_bigint(r.retries, "retries")?)
        .bind(to_bigint(r.retry_mark, "retry_mark")?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rollouts(&self) -> Result<Vec<RolloutRecord>> {
        let rows = sqlx::query("SELECT * FROM rollouts ORDER BY group_name, update_id").fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    async fn set_rollout_state(
        &self,
        group: &str,
        update_id: &str,
        state: &str,
        hold: u8,
        reason: &str,
        at: i64,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE rollouts SET state = $1, hold = $2, reason = $3, changed_at = $4 \
             WHERE group_name = $5 AND update_id = $6",
        )
        .bind(state)
        .bind(i64::from(hold))
        .bind(reason)
        .bind(at)
        .bind(group)
        .bind(update_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn stuck_devices(&self, targets: &[String], since: i64, before: i64) -> Result<u64> {
        let mut n = 0;
        for target in targets {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n FROM device_update_states s JOIN devices d ON d.id = s.device_id \
                 WHERE s.target = $1 AND s.state IN ('downloading', 'downloaded', 'installing', 'reboot_required') \
                 AND s.at >= $2 AND s.at < $3 AND d.state = 'accepted'",
            )
            .bind(target)
            .bind(since)
            .bind(before)
            .fetch_one(&self.pool)
            .await?;
            n += from_bigint(row.try_get("n")?, "n")?;
        }
        Ok(n)
    }

    async fn states_since(&self, targets: &[String], since: i64) -> Result<std::collections::BTreeMap<String, u64>> {
        let mut out = std::collections::BTreeMap::new();
        for target in targets {
            let rows = sqlx::query(
                "SELECT s.state AS state, COUNT(*) AS n FROM device_update_states s JOIN devices d ON d.id = s.device_id \
                 WHERE s.target = $1 AND s.at >= $2 AND d.state = 'accepted' GROUP BY s.state",
            )
            .bind(target)
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
            for row in rows {
                *out.entry(row.try_get::<String, _>("state")?).or_insert(0) += from_bigint(row.try_get("n")?, "n")?;
            }
        }
        Ok(out)
    }

    async fn restart_rollout_clock(&self, group: &str, update_id: &str, at: i64) -> Result<()> {
        sqlx::query("UPDATE rollouts SET started_at = $1 WHERE group_name = $2 AND update_id = $3")
            .bind(at)
            .bind(group)
            .bind(update_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_rollout_stage(&self, group: &str, update_id: &str, stage: u8, hold: u8, at: i64) -> Result<()> {
        let done = sqlx::query(
            "UPDATE rollouts SET stage = $1, hold = $2, stage_started_at = $3, changed_at = $3 \
             WHERE group_name = $4 AND update_id = $5",
        )
        .bind(i64::from(stage))
        .bind(i64::from(hold))
        .bind(at)
        .bind(group)
        .bind(update_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn retry_rollout(&self, group: &str, update_id: &str, mark: u64, at: i64) -> Result<u64> {
        let row = sqlx::query(
            "UPDATE rollouts SET retries = retries + 1, retry_mark = $4, started_at = $1, changed_at = $1 \
             WHERE group_name = $2 AND update_id = $3 RETURNING retries",
        )
        .bind(at)
        .bind(group)
        .bind(update_id)
        .bind(to_bigint(mark, "retry_mark")?)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        from_bigint(row.try_get("retries")?, "retries")
    }

    async fn set_rollout_unapproved(&self, group: &str, update_id: &str, since: Option<i64>) -> Result<()> {
        sqlx::query("UPDATE rollouts SET unapproved_since = $1 WHERE group_name = $2 AND update_id = $3")
            .bind(since)
            .bind(group)
            .bind(update_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_rollout(&self, group: &str, update_id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for table in ["rollouts", "rollout_samples"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE group_name = $1 AND update_id = $2"))
                .bind(group)
                .bind(update_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn add_rollout_sample(
        &self,
        group: &str,
        update_id: &str,
        sample: &RolloutSample,
        min_gap: i64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        // The write first: SQLite takes its write lock now (a transaction that read first could
        // not take it later while another connection writes). Undone below if too soon.
        let inserted = sqlx::query(
            "INSERT INTO rollout_samples (group_name, update_id, at, share, devices, installed, failed, stuck) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (group_name, update_id, at) DO NOTHING",
        )
        .bind(group)
        .bind(update_id)
        .bind(sample.at)
        .bind(i64::from(sample.share))
        .bind(to_bigint(sample.devices, "devices")?)
        .bind(to_bigint(sample.installed, "installed")?)
        .bind(to_bigint(sample.failed, "failed")?)
        .bind(to_bigint(sample.stuck, "stuck")?)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(false);
        }
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MAX(at) AS newest FROM rollout_samples \
             WHERE group_name = $1 AND update_id = $2 AND at <> $3",
        )
        .bind(group)
        .bind(update_id)
        .bind(sample.at)
        .fetch_one(&mut *tx)
        .await?;
        let kept = from_bigint(row.try_get("n")?, "n")?;
        let newest: Option<i64> = row.try_get("newest")?;
        if newest.is_some_and(|newest| sample.at.saturating_sub(newest) < min_gap || sample.at <= newest) {
            // Dropped without a commit: the insert is undone.
            return Ok(false);
        }
        if kept >= MAX_ROLLOUT_SAMPLES {
            // Thin the oldest half to every other sample: the chart keeps its whole span.
            let rows = sqlx::query(
                "SELECT at FROM rollout_samples WHERE group_name = $1 AND update_id = $2 ORDER BY at LIMIT $3",
            )
            .bind(group)
            .bind(update_id)
            .bind(to_bigint(MAX_ROLLOUT_SAMPLES / 2, "limit")?)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows.iter().skip(1).step_by(2) {
                sqlx::query("DELETE FROM rollout_samples WHERE group_name = $1 AND update_id = $2 AND at = $3")
                    .bind(group)
                    .bind(update_id)
                    .bind(row.try_get::<i64, _>("at")?)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn rollout_samples(&self, group: &str, update_id: &str, since: i64) -> Result<Vec<RolloutSample>> {
        let rows = sqlx::query(
            "SELECT at, share, devices, installed, failed, stuck FROM rollout_samples \
             WHERE group_name = $1 AND update_id = $2 AND at >= $3 ORDER BY at LIMIT $4",
        )
        .bind(group)
        .bind(update_id)
        .bind(since)
        .bind(to_bigint(MAX_ROLLOUT_SAMPLES, "limit")?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RolloutSample {
                    at: r.try_get("at")?,
                    share: u8::try_from(r.try_get::<i64, _>("share")?).unwrap_or(0),
                    devices: from_bigint(r.try_get("devices")?, "devices")?,
                    installed: from_bigint(r.try_get("installed")?, "installed")?,
                    failed: from_bigint(r.try_get("failed")?, "failed")?,
                    stuck: from_bigint(r.try_get("stuck")?, "stuck")?,
                })
            })
            .collect()
    }

    async fn rollout_devices(&self, groups: &[String], targets: &[String]) -> Result<Vec<RolloutDevice>> {
        let mut out: std::collections::BTreeMap<String, RolloutDevice> = std::collections::BTreeMap::new();
        for group in groups {
            // `groups` is a comma-separated list: match one whole name.
            let rows = sqlx::query(
                "SELECT id, public_key FROM devices WHERE state = 'accepted' \
                 AND (',' || groups || ',') LIKE ('%,' || $1 || ',%')",
            )
            .bind(group)
            .fetch_all(&self.pool)
            .await?;
            for row in rows {
                let id: String = row.try_get("id")?;
                let public_key: String = row.try_get("public_key")?;
                out.entry(id).or_insert(RolloutDevice { public_key, states: Default::default() });
            }
        }
        for target in targets {
            let rows = sqlx::query("SELECT device_id, state FROM device_update_states WHERE target = $1")
                .bind(target)
                .fetch_all(&self.pool)
                .await?;
            for row in rows {
                if let Some(device) = out.get_mut(&row.try_get::<String, _>("device_id")?) {
                    device.states.insert(target.clone(), row.try_get("state")?);
                }
            }
        }
        Ok(out.into_values().collect())
    }

    async fn rollout_holds(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let row =
            sqlx::query("SELECT version, bytes FROM rollout_holds WHERE id = 1").fetch_optional(&self.pool).await?;
        row.map(|r| Ok((from_bigint(r.try_get("version")?, "version")?, r.try_get("bytes")?))).transpose()
    }

    async fn rollout_holds_version(&self) -> Result<u64> {
        let row = sqlx::query("SELECT version FROM rollout_holds WHERE id = 1").fetch_optional(&self.pool).await?;
        row.map_or(Ok(0), |r| from_bigint(r.try_get("version")?, "version"))
    }

    async fn put_rollout_holds(&self, version: u64, bytes: &[u8]) -> Result<()> {
        // Only forward: a node that signed an older or the same version (its lock lost, say)
        // cannot replace what another node published.
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "INSERT INTO rollout_holds (id, version, bytes) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET version = excluded.version, bytes = excluded.bytes \
             WHERE rollout_holds.version < excluded.version",
        )
        .bind(to_bigint(version, "version")?)
        .bind(bytes)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "rollout holds version {version} is not newer than the stored one"
            )));
        }
        crate::changes::notify_in(&mut tx, self.engine(), crate::Change::Holds).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: i64, installed: u64) -> RolloutSample {
        RolloutSample { at, share: 20, devices: 9, installed, failed: 1, stuck: 0 }
    }

    #[tokio::test]
    async fn samples_keep_their_gap_stay_bounded_over_the_whole_span_and_go_with_the_rollout() {
        let (_dir, store) = crate::sql::test_store().await;
        assert!(store.add_rollout_sample("pilot", "kb-1", &sample(1_000, 0), 60).await.unwrap());
        assert!(!store.add_rollout_sample("pilot", "kb-1", &sample(1_030, 1), 60).await.unwrap(), "too soon");
        assert!(!store.add_rollout_sample("pilot", "kb-1", &sample(900, 1), 0).await.unwrap(), "older");
        assert!(store.add_rollout_sample("pilot", "kb-1", &sample(1_060, 2), 60).await.unwrap());
        assert!(store.add_rollout_sample("prod", "kb-1", &sample(1_000, 5), 60).await.unwrap(), "another rollout");
        let kept = store.rollout_samples("pilot", "kb-1", 0).await.unwrap();
        assert_eq!(kept, vec![sample(1_000, 0), sample(1_060, 2)]);
        assert_eq!(store.rollout_samples("pilot", "kb-1", 1_001).await.unwrap(), vec![sample(1_060, 2)]);

        for i in 2..=MAX_ROLLOUT_SAMPLES + 10 {
            let at = 1_000 + 60 * i64::try_from(i).unwrap();
            assert!(store.add_rollout_sample("pilot", "kb-1", &sample(at, i), 0).await.unwrap());
        }
        let kept = store.rollout_samples("pilot", "kb-1", 0).await.unwrap();
        assert!(kept.len() as u64 <= MAX_ROLLOUT_SAMPLES, "{}", kept.len());
        assert!(kept.len() as u64 > MAX_ROLLOUT_SAMPLES / 2, "{}", kept.len());
        assert_eq!(kept.first().map(|s| s.at), Some(1_000), "the start stays");
        assert_eq!(kept.last().map(|s| s.installed), Some(MAX_ROLLOUT_SAMPLES + 10), "and the newest");
        assert!(kept.windows(2).all(|w| w[0].at < w[1].at));

        store.delete_rollout("pilot", "kb-1").await.unwrap();
        assert!(store.rollout_samples("pilot", "kb-1", 0).await.unwrap().is_empty());
        assert_eq!(store.rollout_samples("prod", "kb-1", 0).await.unwrap().len(), 1);
    }
}
