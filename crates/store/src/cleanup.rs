//! What a cleanup may remove: content no catalog file references, the content of given
//! updates, and devices not seen for a long time, with everything kept about them.

use sqlx::Row;

use crate::compliance::{Bucket, adjust_group_devices, apply_compliance_deltas};
use crate::sql::{SqlStore, from_bigint, split_names, to_bigint};
use crate::{DeviceState, Result};

/// Stored content, by hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    pub sha256: String,
    pub length: u64,
    pub created_at: i64,
}

/// A device as a cleanup lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgettableDevice {
    pub id: String,
    pub hostname: String,
    pub state: String,
    /// Its last check-in, or when it enrolled if it never checked in.
    pub last_seen: i64,
}

#[async_trait::async_trait]
pub trait CleanupStore: Send + Sync + 'static {
    /// Content uploaded before `before` that no catalog file references, at most `limit`.
    async fn orphan_blobs(&self, before: i64, limit: u64) -> Result<Vec<BlobRecord>>;
    /// The content of the files of `update_ids` that no file of another update references.
    async fn blobs_only_of(&self, update_ids: &[String]) -> Result<Vec<BlobRecord>>;
    /// Forget a blob record (its file is the blob store's to delete).
    async fn delete_blob_record(&self, sha256: &str) -> Result<()>;
    /// Devices (any state but pending) last seen before `before`, at most `limit`.
    async fn devices_last_seen_before(&self, before: i64, limit: u64) -> Result<Vec<ForgettableDevice>>;
    /// Delete a device and everything kept about it, in one transaction; its reports leave
    /// the compliance counts and its groups' device counts.
    async fn delete_device(&self, id: &str) -> Result<()>;
}

fn blob_from_row(row: &sqlx::any::AnyRow) -> Result<BlobRecord> {
    Ok(BlobRecord {
        sha256: row.try_get("sha256")?,
        length: from_bigint(row.try_get("length")?, "length")?,
        created_at: row.try_get("created_at")?,
    })
}

#[async_trait::async_trait]
impl CleanupStore for SqlStore {
    async fn orphan_blobs(&self, before: i64, limit: u64) -> Result<Vec<BlobRecord>> {
        let rows = sqlx::query(
            "SELECT sha256, length, created_at FROM blobs b WHERE created_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM update_files f WHERE f.sha256 = b.sha256) ORDER BY sha256 LIMIT $2",
        )
        .bind(before)
        .bind(to_bigint(limit, "limit")?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(blob_from_row).collect()
    }

    async fn blobs_only_of(&self, update_ids: &[String]) -> Result<Vec<BlobRecord>> {
        let mut out: Vec<BlobRecord> = Vec::new();
        for id in update_ids {
            let rows = sqlx::query(
                "SELECT DISTINCT b.sha256 AS sha256, b.length AS length, b.created_at AS created_at \
                 FROM update_files f JOIN blobs b ON b.sha256 = f.sha256 WHERE f.update_id = $1",
            )
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
            for row in rows {
                let blob = blob_from_row(&row)?;
                let others: Vec<String> = sqlx::query("SELECT DISTINCT update_id FROM update_files WHERE sha256 = $1")
                    .bind(&blob.sha256)
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(|r| r.try_get("update_id"))
                    .collect::<std::result::Result<_, _>>()?;
                if others.iter().all(|u| update_ids.contains(u)) && !out.iter().any(|b| b.sha256 == blob.sha256) {
                    out.push(blob);
                }
            }
        }
        Ok(out)
    }

    async fn delete_blob_record(&self, sha256: &str) -> Result<()> {
        sqlx::query("DELETE FROM blobs WHERE sha256 = $1").bind(sha256).execute(&self.pool).await?;
        Ok(())
    }

    async fn devices_last_seen_before(&self, before: i64, limit: u64) -> Result<Vec<ForgettableDevice>> {
        let rows = sqlx::query(
            "SELECT id, hostname, state, COALESCE(last_checkin, enrolled_at) AS last_seen FROM devices \
             WHERE state <> 'pending' AND COALESCE(last_checkin, enrolled_at) < $1 ORDER BY id LIMIT $2",
        )
        .bind(before)
        .bind(to_bigint(limit, "limit")?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ForgettableDevice {
                    id: r.try_get("id")?,
                    hostname: r.try_get("hostname")?,
                    state: r.try_get("state")?,
                    last_seen: r.try_get("last_seen")?,
                })
            })
            .collect()
    }

    async fn delete_device(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let done =
            sqlx::query("UPDATE devices SET hostname = hostname WHERE id = $1").bind(id).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(crate::StoreError::NotFound);
        }
        let row = sqlx::query("SELECT state, groups FROM devices WHERE id = $1").bind(id).fetch_one(&mut *tx).await?;
        if row.try_get::<String, _>("state")? == DeviceState::Accepted.as_str() {
            adjust_group_devices(&mut tx, &split_names(&row.try_get::<String, _>("groups")?), -1).await?;
            let rows = sqlx::query("SELECT target, state FROM device_update_states WHERE device_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
            let mut deltas = std::collections::BTreeMap::new();
            for r in rows {
                let state: String = r.try_get("state")?;
                *deltas.entry((r.try_get::<String, _>("target")?, Bucket::of_state(&state))).or_insert(0) -= 1;
            }
            apply_compliance_deltas(&mut tx, &deltas).await?;
        }
        for table in
            ["device_sessions", "device_challenges", "status_reports", "device_update_states", "report_batches"]
        {
            sqlx::query(&format!("DELETE FROM {table} WHERE device_id = $1")).bind(id).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM devices WHERE id = $1").bind(id).execute(&mut *tx).await?;
        crate::changes::notify_in(&mut tx, self.engine(), crate::Change::Sessions).await?;
        tx.commit().await?;
        Ok(())
    }
}
