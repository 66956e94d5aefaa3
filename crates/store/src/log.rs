//! The transparency log's rows: the queue of entries waiting to be integrated, the integrated
//! entries and the tree's stored hashes, checkpoints and what witnesses last cosigned.
//!
//! The Merkle math is the `tlog` crate's and the sequencing the server's; this module only
//! keeps what they produce, and refuses a batch that does not extend the log exactly where it
//! ends (so two sequencers can never write two different entries at one index).

use sqlx::Row;

use crate::sql::{SqlStore, count_from_row, from_bigint, to_bigint};
use crate::{Result, StoreError};

/// An entry waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEntry {
    pub id: i64,
    pub entry: Vec<u8>,
}

/// A checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRecord {
    pub size: u64,
    /// The note signed by the log key alone.
    pub note: Vec<u8>,
    pub created_at: i64,
    /// Whether its tiles are in the content store (it is served only then).
    pub tiles_written: bool,
    /// The note with the witnesses' cosignatures added, once there are any.
    pub cosigned: Option<Vec<u8>>,
    /// How many witnesses cosigned it.
    pub cosigners: u64,
}

/// What one sequencer run adds: the entries from `first` on, the stored hashes they complete,
/// where the metadata versions among them are, the queue rows they came from and the new
/// checkpoint (`tiles_written` false).
#[derive(Debug, Clone, Default)]
pub struct LogBatch {
    pub first: u64,
    pub entries: Vec<Vec<u8>>,
    pub hashes: Vec<(u64, [u8; 32])>,
    /// (role, version, index) of each metadata entry.
    pub metadata: Vec<(String, u64, u64)>,
    pub queue_ids: Vec<i64>,
    pub checkpoint_note: Vec<u8>,
    pub created_at: i64,
}

#[async_trait::async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Queue entries outside any other write (events whose own writes are elsewhere).
    async fn enqueue_log(&self, entries: &[Vec<u8>]) -> Result<()>;
    /// The oldest queued entries, at most `limit`.
    async fn log_queue(&self, limit: u64) -> Result<Vec<QueuedEntry>>;
    /// Replace whatever waits in the queue with `entries`, in order (a restore putting back the
    /// log's tail as it was logged).
    async fn replace_log_queue(&self, entries: &[Vec<u8>]) -> Result<()>;
    /// Entries integrated so far.
    async fn log_size(&self) -> Result<u64>;
    /// The stored hashes at `indexes` that exist (fewer when some do not).
    async fn log_hashes(&self, indexes: &[u64]) -> Result<Vec<(u64, [u8; 32])>>;
    /// Entries `from..to` (each integrated one exactly once, in order).
    async fn log_entries(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>>;
    /// Integrate `batch` in one transaction; `Conflict` (nothing written) unless the log has
    /// exactly `batch.first` entries. A batch without entries only drops its queue rows.
    async fn integrate_log(&self, batch: &LogBatch) -> Result<()>;
    /// Checkpoints whose tiles are not written yet, smallest first.
    async fn unwritten_checkpoints(&self) -> Result<Vec<CheckpointRecord>>;
    /// The largest checkpoint whose tiles are written.
    async fn latest_checkpoint(&self) -> Result<Option<CheckpointRecord>>;
    /// The largest checkpoint whose tiles are written and that at least `quorum` witnesses
    /// cosigned.
    async fn latest_cosigned_checkpoint(&self, quorum: u64) -> Result<Option<CheckpointRecord>>;
    async fn checkpoint_at(&self, size: u64) -> Result<Option<CheckpointRecord>>;
    async fn mark_tiles_written(&self, size: u64) -> Result<()>;
    /// Keep `note` (the checkpoint of `size` with the cosignatures of `witnesses`) and the size
    /// each of them cosigned.
    async fn set_cosigned(&self, size: u64, note: &[u8], witnesses: &[String]) -> Result<()>;
    /// The size `witness` last cosigned (0 when never).
    async fn witness_size(&self, witness: &str) -> Result<u64>;
    /// Where metadata `role` version `version` is in the log.
    async fn log_index_of(&self, role: &str, version: u64) -> Result<Option<u64>>;
}

/// Queue `entries` inside transaction `tx` (of a write that the entries record).
pub(crate) async fn queue_in(tx: &mut sqlx::Transaction<'_, sqlx::Any>, entries: &[Vec<u8>]) -> Result<()> {
    for entry in entries {
        sqlx::query("INSERT INTO log_queue (entry) VALUES ($1)").bind(entry.as_slice()).execute(&mut **tx).await?;
    }
    Ok(())
}

fn checkpoint_from_row(row: &sqlx::any::AnyRow) -> Result<CheckpointRecord> {
    Ok(CheckpointRecord {
        size: from_bigint(row.try_get("size")?, "size")?,
        note: row.try_get("note")?,
        created_at: row.try_get("created_at")?,
        tiles_written: row.try_get::<i32, _>("tiles_written")? != 0,
        cosigned: row.try_get("cosigned")?,
        cosigners: u64::try_from(row.try_get::<i32, _>("cosigners")?).unwrap_or(0),
    })
}

fn hash_of(bytes: &[u8]) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(bytes).map_err(|_| {
        StoreError::Database(sqlx::Error::ColumnDecode {
            index: "hash".into(),
            source: format!("a stored hash of {} bytes", bytes.len()).into(),
        })
    })
}

const CHECKPOINT_COLUMNS: &str = "size, note, created_at, tiles_written, cosigned, cosigners";

#[async_trait::async_trait]
impl LogStore for SqlStore {
    async fn enqueue_log(&self, entries: &[Vec<u8>]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        queue_in(&mut tx, entries).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn replace_log_queue(&self, entries: &[Vec<u8>]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM log_queue").execute(&mut *tx).await?;
        queue_in(&mut tx, entries).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn log_queue(&self, limit: u64) -> Result<Vec<QueuedEntry>> {
        let rows = sqlx::query("SELECT id, entry FROM log_queue ORDER BY id LIMIT $1")
            .bind(to_bigint(limit, "limit")?)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(QueuedEntry { id: r.try_get("id")?, entry: r.try_get("entry")? })).collect()
    }

    async fn log_size(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COALESCE(MAX(idx) + 1, 0) AS n FROM log_entries").fetch_one(&self.pool).await?;
        count_from_row(&row)
    }

    async fn log_hashes(&self, indexes: &[u64]) -> Result<Vec<(u64, [u8; 32])>> {
        let mut out = Vec::with_capacity(indexes.len());
        // One query per few hundred indexes (a proof or a tile needs at most 256 and 64).
        for chunk in indexes.chunks(256) {
            let params: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!("SELECT idx, hash FROM log_hashes WHERE idx IN ({})", params.join(", "));
            let mut query = sqlx::query(&sql);
            for i in chunk {
                query = query.bind(to_bigint(*i, "index")?);
            }
            for row in query.fetch_all(&self.pool).await? {
                let bytes: Vec<u8> = row.try_get("hash")?;
                out.push((from_bigint(row.try_get("idx")?, "idx")?, hash_of(&bytes)?));
            }
        }
        Ok(out)
    }

    async fn log_entries(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>> {
        let rows = sqlx::query("SELECT idx, entry FROM log_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx")
            .bind(to_bigint(from, "from")?)
            .bind(to_bigint(to, "to")?)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (expected, row) in (from..).zip(&rows) {
            if from_bigint(row.try_get("idx")?, "idx")? != expected {
                return Err(StoreError::Refused(format!("the log has no entry {expected}")));
            }
            out.push(row.try_get("entry")?);
        }
        Ok(out)
    }

    async fn integrate_log(&self, batch: &LogBatch) -> Result<()> {
        let mut tx = self.begin_write().await?;
        // A write first (the queue rows taken), so SQLite takes the write lock up front.
        for id in &batch.queue_ids {
            sqlx::query("DELETE FROM log_queue WHERE id = $1").bind(*id).execute(&mut *tx).await?;
        }
        if batch.entries.is_empty() {
            // Only queue rows to drop (entries already on the log): no new checkpoint.
            tx.commit().await?;
            return Ok(());
        }
        let row = sqlx::query("SELECT COALESCE(MAX(idx) + 1, 0) AS n FROM log_entries").fetch_one(&mut *tx).await?;
        let size = count_from_row(&row)?;
        if size != batch.first {
            return Err(StoreError::Conflict(format!("the log has {size} entries, not {}", batch.first)));
        }
        for (i, entry) in (batch.first..).zip(&batch.entries) {
            // The primary key makes a second writer at the same index fail the whole batch.
            sqlx::query("INSERT INTO log_entries (idx, entry) VALUES ($1, $2)")
                .bind(to_bigint(i, "index")?)
                .bind(entry.as_slice())
                .execute(&mut *tx)
                .await
                .map_err(|e| crate::sql::conflict_or(e, || format!("log entry {i} exists")))?;
        }
        for (i, hash) in &batch.hashes {
            sqlx::query("INSERT INTO log_hashes (idx, hash) VALUES ($1, $2)")
                .bind(to_bigint(*i, "index")?)
                .bind(hash.as_slice())
                .execute(&mut *tx)
                .await
                .map_err(|e| crate::sql::conflict_or(e, || format!("log hash {i} exists")))?;
        }
        for (role, version, idx) in &batch.metadata {
            sqlx::query("INSERT INTO log_metadata (role, version, idx) VALUES ($1, $2, $3)")
                .bind(role.as_str())
                .bind(to_bigint(*version, "version")?)
                .bind(to_bigint(*idx, "index")?)
                .execute(&mut *tx)
                .await
                .map_err(|e| crate::sql::conflict_or(e, || format!("{role} version {version} is logged already")))?;
        }
        let size = batch.first + batch.entries.len() as u64;
        sqlx::query("INSERT INTO log_checkpoints (size, note, created_at, tiles_written) VALUES ($1, $2, $3, 0)")
            .bind(to_bigint(size, "size")?)
            .bind(batch.checkpoint_note.as_slice())
            .bind(batch.created_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| crate::sql::conflict_or(e, || format!("a checkpoint of size {size} exists")))?;
        tx.commit().await?;
        Ok(())
    }

    async fn unwritten_checkpoints(&self) -> Result<Vec<CheckpointRecord>> {
        let sql = format!("SELECT {CHECKPOINT_COLUMNS} FROM log_checkpoints WHERE tiles_written = 0 ORDER BY size");
        sqlx::query(&sql).fetch_all(&self.pool).await?.iter().map(checkpoint_from_row).collect()
    }

    async fn latest_checkpoint(&self) -> Result<Option<CheckpointRecord>> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM log_checkpoints WHERE tiles_written = 1 ORDER BY size DESC LIMIT 1"
        );
        sqlx::query(&sql).fetch_optional(&self.pool).await?.as_ref().map(checkpoint_from_row).transpose()
    }

    async fn latest_cosigned_checkpoint(&self, quorum: u64) -> Result<Option<CheckpointRecord>> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM log_checkpoints WHERE tiles_written = 1 AND cosigned IS NOT NULL \
             AND cosigners >= $1 ORDER BY size DESC LIMIT 1"
        );
        let quorum = to_bigint(quorum, "quorum")?;
        sqlx::query(&sql).bind(quorum).fetch_optional(&self.pool).await?.as_ref().map(checkpoint_from_row).transpose()
    }

    async fn checkpoint_at(&self, size: u64) -> Result<Option<CheckpointRecord>> {
        let Ok(size) = i64::try_from(size) else { return Ok(None) };
        let sql = format!("SELECT {CHECKPOINT_COLUMNS} FROM log_checkpoints WHERE size = $1");
        sqlx::query(&sql).bind(size).fetch_optional(&self.pool).await?.as_ref().map(checkpoint_from_row).transpose()
    }

    async fn mark_tiles_written(&self, size: u64) -> Result<()> {
        sqlx::query("UPDATE log_checkpoints SET tiles_written = 1 WHERE size = $1")
            .bind(to_bigint(size, "size")?)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_cosigned(&self, size: u64, note: &[u8], witnesses: &[String]) -> Result<()> {
        let size = to_bigint(size, "size")?;
        let mut tx = self.begin_write().await?;
        let cosigners = i32::try_from(witnesses.len()).unwrap_or(i32::MAX);
        sqlx::query("UPDATE log_checkpoints SET cosigned = $1, cosigners = $2 WHERE size = $3")
            .bind(note)
            .bind(cosigners)
            .bind(size)
            .execute(&mut *tx)
            .await?;
        for name in witnesses {
            // Only forward: a witness's size never goes back.
            sqlx::query(
                "INSERT INTO log_witnesses (name, size) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET size = excluded.size WHERE log_witnesses.size < excluded.size",
            )
            .bind(name.as_str())
            .bind(size)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn witness_size(&self, witness: &str) -> Result<u64> {
        let row = sqlx::query("SELECT size FROM log_witnesses WHERE name = $1")
            .bind(witness)
            .fetch_optional(&self.pool)
            .await?;
        row.map_or(Ok(0), |r| from_bigint(r.try_get("size")?, "size"))
    }

    async fn log_index_of(&self, role: &str, version: u64) -> Result<Option<u64>> {
        let Ok(version) = i64::try_from(version) else { return Ok(None) };
        let row = sqlx::query("SELECT idx FROM log_metadata WHERE role = $1 AND version = $2")
            .bind(role)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| from_bigint(r.try_get("idx")?, "idx")).transpose()
    }
}
