//! Storage for the Ringfence server: the [`Store`] trait (SQLite now, PostgreSQL later) and the
//! content-addressed [`BlobStore`] over `object_store`.
//!
//! **Invariant:** only the `server` crate depends on this crate. Queries use only SQL that
//! PostgreSQL also accepts (no `INSERT OR REPLACE`, no SQLite-only functions), so a PostgreSQL
//! implementation of the same trait is a drop-in.

mod blob;
mod changes;
mod cleanup;
mod cluster;
mod compliance;
mod console;
mod copy;
mod devices;
mod log;
mod outbox;
mod rollouts;
mod rules;
mod sql;

pub use blob::{BlobStore, BlobWriter, S3Location};
pub use changes::{CHANNEL, Change, ChangeListener, Heard};
pub use cleanup::{BlobRecord, CleanupStore, ForgettableDevice};
pub use cluster::{ClusterStore, ExclusiveGuard, Section};
pub use compliance::{Bucket, ComplianceStore, DeviceTargetState, SeenDevice, TargetCounts};
pub use console::{ConsoleSessionRecord, ConsoleStore, FleetCounts};
pub use devices::{
    CheckinRecord, DevicePage, DeviceRecord, DeviceState, DeviceStore, EnrollmentTokenRecord, PendingLimits,
    PendingRefusal, ReportLimits, ReportRecord, ReportsAccepted, SignedBatch, UnforwardedBatch,
};
pub use log::{CheckpointRecord, LogBatch, LogStore, QueuedEntry};
pub use outbox::{OutboxRecord, OutboxStore};
pub use rollouts::{RolloutDevice, RolloutRecord, RolloutSample, RolloutStore};
pub use rules::{RuleRecord, RuleStore};
pub use sql::{Engine, SqlStore};

/// A stored, published metadata document: the exact bytes served to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataRecord {
    /// Role name (`root`, `targets`, `snapshot`, `timestamp` or a delegated role name).
    pub role: String,
    pub version: u64,
    /// Unix seconds at which the role expires (from its `expires` field).
    pub expires: i64,
    /// The file exactly as served.
    pub bytes: Vec<u8>,
}

/// A role version waiting for signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRecord {
    pub role: String,
    pub version: u64,
    /// The whole metadata document (`signed` plus the signatures gathered so far).
    pub bytes: Vec<u8>,
    pub created_at: i64,
}

/// An admin API token as stored: only the SHA-256 of the secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    /// Lower-case hex SHA-256 of the token secret.
    pub secret_sha256: String,
    /// Scope names, e.g. `publish`, `approve`, `read`, `admin`.
    pub scopes: Vec<String>,
    pub created_at: i64,
    pub revoked: bool,
    /// Refused from this time on (Unix seconds).
    pub expires_at: i64,
}

/// One entry of the update catalog; `manifest` is the validated update manifest as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRecord {
    pub id: String,
    pub publisher: String,
    pub manifest: String,
    pub created_at: i64,
}

/// A file of an update: its target path (`<publisher>/<file name>`) and content address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateFileRecord {
    pub update_id: String,
    pub target_path: String,
    pub sha256: String,
    pub length: u64,
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A row with the same key already exists (for example the same role version).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("blob store error: {0}")]
    Blob(#[from] object_store::Error),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("blob hash mismatch: expected {expected}, got {actual}")]
    HashMismatch { expected: String, actual: String },
    #[error("blob exceeds the size limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// The request would pass a bound on what the store keeps; nothing was changed.
    #[error("{0}")]
    Refused(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything the server keeps in its database.
///
/// Methods that change several rows do it in one transaction: either all of it happens or none.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Latest published version of `role`, if any.
    async fn latest_metadata(&self, role: &str) -> Result<Option<MetadataRecord>>;
    /// A given published version of `role`.
    async fn metadata_version(&self, role: &str, version: u64) -> Result<Option<MetadataRecord>>;
    /// The latest version of every role (one record per role name).
    async fn latest_all(&self) -> Result<Vec<MetadataRecord>>;
    /// Insert every record, delete the pending entries named in `clear_pending` and queue the
    /// transparency-log entries `log`, atomically. Fails with `Conflict` (and changes nothing)
    /// if any (role, version) already exists.
    async fn publish(&self, records: &[MetadataRecord], clear_pending: &[String], log: &[Vec<u8>]) -> Result<()>;

    /// The version of `role` no new version may be at or below (0: none), set by a restore.
    async fn version_floor(&self, role: &str) -> Result<u64>;
    /// Every floor a restore set: (role, version).
    async fn version_floors(&self) -> Result<Vec<(String, u64)>>;
    /// Raise the floor of `role` to `version` (a lower one changes nothing).
    async fn raise_version_floor(&self, role: &str, version: u64) -> Result<()>;
    async fn pending(&self, role: &str) -> Result<Option<PendingRecord>>;
    async fn list_pending(&self) -> Result<Vec<PendingRecord>>;
    /// Insert or replace the pending version of a role (at most one pending version per role)
    /// and queue the transparency-log entries `log`, atomically.
    async fn put_pending(&self, record: &PendingRecord, log: &[Vec<u8>]) -> Result<()>;
    async fn delete_pending(&self, role: &str) -> Result<()>;

    async fn insert_token(&self, token: &TokenRecord) -> Result<()>;
    /// The token whose secret hashes to `secret_sha256`, revoked or not: the caller checks
    /// `revoked`.
    async fn token_by_secret_sha256(&self, secret_sha256: &str) -> Result<Option<TokenRecord>>;
    /// Number of tokens ever issued, revoked ones included.
    /// Every token, oldest first.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Mark a token revoked; `NotFound` if there is no such token.
    async fn revoke_token(&self, id: &str) -> Result<()>;
    /// Make the token expire at `at` unless it expires sooner already; `NotFound` if there is
    /// no such token.
    async fn expire_token_by(&self, id: &str, at: i64) -> Result<()>;
    /// In one transaction: bring token `old`'s expiry forward to `ends` if it is neither
    /// revoked nor expired at `now`, and store `new`. `false` (nothing changed) when `old` is
    /// unknown, revoked or expired.
    async fn rotate_token(&self, old: &str, new: &TokenRecord, ends: i64, now: i64) -> Result<bool>;
    async fn count_tokens(&self) -> Result<u64>;

    /// Record that a blob of that hash and length is in the blob store (idempotent).
    async fn insert_blob(&self, sha256: &str, length: u64, at: i64) -> Result<()>;
    /// Length of the blob, if it is known.
    async fn blob_length(&self, sha256: &str) -> Result<Option<u64>>;

    /// Insert an update, its files and the CVEs it fixes atomically; `Conflict` if the id or a
    /// target path exists.
    async fn insert_update(&self, update: &UpdateRecord, files: &[UpdateFileRecord], cves: &[String]) -> Result<()>;
    /// Updates ordered by id, after `after`, at most `limit`.
    async fn list_updates(&self, after: &str, limit: u64) -> Result<Vec<UpdateRecord>>;
    async fn update_files(&self, update_id: &str) -> Result<Vec<UpdateFileRecord>>;
    async fn file_by_target_path(&self, target_path: &str) -> Result<Option<UpdateFileRecord>>;
    async fn count_updates(&self) -> Result<u64>;

    async fn append_audit(&self, record: &AuditRecord) -> Result<()>;
    /// The last `limit` audit entries, newest (most recently appended) first.
    /// Audit records newest first, each with its sequence number, older than `before` (all
    /// when `None`), at most `limit`.
    async fn audit_page(&self, before: Option<i64>, limit: u64) -> Result<Vec<(i64, AuditRecord)>>;
}

/// Everything the server keeps, behind one object: the server holds an `Arc<dyn Database>`, so
/// a backend is a new implementation of [`Store`] and [`DeviceStore`] and no caller changes.
pub trait Database:
    Store
    + DeviceStore
    + ComplianceStore
    + RuleStore
    + CleanupStore
    + RolloutStore
    + ClusterStore
    + LogStore
    + ConsoleStore
    + OutboxStore
{
}

impl<
    T: Store
        + DeviceStore
        + ComplianceStore
        + RuleStore
        + CleanupStore
        + RolloutStore
        + ClusterStore
        + LogStore
        + ConsoleStore
        + OutboxStore,
> Database for T
{
}
