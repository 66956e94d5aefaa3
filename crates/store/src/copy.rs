//! Moving an installation's database: every row of every table from the embedded SQLite file
//! into an empty PostgreSQL database (`ringfence migrate`), in one transaction of the target,
//! then counted on both sides.

use futures::TryStreamExt;
use sqlx::Row;

use crate::sql::{Engine, SqlStore};
use crate::{Result, StoreError};

/// Every table, parents before the tables whose foreign keys name them.
pub const TABLES: &[&str] = &[
    "metadata",
    "pending_metadata",
    "api_tokens",
    "blobs",
    "updates",
    "update_files",
    "audit_log",
    "devices",
    "enrollment_tokens",
    "device_challenges",
    "device_sessions",
    "report_batches",
    "status_reports",
    "device_update_states",
    "compliance_counts",
    "group_devices",
    "update_cves",
    "approval_rules",
    "rule_progress",
    "rollouts",
    "rollout_holds",
    "rollout_samples",
    "leases",
    "log_queue",
    "log_entries",
    "log_hashes",
    "log_metadata",
    "log_checkpoints",
    "log_witnesses",
    "console_sessions",
    "webhook_outbox",
    "version_floors",
    "replica_groups",
];

/// Rows per INSERT statement (PostgreSQL takes at most 65,535 parameters in one).
const ROWS_PER_INSERT: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Integer,
    Text,
    Blob,
    Boolean,
}

enum Value {
    Integer(Option<i64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
    Boolean(Option<bool>),
}

fn refused(message: String) -> StoreError {
    StoreError::Refused(message)
}

impl SqlStore {
    /// Rows per table, in [`TABLES`] order.
    pub async fn row_counts(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for table in TABLES {
            let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}")).fetch_one(&self.pool).await?;
            out.push(((*table).to_owned(), crate::sql::from_bigint(row.try_get("n")?, "n")?));
        }
        Ok(out)
    }

    /// Copy every row of this SQLite store into `target`, an empty PostgreSQL store at the same
    /// schema version, in one transaction: all of it or nothing. Returns the rows copied per
    /// table, checked against a count of the target afterwards.
    pub async fn copy_into(&self, target: &SqlStore) -> Result<Vec<(String, u64)>> {
        if self.engine() != Engine::Sqlite || target.engine() != Engine::Postgres {
            return Err(refused("the copy goes from the embedded SQLite database to PostgreSQL".into()));
        }
        if target.row_counts().await?.iter().any(|(_, n)| *n > 0) {
            return Err(refused("the target database already holds data: give an empty one".into()));
        }
        let mut copied = Vec::new();
        let mut tx = target.pool.begin().await?;
        for table in TABLES {
            let columns = self.columns(table).await?;
            let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
            // Read booleans as numbers: sqlx's `Any` driver reads no SQLite booleans.
            let select: Vec<String> = columns
                .iter()
                .map(|(name, kind)| match kind {
                    Kind::Boolean => format!("CASE WHEN {name} THEN 1 ELSE 0 END AS {name}"),
                    _ => name.clone(),
                })
                .collect();
            let query = format!("SELECT {} FROM {table}", select.join(", "));
            let mut rows = sqlx::query(&query).fetch(&self.pool);
            let mut batch: Vec<Vec<Value>> = Vec::new();
            let mut n = 0u64;
            while let Some(row) = rows.try_next().await? {
                let mut values = Vec::with_capacity(columns.len());
                for (name, kind) in &columns {
                    values.push(match kind {
                        Kind::Integer => Value::Integer(row.try_get(name.as_str())?),
                        Kind::Text => Value::Text(row.try_get(name.as_str())?),
                        Kind::Blob => Value::Blob(row.try_get(name.as_str())?),
                        Kind::Boolean => Value::Boolean(row.try_get::<Option<i64>, _>(name.as_str())?.map(|b| b != 0)),
                    });
                }
                batch.push(values);
                n += 1;
                if batch.len() == ROWS_PER_INSERT {
                    insert(&mut tx, table, &names, std::mem::take(&mut batch)).await?;
                }
            }
            insert(&mut tx, table, &names, batch).await?;
            copied.push(((*table).to_owned(), n));
        }
        // The log's tiles are not copied with the blobs: the sequencer writes them again from
        // the copied entries and hashes before it serves a checkpoint.
        sqlx::query("UPDATE log_checkpoints SET tiles_written = 0").execute(&mut *tx).await?;
        // The identity columns go on after the copied ids.
        for table in ["audit_log", "log_queue"] {
            let sql = format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            );
            sqlx::query(&sql).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        let counted = target.row_counts().await?;
        if counted != copied {
            return Err(refused(format!("the target counts {counted:?} after copying {copied:?}")));
        }
        Ok(copied)
    }

    /// Every blob a catalog file references: (sha256, length).
    pub async fn referenced_blobs(&self) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query(
            "SELECT DISTINCT b.sha256 AS sha256, b.length AS length FROM blobs b \
             JOIN update_files f ON f.sha256 = b.sha256 ORDER BY b.sha256",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("sha256")?, crate::sql::from_bigint(r.try_get("length")?, "length")?)))
            .collect()
    }

    /// Every blob the catalog records: (sha256, length).
    pub async fn blob_records(&self) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query("SELECT sha256, length FROM blobs ORDER BY sha256").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("sha256")?, crate::sql::from_bigint(r.try_get("length")?, "length")?)))
            .collect()
    }

    /// A SQLite table's columns and how to carry each, from its declared types.
    async fn columns(&self, table: &str) -> Result<Vec<(String, Kind)>> {
        let rows = sqlx::query(&format!("SELECT name, type FROM pragma_table_info('{table}') ORDER BY cid"))
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let name: String = row.try_get("name")?;
            let declared: String = row.try_get("type")?;
            let kind = match declared.to_ascii_uppercase().as_str() {
                "INTEGER" | "BIGINT" => Kind::Integer,
                "TEXT" => Kind::Text,
                "BLOB" => Kind::Blob,
                "BOOLEAN" => Kind::Boolean,
                other => return Err(refused(format!("{table}.{name}: no copy for type {other}"))),
            };
            out.push((name, kind));
        }
        if out.is_empty() {
            return Err(refused(format!("no table {table} in the source")));
        }
        Ok(out)
    }
}

async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    table: &str,
    names: &[&str],
    rows: Vec<Vec<Value>>,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut placeholders = Vec::with_capacity(rows.len());
    let mut next = 1;
    for _ in &rows {
        let one: Vec<String> = (0..names.len()).map(|i| format!("${}", next + i)).collect();
        next += names.len();
        placeholders.push(format!("({})", one.join(", ")));
    }
    let statement = format!("INSERT INTO {table} ({}) VALUES {}", names.join(", "), placeholders.join(", "));
    let mut query = sqlx::query(&statement);
    for value in rows.into_iter().flatten() {
        query = match value {
            Value::Integer(v) => query.bind(v),
            Value::Text(v) => query.bind(v),
            Value::Blob(v) => query.bind(v),
            Value::Boolean(v) => query.bind(v),
        };
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_table_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::open(&dir.path().join("ringfence.db")).await.unwrap();
        let rows = sqlx::query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND name <> '_sqlx_migrations' ORDER BY name",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        let mut tables: Vec<String> = rows.iter().map(|r| r.try_get("name").unwrap()).collect();
        let mut listed: Vec<String> = TABLES.iter().map(|t| (*t).to_owned()).collect();
        tables.sort();
        listed.sort();
        assert_eq!(tables, listed, "a new table is copied by `ringfence migrate` too: add it to TABLES");
        for table in TABLES {
            store.columns(table).await.unwrap();
        }
    }
}
