//! [`Store`] over SQL through sqlx's `Any` driver: the embedded default SQLite (one file) or
//! PostgreSQL, chosen by the URL, with one set of queries.
//!
//! Every statement uses `$n` placeholders and SQL both engines accept as written; only the
//! schema migrations differ (`migrations/` for SQLite, `migrations/postgres/` for PostgreSQL,
//! the same versions and descriptions). Each transaction starts with a write, so SQLite takes
//! the write lock up front (waiting up to the busy timeout) rather than failing to upgrade a
//! read transaction that another writer overtook.

use std::borrow::Cow;
use std::path::Path;

use futures::future::BoxFuture;
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use crate::{
    AuditRecord, MetadataRecord, PendingRecord, Result, Store, StoreError, TokenRecord, UpdateFileRecord, UpdateRecord,
};

/// Connections per node: SQLite has one writer anyway; PostgreSQL is shared by every node.
const SQLITE_CONNECTIONS: u32 = 4;
const POSTGRES_CONNECTIONS: u32 = 8;

/// The schema migrations as (version, description, SQLite SQL, PostgreSQL SQL), in version order.
///
/// Listed here rather than through `sqlx::migrate!`, which needs sqlx's `macros` feature and so
/// a host build of sqlx and SQLite for the proc macro. Versions, descriptions and checksums are
/// what sqlx derives from the file names, so switching to the macro later is a no-op for
/// existing databases; a test checks this list against the directories.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../migrations/0001_initial.sql"),
        include_str!("../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "devices",
        include_str!("../migrations/0002_devices.sql"),
        include_str!("../migrations/postgres/0002_devices.sql"),
    ),
    (
        3,
        "device abuse bounds",
        include_str!("../migrations/0003_device_abuse_bounds.sql"),
        include_str!("../migrations/postgres/0003_device_abuse_bounds.sql"),
    ),
    (
        4,
        "compliance",
        include_str!("../migrations/0004_compliance.sql"),
        include_str!("../migrations/postgres/0004_compliance.sql"),
    ),
    (5, "rules", include_str!("../migrations/0005_rules.sql"), include_str!("../migrations/postgres/0005_rules.sql")),
    (
        6,
        "signed reports",
        include_str!("../migrations/0006_signed_reports.sql"),
        include_str!("../migrations/postgres/0006_signed_reports.sql"),
    ),
    (
        7,
        "rollouts",
        include_str!("../migrations/0007_rollouts.sql"),
        include_str!("../migrations/postgres/0007_rollouts.sql"),
    ),
    (
        8,
        "rollout stages",
        include_str!("../migrations/0008_rollout_stages.sql"),
        include_str!("../migrations/postgres/0008_rollout_stages.sql"),
    ),
    (
        9,
        "cluster",
        include_str!("../migrations/0009_cluster.sql"),
        include_str!("../migrations/postgres/0009_cluster.sql"),
    ),
    (10, "log", include_str!("../migrations/0010_log.sql"), include_str!("../migrations/postgres/0010_log.sql")),
    (
        11,
        "console",
        include_str!("../migrations/0011_console.sql"),
        include_str!("../migrations/postgres/0011_console.sql"),
    ),
    (
        12,
        "token expiry",
        include_str!("../migrations/0012_token_expiry.sql"),
        include_str!("../migrations/postgres/0012_token_expiry.sql"),
    ),
    (
        13,
        "webhook outbox",
        include_str!("../migrations/0013_webhook_outbox.sql"),
        include_str!("../migrations/postgres/0013_webhook_outbox.sql"),
    ),
    (
        14,
        "rollout samples",
        include_str!("../migrations/0014_rollout_samples.sql"),
        include_str!("../migrations/postgres/0014_rollout_samples.sql"),
    ),
    (
        15,
        "version floors",
        include_str!("../migrations/0015_version_floors.sql"),
        include_str!("../migrations/postgres/0015_version_floors.sql"),
    ),
    (
        16,
        "forwarded reports",
        include_str!("../migrations/0016_forwarded_reports.sql"),
        include_str!("../migrations/postgres/0016_forwarded_reports.sql"),
    ),
    (
        17,
        "replica groups",
        include_str!("../migrations/0017_replica_groups.sql"),
        include_str!("../migrations/postgres/0017_replica_groups.sql"),
    ),
];

/// The database engine behind a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Debug)]
struct EmbeddedMigrations(Engine);

impl MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        let migrations = MIGRATIONS
            .iter()
            .map(|&(version, description, sqlite, postgres)| {
                let sql = if self.0 == Engine::Postgres { postgres } else { sqlite };
                Migration::new(version, Cow::Borrowed(description), MigrationType::Simple, Cow::Borrowed(sql), false)
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// The server's database: one SQLite file, or a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pub(crate) pool: AnyPool,
    engine: Engine,
    /// PostgreSQL's URL, for the connection that listens for other nodes' changes.
    url: Option<Secret>,
}

/// A connection URL, which may carry a password: never shown by `Debug`.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<database url>")
    }
}

impl SqlStore {
    /// Open the SQLite database at `path`, creating the file if it is missing, and bring its
    /// schema up to date.
    pub async fn open(path: &Path) -> Result<SqlStore> {
        // Percent-encoded, so that `?` or `#` in a path stay part of the file name.
        let encoded: String = path
            .to_string_lossy()
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'.' | b'_' | b'-' => char::from(b).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        Self::connect(&format!("sqlite://{encoded}?mode=rwc")).await
    }

    /// Open the database a URL names (`sqlite://PATH?mode=rwc` or `postgres://…`) and bring its
    /// schema up to date.
    pub async fn connect(url: &str) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        let options: AnyConnectOptions = url.parse()?;
        let engine = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Engine::Postgres
        } else if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else {
            return Err(StoreError::Database(sqlx::Error::Configuration(
                "the database URL starts with sqlite:// or postgres://".into(),
            )));
        };
        let pool = match engine {
            Engine::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(SQLITE_CONNECTIONS)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL lets readers go on while one writes; 16 MiB of page cache per
                            // connection (SQLite's default is 2 MiB) keeps a large fleet's report
                            // indexes in memory. sqlx's SQLite defaults add foreign keys and a 5 s
                            // busy timeout.
                            sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                            sqlx::query("PRAGMA cache_size = -16384").execute(&mut *conn).await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            Engine::Postgres => {
                AnyPoolOptions::new().max_connections(POSTGRES_CONNECTIONS).connect_with(options).await?
            }
        };
        if engine == Engine::Postgres {
            // Keys and paths are compared and paged in byte order, as SQLite does: a database
            // that sorts text by a language's rules would page and match prefixes differently.
            let row = sqlx::query("SELECT datcollate FROM pg_database WHERE datname = current_database()")
                .fetch_one(&pool)
                .await?;
            let collation: String = row.try_get("datcollate")?;
            if !matches!(collation.as_str(), "C" | "POSIX" | "C.UTF-8" | "C.utf8") {
                return Err(StoreError::Refused(format!(
                    "the database sorts text as {collation}; Ringfence needs byte order: \
                     CREATE DATABASE … TEMPLATE template0 LOCALE 'C'"
                )));
            }
        }
        Migrator::new(EmbeddedMigrations(engine)).await?.run(&pool).await?;
        let url = (engine == Engine::Postgres).then(|| Secret(url.to_owned()));
        Ok(SqlStore { pool, engine, url })
    }

    /// PostgreSQL's URL (none on SQLite).
    pub(crate) fn postgres_url(&self) -> Option<&str> {
        self.url.as_ref().map(|u| u.0.as_str())
    }

    /// An online, consistent copy of this SQLite database into the new file `path` (`VACUUM
    /// INTO`: one read transaction; writers go on meanwhile). Refused on PostgreSQL.
    pub async fn backup_into(&self, path: &Path) -> Result<()> {
        if self.engine != Engine::Sqlite {
            return Err(StoreError::Refused("a PostgreSQL database is backed up with pg_dump".into()));
        }
        let path = path.to_str().ok_or_else(|| StoreError::Refused("the backup path is not UTF-8".into()))?;
        sqlx::query("VACUUM INTO $1").bind(path).execute(&self.pool).await?;
        Ok(())
    }

    /// A transaction that writes. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`, waiting for it like any write): a deferred transaction that read first could
    /// not take it later once another connection had written, and would fail at once with
    /// "database is locked" instead of waiting. On PostgreSQL, a plain `BEGIN`.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.engine {
            Engine::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Engine::Postgres => self.pool.begin().await?,
        })
    }

    /// Which engine this store runs on.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Wait for in-flight queries and close every connection (for a clean shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Refuse a version of `role` at or below the floor a restore set (the last line of defence:
/// the repository computes versions past it already).
async fn check_floor(tx: &mut sqlx::Transaction<'_, sqlx::Any>, role: &str, version: u64) -> Result<()> {
    let row =
        sqlx::query("SELECT version FROM version_floors WHERE role = $1").bind(role).fetch_optional(&mut **tx).await?;
    if let Some(row) = row {
        let floor = from_bigint(row.try_get("version")?, "version")?;
        if version <= floor {
            return Err(StoreError::Refused(format!(
                "{role} version {version} is at or below its floor {floor} (set by a restore)"
            )));
        }
    }
    Ok(())
}

/// Our unsigned numbers are BIGINT columns; a value that does not fit is refused, never wrapped.
pub(crate) fn to_bigint(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| {
        StoreError::Database(sqlx::Error::Encode(
            format!("{what} {value} is larger than the largest storable value {}", i64::MAX).into(),
        ))
    })
}

pub(crate) fn from_bigint(value: i64, column: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| {
        StoreError::Database(sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: format!("negative value {value} in an unsigned column").into(),
        })
    })
}

pub(crate) fn refused(message: String) -> StoreError {
    StoreError::Database(sqlx::Error::Encode(message.into()))
}

/// `Conflict` for a unique-key violation, the database error otherwise.
pub(crate) fn conflict_or(err: sqlx::Error, message: impl FnOnce() -> String) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(message()),
        _ => StoreError::Database(err),
    }
}

/// A list of names stored as one comma-separated column (scopes, groups).
pub(crate) fn join_names(what: &str, names: &[String]) -> Result<String> {
    if let Some(bad) = names.iter().find(|s| s.is_empty() || s.contains(',')) {
        return Err(refused(format!("{what} name {bad:?} is empty or contains a comma")));
    }
    Ok(names.join(","))
}

pub(crate) fn split_names(text: &str) -> Vec<String> {
    if text.is_empty() { Vec::new() } else { text.split(',').map(str::to_owned).collect() }
}

fn metadata_from_row(row: &AnyRow) -> Result<MetadataRecord> {
    Ok(MetadataRecord {
        role: row.try_get("role")?,
        version: from_bigint(row.try_get("version")?, "version")?,
        expires: row.try_get("expires")?,
        bytes: row.try_get("bytes")?,
    })
}

fn pending_from_row(row: &AnyRow) -> Result<PendingRecord> {
    Ok(PendingRecord {
        role: row.try_get("role")?,
        version: from_bigint(row.try_get("version")?, "version")?,
        bytes: row.try_get("bytes")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(crate) fn token_from_row(row: &AnyRow) -> Result<TokenRecord> {
    let scopes: String = row.try_get("scopes")?;
    Ok(TokenRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        secret_sha256: row.try_get("secret_sha256")?,
        scopes: split_names(&scopes),
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        // As a number: sqlx's `Any` driver reads no SQLite booleans.
        revoked: row.try_get::<i64, _>("revoked")? != 0,
    })
}

fn update_from_row(row: &AnyRow) -> Result<UpdateRecord> {
    Ok(UpdateRecord {
        id: row.try_get("id")?,
        publisher: row.try_get("publisher")?,
        manifest: row.try_get("manifest")?,
        created_at: row.try_get("created_at")?,
    })
}

fn update_file_from_row(row: &AnyRow) -> Result<UpdateFileRecord> {
    Ok(UpdateFileRecord {
        update_id: row.try_get("update_id")?,
        target_path: row.try_get("target_path")?,
        sha256: row.try_get("sha256")?,
        length: from_bigint(row.try_get("length")?, "length")?,
    })
}

fn audit_from_row(row: &AnyRow) -> Result<AuditRecord> {
    Ok(AuditRecord {
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        detail: row.try_get("detail")?,
    })
}

pub(crate) fn count_from_row(row: &AnyRow) -> Result<u64> {
    from_bigint(row.try_get("n")?, "n")
}

#[async_trait::async_trait]
impl Store for SqlStore {
    async fn latest_metadata(&self, role: &str) -> Result<Option<MetadataRecord>> {
        sqlx::query("SELECT role, version, expires, bytes FROM metadata WHERE role = $1 ORDER BY version DESC LIMIT 1")
            .bind(role)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| metadata_from_row(&row))
            .transpose()
    }

    async fn metadata_version(&self, role: &str, version: u64) -> Result<Option<MetadataRecord>> {
        // A version that does not fit in a BIGINT can never have been stored.
        let Ok(version) = i64::try_from(version) else {
            return Ok(None);
        };
        sqlx::query("SELECT role, version, expires, bytes FROM metadata WHERE role = $1 AND version = $2")
            .bind(role)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| metadata_from_row(&row))
            .transpose()
    }

    async fn latest_all(&self) -> Result<Vec<MetadataRecord>> {
        sqlx::query(
            "SELECT m.role AS role, m.version AS version, m.expires AS expires, m.bytes AS bytes \
             FROM metadata m \
             JOIN (SELECT role, MAX(version) AS version FROM metadata GROUP BY role) latest \
               ON latest.role = m.role AND latest.version = m.version \
             ORDER BY m.role",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(metadata_from_row)
        .collect()
    }

    async fn publish(&self, records: &[MetadataRecord], clear_pending: &[String], log: &[Vec<u8>]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        crate::log::queue_in(&mut tx, log).await?;
        for record in records {
            sqlx::query("INSERT INTO metadata (role, version, expires, bytes) VALUES ($1, $2, $3, $4)")
                .bind(record.role.as_str())
                .bind(to_bigint(record.version, "version")?)
                .bind(record.expires)
                .bind(record.bytes.as_slice())
                .execute(&mut *tx)
                .await
                .map_err(|err| {
                    conflict_or(err, || format!("{} version {} is already published", record.role, record.version))
                })?;
            // Read after a write: SQLite holds the write lock by now (a read first could not take
            // it later while another connection writes).
            check_floor(&mut tx, &record.role, record.version).await?;
        }
        for role in clear_pending {
            sqlx::query("DELETE FROM pending_metadata WHERE role = $1").bind(role.as_str()).execute(&mut *tx).await?;
        }
        crate::changes::notify_in(&mut tx, self.engine, crate::Change::Metadata).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn version_floor(&self, role: &str) -> Result<u64> {
        let row = sqlx::query("SELECT version FROM version_floors WHERE role = $1")
            .bind(role)
            .fetch_optional(&self.pool)
            .await?;
        row.map_or(Ok(0), |r| from_bigint(r.try_get("version")?, "version"))
    }

    async fn version_floors(&self) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query("SELECT role, version FROM version_floors ORDER BY role").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get("role")?, from_bigint(r.try_get("version")?, "version")?))).collect()
    }

    async fn raise_version_floor(&self, role: &str, version: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO version_floors (role, version) VALUES ($1, $2) \
             ON CONFLICT (role) DO UPDATE SET version = excluded.version \
             WHERE version_floors.version < excluded.version",
        )
        .bind(role)
        .bind(to_bigint(version, "version")?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn pending(&self, role: &str) -> Result<Option<PendingRecord>> {
        sqlx::query("SELECT role, version, bytes, created_at FROM pending_metadata WHERE role = $1")
            .bind(role)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| pending_from_row(&row))
            .transpose()
    }

    async fn list_pending(&self) -> Result<Vec<PendingRecord>> {
        sqlx::query("SELECT role, version, bytes, created_at FROM pending_metadata ORDER BY role")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(pending_from_row)
            .collect()
    }

    async fn put_pending(&self, record: &PendingRecord, log: &[Vec<u8>]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        crate::log::queue_in(&mut tx, log).await?;
        sqlx::query(
            "INSERT INTO pending_metadata (role, version, bytes, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (role) DO UPDATE \
             SET version = excluded.version, bytes = excluded.bytes, created_at = excluded.created_at",
        )
        .bind(record.role.as_str())
        .bind(to_bigint(record.version, "version")?)
        .bind(record.bytes.as_slice())
        .bind(record.created_at)
        .execute(&mut *tx)
        .await?;
        // After the write (see `publish`).
        check_floor(&mut tx, &record.role, record.version).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_pending(&self, role: &str) -> Result<()> {
        sqlx::query("DELETE FROM pending_metadata WHERE role = $1").bind(role).execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_token(&self, token: &TokenRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, secret_sha256, scopes, created_at, revoked, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(token.id.as_str())
        .bind(token.name.as_str())
        .bind(token.secret_sha256.as_str())
        .bind(join_names("scope", &token.scopes)?)
        .bind(token.created_at)
        .bind(token.revoked)
        .bind(token.expires_at)
        .execute(&self.pool)
        .await
        // Which key clashed is not said: the message must not hint at another token's secret.
        .map_err(|err| conflict_or(err, || "a token with that id or secret already exists".to_owned()))?;
        Ok(())
    }

    async fn token_by_secret_sha256(&self, secret_sha256: &str) -> Result<Option<TokenRecord>> {
        sqlx::query(
            "SELECT id, name, secret_sha256, scopes, created_at, expires_at, \
             CASE WHEN revoked THEN 1 ELSE 0 END AS revoked FROM api_tokens WHERE secret_sha256 = $1",
        )
        .bind(secret_sha256)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| token_from_row(&row))
        .transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(
            "SELECT id, name, secret_sha256, scopes, created_at, expires_at, \
             CASE WHEN revoked THEN 1 ELSE 0 END AS revoked FROM api_tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, id: &str) -> Result<()> {
        let done =
            sqlx::query("UPDATE api_tokens SET revoked = TRUE WHERE id = $1").bind(id).execute(&self.pool).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn expire_token_by(&self, id: &str, at: i64) -> Result<()> {
        let done = sqlx::query(
            "UPDATE api_tokens SET expires_at = CASE WHEN expires_at > $2 THEN $2 ELSE expires_at END WHERE id = $1",
        )
        .bind(id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn rotate_token(&self, old: &str, new: &TokenRecord, ends: i64, now: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE api_tokens SET expires_at = CASE WHEN expires_at > $2 THEN $2 ELSE expires_at END \
             WHERE id = $1 AND NOT revoked AND expires_at > $3",
        )
        .bind(old)
        .bind(ends)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO api_tokens (id, name, secret_sha256, scopes, created_at, revoked, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(new.id.as_str())
        .bind(new.name.as_str())
        .bind(new.secret_sha256.as_str())
        .bind(join_names("scope", &new.scopes)?)
        .bind(new.created_at)
        .bind(new.revoked)
        .bind(new.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(|err| conflict_or(err, || "a token with that id or secret already exists".to_owned()))?;
        tx.commit().await?;
        Ok(true)
    }

    async fn count_tokens(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_tokens").fetch_one(&self.pool).await?;
        count_from_row(&row)
    }

    async fn insert_blob(&self, sha256: &str, length: u64, at: i64) -> Result<()> {
        let inserted = sqlx::query(
            "INSERT INTO blobs (sha256, length, created_at) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(sha256)
        .bind(to_bigint(length, "length")?)
        .bind(at)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            // Same hash, same content: a different length means something is badly wrong.
            if let Some(known) = self.blob_length(sha256).await?.filter(|&known| known != length) {
                return Err(StoreError::Conflict(format!(
                    "blob {sha256} is recorded with length {known}, not {length}"
                )));
            }
        }
        Ok(())
    }

    async fn blob_length(&self, sha256: &str) -> Result<Option<u64>> {
        sqlx::query("SELECT length FROM blobs WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| from_bigint(row.try_get("length")?, "length"))
            .transpose()
    }

    async fn insert_update(&self, update: &UpdateRecord, files: &[UpdateFileRecord], cves: &[String]) -> Result<()> {
        if let Some(stray) = files.iter().find(|f| f.update_id != update.id) {
            return Err(refused(format!(
                "file {} names update {}, not {}",
                stray.target_path, stray.update_id, update.id
            )));
        }
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO updates (id, publisher, manifest, created_at) VALUES ($1, $2, $3, $4)")
            .bind(update.id.as_str())
            .bind(update.publisher.as_str())
            .bind(update.manifest.as_str())
            .bind(update.created_at)
            .execute(&mut *tx)
            .await
            .map_err(|err| conflict_or(err, || format!("update {} already exists", update.id)))?;
        for file in files {
            sqlx::query("INSERT INTO update_files (target_path, update_id, sha256, length) VALUES ($1, $2, $3, $4)")
                .bind(file.target_path.as_str())
                .bind(update.id.as_str())
                .bind(file.sha256.as_str())
                .bind(to_bigint(file.length, "length")?)
                .execute(&mut *tx)
                .await
                .map_err(|err| conflict_or(err, || format!("target path {} already exists", file.target_path)))?;
        }
        let mut cves: Vec<String> = cves.iter().map(|c| c.to_ascii_uppercase()).collect();
        cves.sort();
        cves.dedup();
        for cve in &cves {
            sqlx::query("INSERT INTO update_cves (cve, update_id) VALUES ($1, $2)")
                .bind(cve)
                .bind(update.id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_updates(&self, after: &str, limit: u64) -> Result<Vec<UpdateRecord>> {
        sqlx::query("SELECT id, publisher, manifest, created_at FROM updates WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after)
            .bind(to_bigint(limit, "limit")?)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(update_from_row)
            .collect()
    }

    async fn update_files(&self, update_id: &str) -> Result<Vec<UpdateFileRecord>> {
        sqlx::query(
            "SELECT update_id, target_path, sha256, length FROM update_files WHERE update_id = $1 ORDER BY target_path",
        )
        .bind(update_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(update_file_from_row)
        .collect()
    }

    async fn file_by_target_path(&self, target_path: &str) -> Result<Option<UpdateFileRecord>> {
        sqlx::query("SELECT update_id, target_path, sha256, length FROM update_files WHERE target_path = $1")
            .bind(target_path)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| update_file_from_row(&row))
            .transpose()
    }

    async fn count_updates(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM updates").fetch_one(&self.pool).await?;
        count_from_row(&row)
    }

    async fn append_audit(&self, record: &AuditRecord) -> Result<()> {
        sqlx::query("INSERT INTO audit_log (at, actor, action, detail) VALUES ($1, $2, $3, $4)")
            .bind(record.at)
            .bind(record.actor.as_str())
            .bind(record.action.as_str())
            .bind(record.detail.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn audit_page(&self, before: Option<i64>, limit: u64) -> Result<Vec<(i64, AuditRecord)>> {
        // Insertion order, not `at`: the caller's clock may step backwards.
        sqlx::query("SELECT id, at, actor, action, detail FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT $2")
            .bind(before.unwrap_or(i64::MAX))
            .bind(to_bigint(limit, "limit")?)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("id")?, audit_from_row(row)?)))
            .collect()
    }
}

/// A fresh, empty store for a test: a SQLite file in a temporary directory, or, when
/// `RINGFENCE_TEST_DATABASE=postgres`, a new database in the PostgreSQL server
/// `RINGFENCE_TEST_POSTGRES` names (`scripts/test` starts one for the whole run).
#[cfg(test)]
pub(crate) async fn test_store() -> (tempfile::TempDir, SqlStore) {
    let dir = tempfile::tempdir().unwrap();
    if std::env::var("RINGFENCE_TEST_DATABASE").as_deref() != Ok("postgres") {
        let store = SqlStore::open(&dir.path().join("ringfence.db")).await.unwrap();
        return (dir, store);
    }
    use sqlx::Connection;
    let server = std::env::var("RINGFENCE_TEST_POSTGRES").expect("RINGFENCE_TEST_POSTGRES: the test server's URL");
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("store_{}_{n}", std::process::id());
    sqlx::any::install_default_drivers();
    let mut admin = sqlx::AnyConnection::connect(&format!("{server}/postgres")).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let store = SqlStore::connect(&format!("{server}/{name}")).await.unwrap();
    (dir, store)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open() -> (tempfile::TempDir, SqlStore) {
        test_store().await
    }

    fn meta(role: &str, version: u64) -> MetadataRecord {
        MetadataRecord { role: role.into(), version, expires: 1_000, bytes: format!("{role}.{version}").into() }
    }

    fn pending(role: &str, version: u64) -> PendingRecord {
        PendingRecord { role: role.into(), version, bytes: format!("pending {role}.{version}").into(), created_at: 7 }
    }

    fn update(id: &str, created_at: i64) -> UpdateRecord {
        UpdateRecord { id: id.into(), publisher: "acme".into(), manifest: format!("{{\"id\":\"{id}\"}}"), created_at }
    }

    fn file(update_id: &str, target_path: &str) -> UpdateFileRecord {
        UpdateFileRecord {
            update_id: update_id.into(),
            target_path: target_path.into(),
            sha256: "ab".repeat(32),
            length: 42,
        }
    }

    #[test]
    fn embedded_migrations_match_the_directories() {
        let on_disk = |dir: &Path| {
            let mut out: Vec<(i64, String, String)> = std::fs::read_dir(dir)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .filter(|name| name.ends_with(".sql"))
                .map(|name| {
                    let (version, rest) = name.split_once('_').unwrap();
                    let description = rest.strip_suffix(".sql").unwrap().replace('_', " ");
                    let sql = std::fs::read_to_string(dir.join(&name)).unwrap();
                    (version.parse().unwrap(), description, sql)
                })
                .collect();
            out.sort();
            out
        };
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let embedded = |postgres: bool| -> Vec<(i64, String, String)> {
            MIGRATIONS.iter().map(|m| (m.0, m.1.to_owned(), (if postgres { m.3 } else { m.2 }).to_owned())).collect()
        };
        assert_eq!(embedded(false), on_disk(&dir));
        assert_eq!(embedded(true), on_disk(&dir.join("postgres")));
    }

    #[tokio::test]
    async fn metadata_round_trip_and_latest() {
        let (_dir, store) = open().await;
        assert_eq!(store.latest_metadata("root").await.unwrap(), None);
        assert!(store.latest_all().await.unwrap().is_empty());

        store.put_pending(&pending("targets", 2), &[]).await.unwrap();
        store.publish(&[meta("root", 1), meta("targets", 1)], &[], &[]).await.unwrap();
        store.publish(&[meta("root", 2), meta("targets", 2)], &["targets".to_owned()], &[]).await.unwrap();
        store.publish(&[meta("root", 10)], &[], &[]).await.unwrap();

        assert_eq!(store.latest_metadata("root").await.unwrap(), Some(meta("root", 10)));
        assert_eq!(store.metadata_version("root", 2).await.unwrap(), Some(meta("root", 2)));
        assert_eq!(store.metadata_version("root", 3).await.unwrap(), None);
        assert_eq!(store.latest_all().await.unwrap(), vec![meta("root", 10), meta("targets", 2)]);
        assert_eq!(store.pending("targets").await.unwrap(), None);
    }

    #[tokio::test]
    async fn publish_conflict_changes_nothing() {
        let (_dir, store) = open().await;
        store.publish(&[meta("root", 1)], &[], &[]).await.unwrap();
        store.put_pending(&pending("targets", 1), &[]).await.unwrap();

        let err =
            store.publish(&[meta("targets", 1), meta("root", 1)], &["targets".to_owned()], &[]).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

        assert_eq!(store.latest_metadata("targets").await.unwrap(), None);
        assert_eq!(store.pending("targets").await.unwrap(), Some(pending("targets", 1)));
        assert_eq!(store.latest_all().await.unwrap(), vec![meta("root", 1)]);

        // A duplicate inside one batch is a conflict too.
        let err = store.publish(&[meta("snapshot", 1), meta("snapshot", 1)], &[], &[]).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        assert_eq!(store.latest_metadata("snapshot").await.unwrap(), None);
    }

    #[tokio::test]
    async fn versions_beyond_bigint_are_refused() {
        let (_dir, store) = open().await;
        let too_big = i64::MAX as u64 + 1;
        let err = store.publish(&[meta("root", 1), meta("targets", too_big)], &[], &[]).await.unwrap_err();
        assert!(matches!(err, StoreError::Database(sqlx::Error::Encode(_))), "{err:?}");
        assert!(store.latest_all().await.unwrap().is_empty());
        assert!(store.put_pending(&pending("root", u64::MAX), &[]).await.is_err());
        assert_eq!(store.metadata_version("root", u64::MAX).await.unwrap(), None);

        store.publish(&[meta("root", i64::MAX as u64)], &[], &[]).await.unwrap();
        assert_eq!(store.latest_metadata("root").await.unwrap(), Some(meta("root", i64::MAX as u64)));
    }

    #[tokio::test]
    async fn pending_upserts_by_role() {
        let (_dir, store) = open().await;
        store.put_pending(&pending("targets", 1), &[]).await.unwrap();
        store.put_pending(&pending("targets", 2), &[]).await.unwrap();
        store.put_pending(&pending("root", 2), &[]).await.unwrap();
        assert_eq!(store.pending("targets").await.unwrap(), Some(pending("targets", 2)));
        assert_eq!(store.list_pending().await.unwrap(), vec![pending("root", 2), pending("targets", 2)]);
        store.delete_pending("targets").await.unwrap();
        assert_eq!(store.list_pending().await.unwrap(), vec![pending("root", 2)]);
    }

    #[tokio::test]
    async fn tokens_round_trip() {
        let (_dir, store) = open().await;
        let token = TokenRecord {
            id: "t1".into(),
            name: "ci".into(),
            secret_sha256: "01".repeat(32),
            scopes: vec!["publish".into(), "read".into()],
            created_at: 5,
            revoked: false,
            expires_at: 1000,
        };
        let bare = TokenRecord {
            id: "t2".into(),
            secret_sha256: "02".repeat(32),
            scopes: vec![],
            revoked: true,
            ..token.clone()
        };
        store.insert_token(&token).await.unwrap();
        store.insert_token(&bare).await.unwrap();
        assert_eq!(store.token_by_secret_sha256(&token.secret_sha256).await.unwrap(), Some(token.clone()));
        assert_eq!(store.token_by_secret_sha256(&bare.secret_sha256).await.unwrap(), Some(bare));
        assert_eq!(store.token_by_secret_sha256(&"03".repeat(32)).await.unwrap(), None);

        let same_secret = TokenRecord { id: "t3".into(), ..token.clone() };
        assert!(matches!(store.insert_token(&same_secret).await, Err(StoreError::Conflict(_))));
        let comma =
            TokenRecord { id: "t4".into(), secret_sha256: "04".repeat(32), scopes: vec!["a,b".into()], ..token };
        assert!(store.insert_token(&comma).await.is_err());
        assert_eq!(store.count_tokens().await.unwrap(), 2);

        // An expiry is only ever brought forward.
        store.expire_token_by("t1", 2000).await.unwrap();
        assert_eq!(store.token_by_secret_sha256(&"01".repeat(32)).await.unwrap().unwrap().expires_at, 1000);
        store.expire_token_by("t1", 600).await.unwrap();
        assert_eq!(store.token_by_secret_sha256(&"01".repeat(32)).await.unwrap().unwrap().expires_at, 600);
        assert!(matches!(store.expire_token_by("nope", 1).await, Err(StoreError::NotFound)));

        // Rotation: the old token's expiry moves forward and the new one is stored, together;
        // a revoked, expired or unknown token is not rotated and nothing is stored.
        let next = TokenRecord {
            id: "t5".into(),
            name: "ci".into(),
            secret_sha256: "05".repeat(32),
            scopes: vec!["read".into()],
            created_at: 100,
            revoked: false,
            expires_at: 9000,
        };
        assert!(store.rotate_token("t1", &next, 500, 100).await.unwrap());
        assert_eq!(store.token_by_secret_sha256(&"01".repeat(32)).await.unwrap().unwrap().expires_at, 500);
        assert_eq!(store.token_by_secret_sha256(&"05".repeat(32)).await.unwrap(), Some(next.clone()));
        let again = TokenRecord { id: "t6".into(), secret_sha256: "06".repeat(32), ..next.clone() };
        assert!(!store.rotate_token("t1", &again, 900, 500).await.unwrap(), "expired at 500");
        assert!(!store.rotate_token("t2", &again, 900, 100).await.unwrap(), "revoked");
        assert!(!store.rotate_token("nope", &again, 900, 100).await.unwrap());
        assert_eq!(store.token_by_secret_sha256(&"06".repeat(32)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn blobs_are_idempotent() {
        let (_dir, store) = open().await;
        let sha = "cd".repeat(32);
        store.insert_blob(&sha, 10, 1).await.unwrap();
        store.insert_blob(&sha, 10, 2).await.unwrap();
        assert!(matches!(store.insert_blob(&sha, 11, 3).await, Err(StoreError::Conflict(_))));
        assert_eq!(store.blob_length(&sha).await.unwrap(), Some(10));
        assert_eq!(store.blob_length(&"ef".repeat(32)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn updates_round_trip_and_conflicts_change_nothing() {
        let (_dir, store) = open().await;
        let first = update("u1", 10);
        let files = [file("u1", "acme/b.bin"), file("u1", "acme/a.bin")];
        store.insert_update(&first, &files, &["CVE-2025-59287".into()]).await.unwrap();

        // Same id, fresh paths.
        let err = store.insert_update(&update("u1", 11), &[file("u1", "acme/c.bin")], &[]).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        // Fresh id, one path taken.
        let err = store
            .insert_update(&update("u2", 12), &[file("u2", "acme/d.bin"), file("u2", "acme/a.bin")], &[])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

        assert_eq!(store.list_updates("", 10).await.unwrap(), vec![first.clone()]);
        assert_eq!(store.list_updates(&first.id, 10).await.unwrap(), vec![], "the page after the last");
        assert_eq!(store.count_updates().await.unwrap(), 1);
        assert_eq!(store.update_files("u1").await.unwrap(), vec![files[1].clone(), files[0].clone()]);
        assert!(store.update_files("u2").await.unwrap().is_empty());
        assert_eq!(store.file_by_target_path("acme/a.bin").await.unwrap(), Some(files[1].clone()));
        for path in ["acme/c.bin", "acme/d.bin"] {
            assert_eq!(store.file_by_target_path(path).await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn audit_pages_are_newest_first() {
        let (_dir, store) = open().await;
        let entries: Vec<AuditRecord> = (0..5)
            .map(|i| AuditRecord { at: 100 - i, actor: "admin".into(), action: format!("a{i}"), detail: String::new() })
            .collect();
        for entry in &entries {
            store.append_audit(entry).await.unwrap();
        }
        let page = store.audit_page(None, 3).await.unwrap();
        let records: Vec<AuditRecord> = page.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(records, vec![entries[4].clone(), entries[3].clone(), entries[2].clone()]);
        let next = store.audit_page(Some(page[2].0), 3).await.unwrap();
        let records: Vec<AuditRecord> = next.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(records, vec![entries[1].clone(), entries[0].clone()]);
    }

    #[tokio::test]
    async fn reopening_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ringfence.db");
        let store = SqlStore::open(&path).await.unwrap();
        store.publish(&[meta("root", 1)], &[], &[]).await.unwrap();
        store.close().await;
        let store = SqlStore::open(&path).await.unwrap();
        assert_eq!(store.latest_metadata("root").await.unwrap(), Some(meta("root", 1)));
    }
}
