//! The Ringfence server: the device/repository listener, the admin listener, and the jobs that
//! keep online metadata fresh.
//!
//! **Invariant:** the server never holds an offline private key. It signs only with the
//! online keys in its data directory: timestamp, snapshot, and (when the operator chose so)
//! the auto-approver and publisher keys. Everything else it can only prepare and hold as
//! pending until offline signatures arrive.
//!
//! **Invariant:** nothing routed on the device listener reaches an admin handler; the two
//! listeners are built from disjoint routers ([`device::router`], [`admin::router`]).

pub mod admin;
pub mod admin_devices;
pub mod admin_reports;
pub mod caller;
pub mod config;
pub mod console;
pub mod device;
pub mod device_api;
pub mod domain;
pub mod error;
pub mod export;
pub mod jobs;
pub mod metrics;
pub mod notify;
pub mod online_keys;
pub mod replica;
pub mod replica_api;
pub mod throttle;
pub mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
pub use config::Config;
use ringfence_store::{BlobStore, Database, SqlStore};

/// Shared state of both listeners.
pub struct AppState {
    pub config: Config,
    /// The domain layer: the only way to what the server keeps.
    pub repo: domain::repo::Repository,
    pub tokens: domain::tokens::Tokens,
    pub devices: domain::devices::Devices,
    pub audit: domain::audit::Audit,
    pub reports: domain::reports::Reports,
    pub rules: domain::rules::Rules,
    pub rollouts: domain::rollouts::Rollouts,
    /// The web console's sessions.
    pub console: domain::console::Console,
    /// What `/metrics` reports.
    pub metrics: metrics::Metrics,
    /// Events for the webhook (kept in the outbox), and the webhook that receives them.
    pub events: domain::events::Events,
    pub webhook: Option<notify::Webhook>,
    /// The transparency log.
    pub log: domain::log::Log,
    /// A mirror's own records (devices enrolled through a replica, forwarded reports).
    pub mirror: domain::mirror::Mirror,
    /// A replica's upstream (`[mirror] upstream`).
    pub upstream: Option<Arc<replica::Upstream>>,
    /// This node among the nodes sharing the database (who runs the background jobs).
    pub cluster: domain::cluster::Cluster,
    /// Device API requests in flight; when none is left the answer is 503 with Retry-After.
    pub device_permits: tokio::sync::Semaphore,
    /// Device API bodies being read at once, for callers without a session (enroll,
    /// challenge, session) and for devices with one (check-in, reports): bounds the memory slow
    /// senders can make the server hold, whatever the number of connections and streams, and
    /// anonymous slow senders never take a body read from the fleet's check-ins.
    pub anonymous_body_permits: tokio::sync::Semaphore,
    pub session_body_permits: tokio::sync::Semaphore,
    /// Refused requests whose bodies are being read and dropped (so the refusal is not reset
    /// away): a pool of their own, so a flood of refused requests takes no permit a device with
    /// a session needs.
    pub refused_body_permits: tokio::sync::Semaphore,
    /// Challenge and session requests per source address.
    pub session_throttle: throttle::Throttle,
    /// Enrollment attempts per source address.
    pub enroll_throttle: throttle::Throttle,
    /// Report batches per device.
    pub report_throttle: throttle::Throttle,
    /// Console login attempts per source address (each admin token is 256 bits; this keeps
    /// guessing, and the audit trail, quiet).
    pub login_throttle: throttle::Throttle,
}

/// The addresses a running server listens on.
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub device: SocketAddr,
    pub admin: SocketAddr,
}

/// Wall-clock Unix seconds. Only the outermost layers call this; everything that decides
/// expiry takes `now` as a parameter.
#[allow(clippy::disallowed_methods)]
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Open the database: PostgreSQL when `[database] url` is set, else the SQLite file in the
/// data directory.
pub async fn open_database(config: &Config) -> anyhow::Result<SqlStore> {
    Ok(match &config.database.url {
        // The URL may carry a password: it is not repeated in the message.
        Some(url) => SqlStore::connect(url).await.context("opening the PostgreSQL database")?,
        None => SqlStore::open(&config.database_path()).await.context("opening the database")?,
    })
}

/// Open the content store: the S3 bucket `[content] url` names, else `content/` in the data
/// directory. Uploads are spooled in the data directory either way.
pub fn open_content(config: &Config) -> anyhow::Result<BlobStore> {
    Ok(match &config.content.url {
        Some(url) => {
            let location = ringfence_store::S3Location {
                url: url.clone(),
                endpoint: config.content.endpoint.clone(),
                region: config.content.region.clone(),
                allow_http: config.content.allow_http,
            };
            BlobStore::open_s3(&location, &config.blob_dir().join("tmp")).context("opening the S3 content store")?
        }
        None => BlobStore::open(&config.blob_dir()).context("opening the content store")?,
    })
}

/// Back the embedded installation `config` describes up into the new directory `dir` while it
/// serves: the database (consistent), the content store's manifest, the content itself unless
/// `without_content`, and the data directory's configuration, certificate and online keys
/// (the backup must be kept as safe as the server's data directory).
pub async fn backup(config: &Config, dir: &Path, without_content: bool) -> anyhow::Result<domain::backup::Manifest> {
    anyhow::ensure!(
        config.database.url.is_none(),
        "this installation is on PostgreSQL: back its database up with pg_dump (docs/OPERATIONS.md)"
    );
    anyhow::ensure!(
        !dir.exists() || std::fs::read_dir(dir)?.next().is_none(),
        "{} is not empty: give a new directory",
        dir.display()
    );
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let store = SqlStore::open(&config.database_path()).await.context("opening the database")?;
    let blobs = open_content(config)?;
    let manifest = domain::backup::backup(&store, &blobs, dir, !without_content, unix_now()).await?;
    for name in KEPT_FILES {
        copy_tree(&config.data_dir.join(name), &dir.join("data").join(name))?;
    }
    Ok(manifest)
}

/// What a data directory holds besides the database and content: kept with a backup, put
/// back by a restore where missing.
const KEPT_FILES: &[&str] = &["ringfence.toml", "tls", "online-keys", "1.root.json"];

/// Copy a file or a directory tree (owner-only files), if it exists.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    if from.is_dir() {
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if from.is_file() {
        tls::write_private(to, &std::fs::read(from)?)?;
    }
    Ok(())
}

/// What `ringfence restore` did.
#[derive(Debug)]
pub struct Restored {
    pub manifest: Option<domain::backup::Manifest>,
    /// Blobs found in the content store, and put back from the backup.
    pub blobs_found: u64,
    pub blobs_restored: u64,
    pub recovered: domain::restore::Recovered,
}

/// Restore the backup in `from` into the installation `config` describes (its database must
/// not exist yet), or with `from` none, only recover a database restored by other means (a
/// PostgreSQL `pg_restore`): put the log's tail back from the content store, raise the version
/// floors and sign past them (`domain::restore`). Refused with nothing changed when the backup
/// does not check out, content is missing, or the recovery fails.
pub async fn restore(config: &Config, from: Option<&Path>, skip: u64) -> anyhow::Result<Restored> {
    // What this restore put in the data directory, taken away again if it fails.
    let mut placed: Vec<std::path::PathBuf> = Vec::new();
    let result = restore_placing(config, from, skip, &mut placed).await;
    if result.is_err() {
        for path in placed.iter().rev() {
            let _ = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
        }
    }
    result
}

async fn restore_placing(
    config: &Config,
    from: Option<&Path>,
    skip: u64,
    placed: &mut Vec<std::path::PathBuf>,
) -> anyhow::Result<Restored> {
    anyhow::ensure!(
        !config.mirror.enabled,
        "this installation is a mirror: it signs nothing past a floor; set it up again \
         (`ringfence init --mirror-of`) and import a bundle exported with --since 0"
    );
    let (mut manifest, mut found, mut restored) = (None, 0, 0);
    if let Some(from) = from {
        anyhow::ensure!(
            config.database.url.is_none(),
            "this installation is on PostgreSQL: restore its database with pg_restore, then run \
             `ringfence restore --recover-only` (docs/OPERATIONS.md)"
        );
        let checked = domain::backup::read_manifest(from)?;
        let target = config.database_path();
        anyhow::ensure!(
            !target.exists(),
            "{} exists: a restore goes into an installation without a database (move it away first)",
            target.display()
        );
        // The database copied beside its place, checked again there, then renamed into it.
        let staged = config.data_dir.join("ringfence.db.restoring");
        placed.push(staged.clone());
        std::fs::copy(from.join(domain::backup::DATABASE), &staged)?;
        let (sha256, length) = domain::backup::file_sha256(&staged)?;
        anyhow::ensure!(
            sha256 == checked.database_sha256 && length == checked.database_bytes,
            "the backup's database changed while it was copied"
        );
        // What the content store must hold is what the copy references, not what the manifest says.
        let copy = SqlStore::open(&staged).await.context("opening the backup's database")?;
        let referenced = copy.referenced_blobs().await?;
        copy.close().await;
        for name in KEPT_FILES {
            let path = config.data_dir.join(name);
            if !path.exists() && from.join("data").join(name).exists() {
                placed.push(path.clone());
                copy_tree(&from.join("data").join(name), &path)?;
            }
        }
        let blobs = open_content(config)?;
        (found, restored) = domain::backup::restore_content(&blobs, from, &checked, &referenced).await?;
        placed.push(target.clone());
        for suffix in ["-wal", "-shm"] {
            placed.push(std::path::PathBuf::from(format!("{}{suffix}", target.display())));
        }
        std::fs::rename(&staged, &target)?;
        manifest = Some(checked);
    }
    let state = open_state(config.clone()).await?;
    let db = open_database(config).await?;
    let blobs = open_content(config)?;
    let backup_at = manifest.as_ref().map(|m| m.created_at);
    let recovered = domain::restore::recover(&db, &blobs, &state.log, &state.repo, skip, backup_at, unix_now()).await;
    let recovered = match recovered {
        Ok(r) => r,
        Err(e) => {
            db.close().await;
            return Err(e.into());
        }
    };
    let what = format!(
        "restored: {} log entries put back, floors {:?}, signed {:?}, waiting for signers {:?}, lost {:?}",
        recovered.log_entries, recovered.floors, recovered.signed, recovered.pending, recovered.lost
    );
    // Recovered (and logged, maybe cosigned) by now: a failing audit record must not undo it.
    if let Err(e) = state.audit.record("local restore", "restore", &what, unix_now()).await {
        tracing::warn!(error = %e, "the restore was not written to the audit trail");
    }
    db.close().await;
    Ok(Restored { manifest, blobs_found: found, blobs_restored: restored, recovered })
}

/// Write an export bundle of the installation `config` describes into `dir` (new or empty),
/// for a mirror to import (`domain::mirror`); it may serve meanwhile.
pub async fn export_bundle(
    config: &Config,
    dir: &Path,
    options: &domain::mirror::ExportOptions,
) -> anyhow::Result<ringfence_proto::api::BundleManifest> {
    let state = open_state(config.clone()).await?;
    let db = open_database(config).await?;
    let exported = domain::mirror::export_bundle(&state.repo, &state.log, &db, dir, options, unix_now()).await;
    db.close().await;
    Ok(exported?)
}

/// Import the bundle in `dir` into the mirror `config` describes, verified first against the
/// root it was set up with (`1.root.json` in its data directory); it may serve meanwhile.
pub async fn import_bundle(config: &Config, dir: &Path) -> anyhow::Result<domain::mirror::Imported> {
    anyhow::ensure!(
        config.mirror.enabled,
        "this installation is not a mirror ([mirror] enabled = true): it signs its own repository"
    );
    let root_path = config.data_dir.join("1.root.json");
    let pinned =
        std::fs::read(&root_path).with_context(|| format!("reading the pinned root {}", root_path.display()))?;
    let state = open_state(config.clone()).await?;
    let db = open_database(config).await?;
    let blobs = open_content(config)?;
    let now = unix_now();
    let imported = domain::mirror::import_bundle(&state.repo, &state.log, &db, &blobs, dir, &pinned, now).await;
    let what = match &imported {
        Ok(i) => format!(
            "imported {}: {} role versions, {} content files, log of {}",
            dir.display(),
            i.roles.len(),
            i.content,
            i.log_size
        ),
        Err(e) => format!("refused {}: {e}", dir.display()),
    };
    if let Err(e) = state.audit.record("local import", "import", &what, now).await {
        tracing::warn!(error = %e, "the import was not written to the audit trail");
    }
    db.close().await;
    Ok(imported?)
}

/// What `ringfence migrate` copied.
#[derive(Debug)]
pub struct Migrated {
    /// Rows per table, counted again in the target.
    pub rows: Vec<(String, u64)>,
    /// Blobs copied into the bucket (each hash-checked on arrival) and their bytes.
    pub blobs: u64,
    pub bytes: u64,
}

/// Copy the embedded installation `config` describes (SQLite, and local content) into an empty
/// PostgreSQL database and, if given, an empty S3 bucket; every blob is re-hashed as it
/// arrives, and every table is counted on both sides. The server must be stopped meanwhile.
pub async fn migrate(config: &Config, database_url: &str, bucket: Option<&str>) -> anyhow::Result<Migrated> {
    anyhow::ensure!(config.database.url.is_none(), "this installation is on PostgreSQL already");
    anyhow::ensure!(config.content.url.is_none() || bucket.is_none(), "this installation's content is in S3 already");
    let source = SqlStore::open(&config.database_path()).await.context("opening the SQLite database")?;
    let target = SqlStore::connect(database_url).await.context("opening the PostgreSQL database")?;
    anyhow::ensure!(
        target.row_counts().await?.iter().all(|(_, n)| *n == 0),
        "the PostgreSQL database already holds data: give an empty one"
    );
    let (mut blobs, mut bytes) = (0, 0);
    if let Some(bucket) = bucket {
        let from = open_content(config)?;
        let location = ringfence_store::S3Location { url: bucket.to_owned(), ..Default::default() };
        let to = BlobStore::open_s3(&location, &config.blob_dir().join("tmp")).context("opening the bucket")?;
        anyhow::ensure!(to.is_empty().await?, "the bucket already holds content: give an empty one");
        for (sha256, length) in source.blob_records().await? {
            use futures::TryStreamExt;
            let mut chunks = from.get_stream(&sha256, None).await.with_context(|| format!("reading blob {sha256}"))?;
            let mut writer = to.writer(length)?;
            while let Some(chunk) = chunks.try_next().await? {
                writer.write(&chunk).await?;
            }
            let (_, written) = writer.finish(Some(&sha256)).await.with_context(|| format!("blob {sha256}"))?;
            anyhow::ensure!(written == length, "blob {sha256}: {written} bytes, the catalog says {length}");
            blobs += 1;
            bytes += length;
        }
    }
    let rows = source.copy_into(&target).await.context("copying the database")?;
    Ok(Migrated { rows, blobs, bytes })
}

/// Console login attempts per source address: a burst, then a few a minute.
const LOGIN_BURST: u64 = 30;
const LOGINS_PER_MINUTE: u64 = 10;

/// Refused requests whose bodies are read and dropped at once, at most.
const REFUSED_BODY_READS: usize = 32;

/// Open the data directory named by `config`.
pub async fn open_state(config: Config) -> anyhow::Result<Arc<AppState>> {
    let db: Arc<dyn Database> = Arc::new(open_database(&config).await?);
    let blobs = open_content(&config)?;
    // A mirror signs nothing: it has no online keys, and refuses to start with some (one set
    // up as a mirror by mistake would otherwise sign metadata of its own).
    let mut keys = if config.mirror.enabled {
        anyhow::ensure!(
            !config.online_key_dir().join(online_keys::TIMESTAMP_FILE).exists(),
            "[mirror] enabled, but {} holds online keys: a mirror holds none",
            config.online_key_dir().display()
        );
        None
    } else {
        Some(online_keys::OnlineKeys::load(&config).context("loading the online keys")?)
    };
    let audit = domain::audit::Audit::new(db.clone());
    let log_key = keys.as_mut().and_then(|k| k.log.take());
    let origin = online_keys::log_origin(&config, log_key.as_ref())?;
    let log = domain::log::Log::new(db.clone(), blobs.clone(), log_key, origin.as_deref(), &config.log.witnesses)
        .context("the transparency log")?;
    // The embedded database has one writer, this process: the newest metadata may be served
    // from memory. With PostgreSQL other nodes commit too, and on a mirror `ringfence import`
    // does (another process).
    let one_writer = config.database.url.is_none() && !config.mirror.enabled;
    let mirror = domain::mirror::Mirror::new(db.clone(), blobs.clone());
    let upstream = replica::Upstream::from_config(&config)?;
    let repo = domain::repo::Repository::new(db.clone(), blobs, audit.clone(), keys, config.expiry.clone(), one_writer);
    let tokens = domain::tokens::Tokens::new(db.clone(), audit.clone());
    let console = domain::console::Console::new(
        db.clone(),
        tokens.clone(),
        audit.clone(),
        config.console.idle_minutes,
        config.console.session_hours,
    );
    let reports = domain::reports::Reports::new(db.clone());
    // Events are kept for delivery only when a webhook is configured; `serve` delivers them.
    let webhook = notify::Webhook::from_config(&config.approvals).context("the approvals webhook")?;
    let events = domain::events::Events::new(webhook.as_ref().map(|_| db.clone()), config.approvals.webhook_retry_secs);
    let rollouts = domain::rollouts::Rollouts::new(db.clone(), audit.clone(), events.clone());
    let rules = domain::rules::Rules::new(db.clone(), audit.clone(), events.clone());
    let mut random = [0u8; 4];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
    let node = format!(
        "{}-{}-{}",
        std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim(),
        std::process::id(),
        hex::encode(random)
    );
    let cluster = domain::cluster::Cluster::new(db.clone(), node);
    let fleet =
        domain::devices::Devices::new(db, audit.clone(), config.devices.clone(), one_writer, upstream.is_some());
    let device_permits = tokio::sync::Semaphore::new(config.devices.max_concurrent_requests.max(1));
    let anonymous_body_permits = tokio::sync::Semaphore::new(config.devices.max_body_reads.max(1));
    let session_body_permits = tokio::sync::Semaphore::new(config.devices.max_body_reads.max(1));
    let refused_body_permits = tokio::sync::Semaphore::new(REFUSED_BODY_READS);
    let devices = &config.devices;
    let enroll_throttle = throttle::Throttle::new(devices.enrollments_per_minute, devices.enrollments_per_minute);
    let report_throttle = throttle::Throttle::new(devices.report_batches_per_minute, devices.report_batches_per_minute);
    let login_throttle = throttle::Throttle::new(LOGINS_PER_MINUTE, LOGIN_BURST);
    let session_throttle = throttle::Throttle::new(devices.sessions_per_minute, devices.sessions_per_minute);
    Ok(Arc::new(AppState {
        config,
        repo,
        tokens,
        devices: fleet,
        cluster,
        audit,
        reports,
        rules,
        rollouts,
        console,
        metrics: metrics::Metrics::default(),
        events,
        webhook,
        log,
        mirror,
        upstream,
        device_permits,
        anonymous_body_permits,
        session_body_permits,
        refused_body_permits,
        session_throttle,
        enroll_throttle,
        report_throttle,
        login_throttle,
    }))
}

/// Refuse to run as root unless the configuration explicitly allows it.
pub fn check_not_root(config: &Config) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).context("reading the effective user")?;
    may_run_as(euid, config.allow_root)
}

/// The rule behind [`check_not_root`]: effective user 0 only with `allow_root`.
pub fn may_run_as(euid: u32, allow_root: bool) -> anyhow::Result<()> {
    if euid == 0 && !allow_root {
        anyhow::bail!(
            "refusing to run as root: run Ringfence as an unprivileged user, or set allow_root = true \
             (RINGFENCE_ALLOW_ROOT=1) if you really mean it"
        );
    }
    Ok(())
}

/// Bind both listeners and serve until `shutdown` resolves.
pub async fn serve(
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<BoundAddrs>>,
) -> anyhow::Result<()> {
    let tls_config = tls::server_config(&state.config).context("loading the TLS certificate")?;
    let device_listener = tokio::net::TcpListener::bind(&state.config.device_listener.addr)
        .await
        .with_context(|| format!("binding the device listener on {}", state.config.device_listener.addr))?;
    let admin_listener = tokio::net::TcpListener::bind(&state.config.admin_listener.addr)
        .await
        .with_context(|| format!("binding the admin listener on {}", state.config.admin_listener.addr))?;
    let addrs = BoundAddrs { device: device_listener.local_addr()?, admin: admin_listener.local_addr()? };
    tracing::info!(device = %addrs.device, admin = %addrs.admin, "listening");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let devices = &state.config.devices;
    let device_limits = tls::ConnLimits {
        header_read: Duration::from_secs(devices.header_read_secs.max(1)),
        idle: Duration::from_secs(devices.idle_secs.max(1)),
        per_source: Some(devices.max_connections_per_source.max(1)),
        max_connections: devices.max_connections.max(1),
    };
    // The admin listener (loopback by default, every route authenticated) keeps the same
    // deadlines without a per-source bound.
    let admin_limits = tls::ConnLimits { per_source: None, max_connections: 1024, ..device_limits };
    let device = tokio::spawn(tls::serve_tls(
        device_listener,
        tls_config.clone(),
        device::router(state.clone())
            .layer(axum::middleware::from_fn_with_state((state.clone(), "device"), metrics::record)),
        device_limits,
        stop_rx.clone(),
    ));
    let admin = tokio::spawn(tls::serve_tls(
        admin_listener,
        tls_config,
        admin::router(state.clone())
            .layer(axum::middleware::from_fn_with_state((state.clone(), "admin"), metrics::record)),
        admin_limits,
        stop_rx.clone(),
    ));
    let jobs = tokio::spawn(jobs::run(state.clone(), stop_rx.clone()));
    let sequencer = tokio::spawn(jobs::sequence_log(state.clone(), stop_rx.clone()));
    let webhooks = tokio::spawn(notify::deliver(state.clone(), stop_rx.clone()));
    let replica = tokio::spawn(replica::run(state.clone(), stop_rx.clone()));
    let checkins = tokio::spawn(jobs::flush_checkins(state.clone(), stop_rx));
    if let Some(ready) = ready {
        let _ = ready.send(addrs);
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = tokio::join!(device, admin, jobs, sequencer, webhooks, replica, checkins);
    if let Err(e) = state.cluster.step_down().await {
        tracing::warn!(error = %e, "giving up the jobs lease failed; another node takes it when it runs out");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_runs_only_when_allowed_and_others_always() {
        let refused = super::may_run_as(0, false).unwrap_err().to_string();
        assert!(refused.contains("refusing to run as root"), "{refused}");
        assert!(super::may_run_as(0, true).is_ok());
        assert!(super::may_run_as(1000, false).is_ok());
        assert!(super::may_run_as(1000, true).is_ok());
    }
}
