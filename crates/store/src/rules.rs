//! Automatic approval rules and their progress: the rule's body is JSON the server parses into
//! its fixed schema; the store keeps it whole.

use sqlx::Row;

use crate::sql::{SqlStore, conflict_or};
use crate::{Result, StoreError, UpdateRecord};

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRecord {
    pub id: String,
    /// The rule, as JSON text.
    pub body: String,
    pub created_at: i64,
}

#[async_trait::async_trait]
pub trait RuleStore: Send + Sync + 'static {
    async fn insert_rule(&self, rule: &RuleRecord) -> Result<()>;
    /// Every rule, oldest first.
    async fn list_rules(&self) -> Result<Vec<RuleRecord>>;
    /// Delete a rule and its progress; `NotFound` if there is none.
    async fn delete_rule(&self, id: &str) -> Result<()>;
    /// When the rule's condition was first seen to hold for the update.
    async fn rule_progress(&self, rule_id: &str, update_id: &str) -> Result<Option<i64>>;
    /// Record that it holds since `since` (kept if already recorded).
    async fn set_rule_progress(&self, rule_id: &str, update_id: &str, since: i64) -> Result<()>;
    /// Forget that it held (it no longer does).
    async fn clear_rule_progress(&self, rule_id: &str, update_id: &str) -> Result<()>;
    /// One update of the catalog.
    async fn update(&self, id: &str) -> Result<Option<UpdateRecord>>;
    /// Updates recorded at or after `since`, oldest first, at most `limit`.
    async fn updates_since(&self, since: i64, limit: u64) -> Result<Vec<UpdateRecord>>;
}

#[async_trait::async_trait]
impl RuleStore for SqlStore {
    async fn insert_rule(&self, rule: &RuleRecord) -> Result<()> {
        sqlx::query("INSERT INTO approval_rules (id, body, created_at) VALUES ($1, $2, $3)")
            .bind(&rule.id)
            .bind(&rule.body)
            .bind(rule.created_at)
            .execute(&self.pool)
            .await
            .map_err(|e| conflict_or(e, || format!("rule {} exists", rule.id)))?;
        Ok(())
    }

    async fn list_rules(&self) -> Result<Vec<RuleRecord>> {
        let rows = sqlx::query("SELECT id, body, created_at FROM approval_rules ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RuleRecord { id: r.try_get("id")?, body: r.try_get("body")?, created_at: r.try_get("created_at")? })
            })
            .collect()
    }

    async fn delete_rule(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM rule_progress WHERE rule_id = $1").bind(id).execute(&mut *tx).await?;
        let done = sqlx::query("DELETE FROM approval_rules WHERE id = $1").bind(id).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    async fn rule_progress(&self, rule_id: &str, update_id: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT since FROM rule_progress WHERE rule_id = $1 AND update_id = $2")
            .bind(rule_id)
            .bind(update_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("since")).transpose()?)
    }

    async fn set_rule_progress(&self, rule_id: &str, update_id: &str, since: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO rule_progress (rule_id, update_id, since) VALUES ($1, $2, $3) \
             ON CONFLICT (rule_id, update_id) DO NOTHING",
        )
        .bind(rule_id)
        .bind(update_id)
        .bind(since)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn clear_rule_progress(&self, rule_id: &str, update_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM rule_progress WHERE rule_id = $1 AND update_id = $2")
            .bind(rule_id)
            .bind(update_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn updates_since(&self, since: i64, limit: u64) -> Result<Vec<UpdateRecord>> {
        let rows = sqlx::query(
            "SELECT id, publisher, manifest, created_at FROM updates WHERE created_at >= $1 \
             ORDER BY created_at, id LIMIT $2",
        )
        .bind(since)
        .bind(crate::sql::to_bigint(limit, "limit")?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UpdateRecord {
                    id: r.try_get("id")?,
                    publisher: r.try_get("publisher")?,
                    manifest: r.try_get("manifest")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn update(&self, id: &str) -> Result<Option<UpdateRecord>> {
        let row = sqlx::query("SELECT id, publisher, manifest, created_at FROM updates WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(UpdateRecord {
                id: r.try_get("id")?,
                publisher: r.try_get("publisher")?,
                manifest: r.try_get("manifest")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }
}
