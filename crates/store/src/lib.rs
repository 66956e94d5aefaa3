//! Storage for the Ringfence server: the [`Store`] trait (SQLite now, PostgreSQL later) and the
//! content-addressed [`BlobStore`] over `object_store`.
//!
//! **Invariant:** only the `server` crate depends on this crate. Queries use only SQL that
//! PostgreSQL also accepts (no `INSERT OR REPLACE`, no SQLite-only functions), so a PostgreSQL
//! implementation of the same trait is a drop-in.

mod blob;
mod devices;
mod sqlite;

pub use blob::{BlobStore, BlobWriter};
pub use devices::{
    CheckinRecord, DevicePage, DeviceRecord, DeviceState, DeviceStore, EnrollmentTokenRecord, PendingLimits,
    PendingRefusal, ReportLimits, ReportRecord, ReportsAccepted,
};
pub use sqlite::SqliteStore;

use std::future::Future;

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
pub trait Store: Send + Sync + 'static {
    /// Latest published version of `role`, if any.
    fn latest_metadata(&self, role: &str) -> impl Future<Output = Result<Option<MetadataRecord>>> + Send;
    /// A given published version of `role`.
    fn metadata_version(&self, role: &str, version: u64)
    -> impl Future<Output = Result<Option<MetadataRecord>>> + Send;
    /// The latest version of every role (one record per role name).
    fn latest_all(&self) -> impl Future<Output = Result<Vec<MetadataRecord>>> + Send;
    /// Insert every record and delete the pending entries named in `clear_pending`, atomically.
    /// Fails with `Conflict` (and changes nothing) if any (role, version) already exists.
    fn publish(&self, records: &[MetadataRecord], clear_pending: &[String]) -> impl Future<Output = Result<()>> + Send;

    fn pending(&self, role: &str) -> impl Future<Output = Result<Option<PendingRecord>>> + Send;
    fn list_pending(&self) -> impl Future<Output = Result<Vec<PendingRecord>>> + Send;
    /// Insert or replace the pending version of a role (at most one pending version per role).
    fn put_pending(&self, record: &PendingRecord) -> impl Future<Output = Result<()>> + Send;
    fn delete_pending(&self, role: &str) -> impl Future<Output = Result<()>> + Send;

    fn insert_token(&self, token: &TokenRecord) -> impl Future<Output = Result<()>> + Send;
    /// The token whose secret hashes to `secret_sha256`, revoked or not: the caller checks
    /// `revoked`.
    fn token_by_secret_sha256(&self, secret_sha256: &str) -> impl Future<Output = Result<Option<TokenRecord>>> + Send;
    /// Number of tokens ever issued, revoked ones included.
    /// Every token, oldest first.
    fn list_tokens(&self) -> impl Future<Output = Result<Vec<TokenRecord>>> + Send;
    /// Mark a token revoked; `NotFound` if there is no such token.
    fn revoke_token(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    fn count_tokens(&self) -> impl Future<Output = Result<u64>> + Send;

    /// Record that a blob of that hash and length is in the blob store (idempotent).
    fn insert_blob(&self, sha256: &str, length: u64, at: i64) -> impl Future<Output = Result<()>> + Send;
    /// Length of the blob, if it is known.
    fn blob_length(&self, sha256: &str) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// Insert an update and its files atomically; `Conflict` if the id or a target path exists.
    fn insert_update(
        &self,
        update: &UpdateRecord,
        files: &[UpdateFileRecord],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Updates ordered by id, after `after`, at most `limit`.
    fn list_updates(&self, after: &str, limit: u64) -> impl Future<Output = Result<Vec<UpdateRecord>>> + Send;
    fn update_files(&self, update_id: &str) -> impl Future<Output = Result<Vec<UpdateFileRecord>>> + Send;
    fn file_by_target_path(&self, target_path: &str) -> impl Future<Output = Result<Option<UpdateFileRecord>>> + Send;
    fn count_updates(&self) -> impl Future<Output = Result<u64>> + Send;

    fn append_audit(&self, record: &AuditRecord) -> impl Future<Output = Result<()>> + Send;
    /// The last `limit` audit entries, newest (most recently appended) first.
    /// Audit records newest first, each with its sequence number, older than `before` (all
    /// when `None`), at most `limit`.
    fn audit_page(
        &self,
        before: Option<i64>,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<(i64, AuditRecord)>>> + Send;
}
