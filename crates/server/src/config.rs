//! Server configuration: a TOML file (see `docs/ringfence.example.toml`) with environment
//! overrides. Unknown keys are an error, so a misspelt security setting is never ignored.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Database, content store, online keys and TLS material live here.
    pub data_dir: PathBuf,
    /// Allow running as root (refused by default).
    #[serde(default)]
    pub allow_root: bool,
    #[serde(default = "ListenerConfig::device_default")]
    pub device_listener: ListenerConfig,
    #[serde(default = "ListenerConfig::admin_default")]
    pub admin_listener: ListenerConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub repository: RepositoryConfig,
    #[serde(default)]
    pub expiry: ExpiryPolicy,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub devices: DevicesConfig,
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub content: ContentConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default)]
    pub mirror: MirrorConfig,
}

/// A mirror of another Ringfence server's repository: a branch or air-gapped site's server.
/// It holds no signing key (no `online-keys/`); its metadata, log and content come from the
/// upstream (`ringfence import`), verified as a device would before anything is served. Its
/// devices, enrollment and reports are its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    #[serde(default)]
    pub enabled: bool,
    /// A replica: the upstream's device listener (`https://host:8531`), synced every
    /// `sync_secs`; devices enroll through it and their signed reports are forwarded to it.
    /// Unset: an air-gapped mirror, fed by `ringfence import DIR`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// The CA certificate (PEM) the upstream's device listener is trusted by.
    #[serde(default)]
    pub upstream_ca: Option<PathBuf>,
    /// A file holding the upstream's token for this replica (scope `replicate` only).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default = "MirrorConfig::default_sync_secs")]
    pub sync_secs: u64,
    /// A replica fetches content from its upstream at most this fast (bytes a second; 0: no
    /// limit), to keep a branch link usable.
    #[serde(default)]
    pub max_bytes_per_sec: u64,
}

impl MirrorConfig {
    fn default_sync_secs() -> u64 {
        30
    }
}

impl Default for MirrorConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            upstream: None,
            upstream_ca: None,
            token_file: None,
            sync_secs: Self::default_sync_secs(),
            max_bytes_per_sec: 0,
        }
    }
}

/// The web console on the admin listener (`/console/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console (default true).
    #[serde(default = "ConsoleConfig::default_enabled")]
    pub enabled: bool,
    /// A session ends after this many minutes without a request (default 30).
    #[serde(default = "ConsoleConfig::default_idle_minutes")]
    pub idle_minutes: u32,
    /// And this many hours after login whatever happens (default 12).
    #[serde(default = "ConsoleConfig::default_session_hours")]
    pub session_hours: u32,
}

impl ConsoleConfig {
    fn default_enabled() -> bool {
        true
    }
    fn default_idle_minutes() -> u32 {
        30
    }
    fn default_session_hours() -> u32 {
        12
    }
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: Self::default_enabled(),
            idle_minutes: Self::default_idle_minutes(),
            session_hours: Self::default_session_hours(),
        }
    }
}

/// The transparency log: its origin (the name its checkpoints carry; set by `init`), and the
/// witnesses the server asks to cosign each checkpoint. The log key is `online-keys/log.key`;
/// without it the server keeps no log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub origin: Option<String>,
    #[serde(default)]
    pub witnesses: Vec<WitnessConfig>,
}

/// A witness the server sends checkpoints to (C2SP `tlog-witness`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// The witness's name, as in its verifier key.
    pub name: String,
    /// Its `add-checkpoint` URL.
    pub url: String,
    /// Its `cosignature/v1` verifier key.
    pub key: String,
    /// A CA certificate (PEM) for its TLS, when it is not in the system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

impl std::fmt::Debug for DatabaseConfig {
    /// Without the URL, which may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig").field("url", &self.url.as_ref().map(|_| "…")).finish()
    }
}

/// Where update content lives: `content/` in the data directory by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentConfig {
    /// An S3-compatible bucket (`s3://bucket`) instead of the local directory. Credentials
    /// come from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` in the environment.
    #[serde(default)]
    pub url: Option<String>,
    /// The S3 endpoint (`https://s3.example.net`; default: AWS, or `AWS_ENDPOINT_URL`).
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// Plain HTTP to the endpoint: only for an endpoint on loopback or a private network.
    #[serde(default)]
    pub allow_http: bool,
    /// Answer downloads with a redirect to a short-lived pre-signed URL of the bucket, so the
    /// bytes flow from S3 to devices without passing through a node. Devices check every
    /// byte against the signed hashes either way; they must reach the bucket's endpoint.
    #[serde(default)]
    pub redirect_downloads: bool,
}

/// Where the database lives: the embedded SQLite file in the data directory by default.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// A PostgreSQL database (`postgres://user@host:port/name`) instead of the SQLite file.
    /// Every node of one installation names the same one.
    #[serde(default)]
    pub url: Option<String>,
}

/// What the server does to approvals by itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Decline a superseded update in a group once the update superseding it is approved
    /// there, every device that reported on the new one finished it, and none still needs the
    /// old one (see docs/TRUST-LAYOUT.md, "Supersedence").
    #[serde(default = "yes")]
    pub decline_superseded: bool,
    /// Where to tell approvers that an approval waits for them (see `notify.rs`):
    /// `https://host[:port]/path`, or `http://` to a loopback address.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// The CA certificate (PEM) the webhook's HTTPS server must chain to.
    #[serde(default)]
    pub webhook_ca_file: Option<PathBuf>,
    /// A file holding the secret (at least 16 bytes) each event is HMAC-SHA256-signed with.
    #[serde(default)]
    pub webhook_secret_file: Option<PathBuf>,
    /// Seconds before a failed delivery is tried again, doubling with each failure up to an
    /// hour (default 10).
    #[serde(default = "ApprovalsConfig::default_retry_secs")]
    pub webhook_retry_secs: u64,
}

impl ApprovalsConfig {
    fn default_retry_secs() -> u64 {
        10
    }
}

fn yes() -> bool {
    true
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            decline_superseded: true,
            webhook_url: None,
            webhook_ca_file: None,
            webhook_secret_file: None,
            webhook_retry_secs: Self::default_retry_secs(),
        }
    }
}

/// The device API: sessions, polling, load shedding.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesConfig {
    /// Lifetime of a device session.
    #[serde(default = "DevicesConfig::hour")]
    pub session_secs: i64,
    /// Lifetime of a session challenge.
    #[serde(default = "DevicesConfig::minute")]
    pub challenge_secs: i64,
    /// Poll interval suggested to agents (they add jitter).
    #[serde(default = "DevicesConfig::five_minutes")]
    pub poll_seconds: u64,
    /// Device API requests handled at once; more are answered 503 with Retry-After. A
    /// request takes a slot only once its body has arrived.
    #[serde(default = "DevicesConfig::permits")]
    pub max_concurrent_requests: usize,
    /// Each content download is sent at most this fast (bytes a second; 0: no limit): a branch
    /// server's devices cannot fill its link (an agent downloads one file at a time).
    #[serde(default)]
    pub max_download_bytes_per_sec: u64,
    /// Status reports kept per device (the oldest are deleted first; at least 256, one whole
    /// batch); the newest report of every target is kept whatever this says.
    #[serde(default = "DevicesConfig::report_history")]
    pub report_history: u64,
    /// Distinct targets a device may report on; reports on more are refused.
    #[serde(default = "DevicesConfig::max_targets")]
    pub max_targets_per_device: u64,
    /// Pending (token-less) enrollments held at once; more are answered 429.
    #[serde(default = "DevicesConfig::max_pending")]
    pub max_pending: u64,
    /// Pending enrollments held at once from one source address; more are answered 429.
    #[serde(default = "DevicesConfig::max_pending_per_source")]
    pub max_pending_per_source: u64,
    /// Live session challenges per device; a new one replaces the oldest.
    #[serde(default = "DevicesConfig::max_challenges")]
    pub max_challenges_per_device: u64,
    /// Longest a client may take to send a request's headers, in seconds.
    #[serde(default = "DevicesConfig::ten")]
    pub header_read_secs: u64,
    /// Longest a client may take to send a device-API request body, in seconds.
    #[serde(default = "DevicesConfig::ten")]
    pub body_read_secs: u64,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    #[serde(default = "DevicesConfig::idle")]
    pub idle_secs: u64,
    /// Connections open at once from one source address on the device listener; more are
    /// closed at once.
    #[serde(default = "DevicesConfig::per_source")]
    pub max_connections_per_source: usize,
    /// Enrollment attempts per minute from one source address (also the burst); more get 429.
    #[serde(default = "DevicesConfig::enrollments_per_minute")]
    pub enrollments_per_minute: u64,
    /// Report batches per minute from one device (also the burst); more get 429.
    #[serde(default = "DevicesConfig::report_batches_per_minute")]
    pub report_batches_per_minute: u64,
    /// Challenge and session requests per minute from one source address (also the burst).
    #[serde(default = "DevicesConfig::sessions_per_minute")]
    pub sessions_per_minute: u64,
    /// Device-API bodies read at once (up to 64 KiB each), for callers without a session and,
    /// separately, for devices with one; more get 503.
    #[serde(default = "DevicesConfig::max_body_reads")]
    pub max_body_reads: usize,
    /// Connections open at once on the device listener, from all sources together.
    #[serde(default = "DevicesConfig::max_connections")]
    pub max_connections: usize,
    /// Pending devices nobody accepted or rejected are deleted after this many seconds.
    #[serde(default = "DevicesConfig::pending_expiry")]
    pub pending_expiry_secs: i64,
}

impl DevicesConfig {
    fn hour() -> i64 {
        3600
    }
    fn minute() -> i64 {
        60
    }
    fn five_minutes() -> u64 {
        300
    }
    fn permits() -> usize {
        256
    }
    fn report_history() -> u64 {
        1000
    }
    fn max_targets() -> u64 {
        4096
    }
    fn max_pending() -> u64 {
        1000
    }
    fn max_pending_per_source() -> u64 {
        10
    }
    fn max_challenges() -> u64 {
        8
    }
    fn ten() -> u64 {
        10
    }
    fn idle() -> u64 {
        120
    }
    fn per_source() -> usize {
        64
    }
    fn enrollments_per_minute() -> u64 {
        60
    }
    fn report_batches_per_minute() -> u64 {
        30
    }
    fn sessions_per_minute() -> u64 {
        120
    }
    fn max_body_reads() -> usize {
        1024
    }
    fn max_connections() -> usize {
        4096
    }
    fn pending_expiry() -> i64 {
        7 * 86_400
    }
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            session_secs: Self::hour(),
            challenge_secs: Self::minute(),
            poll_seconds: Self::five_minutes(),
            max_concurrent_requests: Self::permits(),
            max_download_bytes_per_sec: 0,
            report_history: Self::report_history(),
            max_targets_per_device: Self::max_targets(),
            max_pending: Self::max_pending(),
            max_pending_per_source: Self::max_pending_per_source(),
            max_challenges_per_device: Self::max_challenges(),
            header_read_secs: Self::ten(),
            body_read_secs: Self::ten(),
            idle_secs: Self::idle(),
            max_connections_per_source: Self::per_source(),
            enrollments_per_minute: Self::enrollments_per_minute(),
            report_batches_per_minute: Self::report_batches_per_minute(),
            sessions_per_minute: Self::sessions_per_minute(),
            max_body_reads: Self::max_body_reads(),
            max_connections: Self::max_connections(),
            pending_expiry_secs: Self::pending_expiry(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub addr: String,
}

impl ListenerConfig {
    fn device_default() -> Self {
        Self { addr: "0.0.0.0:8531".into() }
    }
    fn admin_default() -> Self {
        Self { addr: "127.0.0.1:8532".into() }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; default `<data_dir>/tls/cert.pem`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key; default `<data_dir>/tls/key.pem`.
    pub key_file: Option<PathBuf>,
}

/// Who may read the TUF repository on the device listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepositoryAccess {
    /// Enrolled devices only, once any device is enrolled.
    #[default]
    Devices,
    /// Anyone: for mirrors and CDNs (the metadata is signed, the content hash-checked).
    Public,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    #[serde(default)]
    pub access: RepositoryAccess,
    /// Largest content upload accepted on the admin listener.
    #[serde(default = "RepositoryConfig::default_max_upload")]
    pub max_upload_bytes: u64,
}

impl RepositoryConfig {
    fn default_max_upload() -> u64 {
        4 * 1024 * 1024 * 1024
    }
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        Self { access: RepositoryAccess::default(), max_upload_bytes: Self::default_max_upload() }
    }
}

/// Lifetimes of the metadata the server signs, and when it warns about offline roles.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpiryPolicy {
    #[serde(default = "ExpiryPolicy::day")]
    pub timestamp_secs: i64,
    #[serde(default = "ExpiryPolicy::week")]
    pub snapshot_secs: i64,
    /// Lifetime of delegated roles the server signs with an online key (auto-approved
    /// groups, publishers with online keys).
    #[serde(default = "ExpiryPolicy::month")]
    pub online_targets_secs: i64,
    /// Lifetime given to delegated roles the server prepares for offline signing.
    #[serde(default = "ExpiryPolicy::quarter")]
    pub offline_targets_secs: i64,
    /// Warn when an offline role expires within this many seconds.
    #[serde(default = "ExpiryPolicy::month")]
    pub offline_warning_secs: i64,
    /// How often the renewal job looks.
    #[serde(default = "ExpiryPolicy::minute")]
    pub check_interval_secs: u64,
}

impl ExpiryPolicy {
    fn minute() -> u64 {
        60
    }
    fn day() -> i64 {
        86_400
    }
    fn week() -> i64 {
        7 * 86_400
    }
    fn month() -> i64 {
        30 * 86_400
    }
    fn quarter() -> i64 {
        90 * 86_400
    }
}

impl Default for ExpiryPolicy {
    fn default() -> Self {
        Self {
            timestamp_secs: Self::day(),
            snapshot_secs: Self::week(),
            online_targets_secs: Self::month(),
            offline_targets_secs: Self::quarter(),
            offline_warning_secs: Self::month(),
            check_interval_secs: Self::minute(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Directory of online keys; default `<data_dir>/online-keys`.
    pub dir: Option<PathBuf>,
    /// File holding the passphrase of encrypted online keys, if they are encrypted.
    pub passphrase_file: Option<PathBuf>,
}

impl Config {
    /// A configuration with every default, for `data_dir`.
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            allow_root: false,
            device_listener: ListenerConfig::device_default(),
            admin_listener: ListenerConfig::admin_default(),
            tls: TlsConfig::default(),
            repository: RepositoryConfig::default(),
            expiry: ExpiryPolicy::default(),
            keys: KeysConfig::default(),
            devices: DevicesConfig::default(),
            approvals: ApprovalsConfig::default(),
            database: DatabaseConfig::default(),
            content: ContentConfig::default(),
            log: LogConfig::default(),
            console: ConsoleConfig::default(),
            mirror: MirrorConfig::default(),
        }
    }

    /// Read a TOML file, then apply `RINGFENCE_*` environment overrides.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = var("RINGFENCE_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = var("RINGFENCE_DATABASE_URL") {
            if !v.starts_with("postgres://") && !v.starts_with("postgresql://") {
                anyhow::bail!("RINGFENCE_DATABASE_URL must be a postgres:// URL");
            }
            self.database.url = Some(v);
        }
        if let Some(v) = var("RINGFENCE_CONTENT_URL") {
            if !v.starts_with("s3://") {
                anyhow::bail!("RINGFENCE_CONTENT_URL must be an s3:// URL");
            }
            self.content.url = Some(v);
        }
        if let Some(v) = var("RINGFENCE_DEVICE_ADDR") {
            self.device_listener.addr = v;
        }
        if let Some(v) = var("RINGFENCE_ADMIN_ADDR") {
            self.admin_listener.addr = v;
        }
        if let Some(v) = var("RINGFENCE_ALLOW_ROOT") {
            self.allow_root = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = var("RINGFENCE_REPOSITORY_ACCESS") {
            self.repository.access = match v.as_str() {
                "public" => RepositoryAccess::Public,
                "devices" => RepositoryAccess::Devices,
                other => anyhow::bail!("RINGFENCE_REPOSITORY_ACCESS must be public or devices, not {other:?}"),
            };
        }
        if let Some(v) = var("RINGFENCE_KEY_PASSPHRASE_FILE") {
            self.keys.passphrase_file = Some(v.into());
        }
        Ok(())
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("ringfence.db")
    }
    pub fn blob_dir(&self) -> PathBuf {
        self.data_dir.join("content")
    }
    pub fn online_key_dir(&self) -> PathBuf {
        self.keys.dir.clone().unwrap_or_else(|| self.data_dir.join("online-keys"))
    }
    pub fn cert_file(&self) -> PathBuf {
        self.tls.cert_file.clone().unwrap_or_else(|| self.data_dir.join("tls/cert.pem"))
    }
    pub fn key_file(&self) -> PathBuf {
        self.tls.key_file.clone().unwrap_or_else(|| self.data_dir.join("tls/key.pem"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_misspellings_do_not() {
        let example: Config = toml::from_str(include_str!("../../../docs/ringfence.example.toml")).unwrap();
        assert_eq!(example.repository.access, RepositoryAccess::Devices);
        assert!(!example.allow_root);
        let err = toml::from_str::<Config>("data_dir = \"x\"\nallow_rot = true\n").unwrap_err();
        assert!(err.to_string().contains("allow_rot"), "{err}");
    }
}
