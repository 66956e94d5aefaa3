//! Setting up a server's data directory: `ringfence init` (online keys, TLS, configuration,
//! first admin token) and `ringfence import` (the offline ceremony's root and targets).

use std::path::{Path, PathBuf};

use anyhow::Context;
use ringfence_proto::RoleName;
use ringfence_proto::api::{Scope, TokenRequest};
use ringfence_server::online_keys::{AUTO_APPROVER_FILE, LOG_FILE, SNAPSHOT_FILE, TIMESTAMP_FILE};
use ringfence_server::{Config, tls};
use ringfence_trust::SigningKey;

#[derive(Debug, clap::Args)]
pub struct InitOptions {
    /// The server's data directory (created).
    #[arg(long, default_value = "ringfence-data")]
    pub data_dir: PathBuf,
    /// Use this configuration file, which exists already (a package's
    /// `/etc/ringfence/ringfence.toml`), instead of writing `<data-dir>/ringfence.toml`: its
    /// `data_dir` is created and filled, the file itself is left as it is.
    #[arg(long, conflicts_with_all = ["data_dir", "device_addr", "admin_addr", "database", "content"])]
    pub config: Option<PathBuf>,
    #[arg(long, default_value = "0.0.0.0:8531")]
    pub device_addr: String,
    #[arg(long, default_value = "127.0.0.1:8532")]
    pub admin_addr: String,
    /// Host names or addresses for the self-signed TLS certificate (besides localhost).
    #[arg(long = "tls-name")]
    pub tls_names: Vec<String>,
    /// Also create an online auto-approver key, for groups whose owners choose automatic approval.
    #[arg(long)]
    pub auto_approver: bool,
    /// Keep the database in PostgreSQL (`postgres://user@host:port/name`, an empty database)
    /// instead of the SQLite file in the data directory.
    #[arg(long)]
    pub database: Option<String>,
    /// Keep update content in an S3-compatible bucket (`s3://bucket`) instead of the data
    /// directory; endpoint, region and credentials come from the `AWS_*` environment.
    #[arg(long)]
    pub content: Option<String>,
    /// Set up a mirror of the repository whose root version 1 is this file (from the
    /// upstream, compared by its SHA-256 out of band): no online keys; its repository comes
    /// from `ringfence import BUNDLE` (docs/DOWNSTREAM.md).
    #[arg(long, value_name = "ROOT_FILE", conflicts_with_all = ["config", "auto_approver"])]
    pub mirror_of: Option<PathBuf>,
    /// With `--mirror-of`: a replica that syncs from this upstream device listener
    /// (`https://host:8531`) instead of being fed bundles.
    #[arg(long, requires_all = ["mirror_of", "upstream_ca", "upstream_token"])]
    pub upstream: Option<String>,
    /// The upstream's CA certificate (its `tls/cert.pem`); copied into the data directory.
    #[arg(long, requires = "upstream")]
    pub upstream_ca: Option<PathBuf>,
    /// A file with the upstream token for this replica (`ringfence token create --scope
    /// replicate` upstream); copied into the data directory, owner-only.
    #[arg(long, requires = "upstream")]
    pub upstream_token: Option<PathBuf>,
}

/// What `init` made that the offline ceremony needs: the online keys' public halves.
pub struct Initialised {
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub timestamp: SigningKey,
    pub snapshot: SigningKey,
    pub auto_approver: Option<SigningKey>,
    /// The transparency log's identity (no witnesses yet), for top-level targets.
    pub log: ringfence_tlog::proof::LogIdentity,
}

pub fn init(options: &InitOptions) -> anyhow::Result<Initialised> {
    let (mut config, config_path, write_config) = match &options.config {
        Some(path) => (Config::load(path)?, path.clone(), false),
        None => {
            let path = options.data_dir.join("ringfence.toml");
            anyhow::ensure!(!path.exists(), "{} exists already", path.display());
            (Config::with_data_dir(std::path::absolute(&options.data_dir)?), path, true)
        }
    };
    let data_dir = config.data_dir.clone();
    // For a service's configuration (a package's): keys made by root would be root's, and the
    // service's user could not read them. Run it as that user (`sudo -u ringfence`).
    if !write_config {
        ringfence_server::check_not_root(&config)?;
    }
    anyhow::ensure!(
        !config.online_key_dir().join(TIMESTAMP_FILE).exists(),
        "{} holds an installation already",
        data_dir.display()
    );
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    if write_config {
        config.device_listener.addr = options.device_addr.clone();
        config.admin_listener.addr = options.admin_addr.clone();
    }
    if let Some(url) = &options.database {
        anyhow::ensure!(
            url.starts_with("postgres://") || url.starts_with("postgresql://"),
            "--database: a postgres:// URL"
        );
        config.database.url = Some(url.clone());
    }
    if let Some(url) = &options.content {
        anyhow::ensure!(url.starts_with("s3://"), "--content: an s3:// URL");
        config.content.url = Some(url.clone());
    }

    let online_dir = config.online_key_dir();
    std::fs::create_dir_all(&online_dir)?;
    // A configuration that names a passphrase file gets its online keys encrypted with it.
    let passphrase = ringfence_server::online_keys::passphrase(&config)?;
    let write_online = |file: &str| -> anyhow::Result<SigningKey> {
        let key = SigningKey::generate();
        let pem = match &passphrase {
            Some(p) => key.to_encrypted_pem(p)?,
            None => key.to_unencrypted_pem()?,
        };
        tls::write_private(&online_dir.join(file), pem.as_bytes())?;
        let public = online_dir.join(file.replace(".key", ".pub.json"));
        std::fs::write(public, serde_json::to_vec_pretty(&key.public().to_tuf())?)?;
        Ok(key)
    };
    let timestamp = write_online(TIMESTAMP_FILE)?;
    let snapshot = write_online(SNAPSHOT_FILE)?;
    let auto_approver = if options.auto_approver { Some(write_online(AUTO_APPROVER_FILE)?) } else { None };
    // The transparency log's key, and the origin its checkpoints carry: a name of its own per
    // installation (witnesses keep state per origin), from the key.
    let log_key = write_online(LOG_FILE)?;
    let origin = match &config.log.origin {
        Some(configured) => configured.clone(),
        None => ringfence_server::online_keys::default_log_origin(&log_key),
    };
    let log_key = ringfence_tlog::checkpoint::LogKey::new(&origin, log_key)?;
    let log = ringfence_tlog::proof::LogIdentity {
        origin: origin.clone(),
        key: log_key.verifier_key(),
        witnesses: Vec::new(),
        quorum: 0,
    };
    std::fs::write(online_dir.join("log-identity.json"), serde_json::to_vec_pretty(&log)?)?;
    config.log.origin = Some(origin);

    write_certificate(&config, options)?;
    if write_config {
        // Owner-only: a database URL may carry a password.
        tls::write_private(&config_path, config_text(&config).as_bytes())?;
    }
    Ok(Initialised { config_path, data_dir, timestamp, snapshot, auto_approver, log })
}

/// A self-signed certificate for the listeners, unless the data directory has one (a
/// certificate the configuration names and that exists is the operator's: kept).
fn write_certificate(config: &Config, options: &InitOptions) -> anyhow::Result<()> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    names.extend(options.tls_names.iter().cloned());
    if !(config.cert_file().exists() && config.key_file().exists()) {
        tls::write_self_signed(&config.cert_file(), &config.key_file(), &names)?;
    }
    Ok(())
}

/// What `init --mirror-of` made.
pub struct MirrorInitialised {
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    /// The SHA-256 of the pinned root, to compare with the upstream's.
    pub root_sha256: String,
}

/// Set up a mirror: the pinned root (checked to be a root version 1 that verifies itself),
/// a certificate, the configuration with `[mirror] enabled`, and the first admin token (in
/// `admin.token`). No online keys: a mirror signs nothing.
pub async fn init_mirror(options: &InitOptions, root_file: &Path) -> anyhow::Result<MirrorInitialised> {
    let root = std::fs::read(root_file).with_context(|| format!("reading {}", root_file.display()))?;
    let now = ringfence_server::unix_now();
    let set = ringfence_trust::client::TrustedSet::new(&root, now)
        .with_context(|| format!("{}: not a root that verifies itself", root_file.display()))?;
    anyhow::ensure!(set.root().signed.version == 1, "{}: give the upstream's root version 1", root_file.display());
    let config_path = options.data_dir.join("ringfence.toml");
    anyhow::ensure!(!config_path.exists(), "{} exists already", config_path.display());
    let mut config = Config::with_data_dir(std::path::absolute(&options.data_dir)?);
    config.device_listener.addr = options.device_addr.clone();
    config.admin_listener.addr = options.admin_addr.clone();
    config.database.url = options.database.clone();
    config.content.url = options.content.clone();
    config.mirror.enabled = true;
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    if let (Some(url), Some(ca), Some(token)) = (&options.upstream, &options.upstream_ca, &options.upstream_token) {
        anyhow::ensure!(url.starts_with("https://"), "--upstream: an https:// URL");
        let ca_copy = config.data_dir.join("upstream-ca.pem");
        std::fs::copy(ca, &ca_copy).with_context(|| format!("reading {}", ca.display()))?;
        let secret = std::fs::read_to_string(token).with_context(|| format!("reading {}", token.display()))?;
        let token_copy = config.data_dir.join("upstream.token");
        tls::write_private(&token_copy, secret.trim().as_bytes())?;
        config.mirror.upstream = Some(url.clone());
        config.mirror.upstream_ca = Some(ca_copy);
        config.mirror.token_file = Some(token_copy);
    }
    std::fs::write(config.data_dir.join("1.root.json"), &root)?;
    write_certificate(&config, options)?;
    tls::write_private(&config_path, config_text(&config).as_bytes())?;
    let state = ringfence_server::open_state(config.clone()).await?;
    let request = TokenRequest { name: "first-admin".into(), scopes: Scope::ALL.to_vec(), expires_in_days: None };
    let created = state.tokens.issue(&request, "setup", now).await.context("storing the admin token")?;
    tls::write_private(&config.data_dir.join("admin.token"), created.token.as_bytes())?;
    Ok(MirrorInitialised { config_path, data_dir: config.data_dir, root_sha256: ringfence_trust::sha256_hex(&root) })
}

fn config_text(config: &Config) -> String {
    let mut text = format!(
        "# Ringfence server configuration; every setting is described in docs/ringfence.example.toml\n\
         data_dir = {:?}\n\n[device_listener]\naddr = {:?}\n\n[admin_listener]\naddr = {:?}\n\n[repository]\naccess = \"devices\"\n",
        config.data_dir.display().to_string(),
        config.device_listener.addr,
        config.admin_listener.addr
    );
    if let Some(origin) = &config.log.origin {
        text.push_str(&format!("\n[log]\norigin = {origin:?}\n"));
    }
    if let Some(url) = &config.database.url {
        text.push_str(&format!("\n[database]\nurl = {url:?}\n"));
    }
    if let Some(url) = &config.content.url {
        text.push_str(&format!("\n[content]\nurl = {url:?}\n"));
    }
    if config.mirror.enabled {
        text.push_str("\n[mirror]\nenabled = true\n");
        if let (Some(url), Some(ca), Some(token)) =
            (&config.mirror.upstream, &config.mirror.upstream_ca, &config.mirror.token_file)
        {
            text.push_str(&format!(
                "upstream = {url:?}\nupstream_ca = {:?}\ntoken_file = {:?}\n",
                ca.display().to_string(),
                token.display().to_string()
            ));
        }
    }
    text
}

#[derive(Debug, clap::Args)]
pub struct ImportOptions {
    #[arg(long, default_value = "ringfence-data/ringfence.toml")]
    pub config: PathBuf,
    /// On a mirror: the export bundle to verify and import (`ringfence export --bundle`).
    #[arg(conflicts_with_all = ["root", "targets"])]
    pub bundle: Option<PathBuf>,
    /// Root version 1, signed offline.
    #[arg(long, required_unless_present = "bundle")]
    pub root: Option<PathBuf>,
    /// Top-level targets version 1, signed offline.
    #[arg(long, required_unless_present = "bundle")]
    pub targets: Option<PathBuf>,
}

/// Import the ceremony's root and targets-type roles (at least top-level targets; roles left
/// out get a first version prepared for their key holders), create the first admin token
/// (written to `<data_dir>/admin.token`, readable by its owner only) and return it.
pub async fn import(config_path: &Path, root: &[u8], roles: &[(RoleName, Vec<u8>)]) -> anyhow::Result<String> {
    let config = Config::load(config_path)?;
    let data_dir = config.data_dir.clone();
    let state = ringfence_server::open_state(config).await?;
    let now = ringfence_server::unix_now();
    state.repo.bootstrap(root, roles, now).await.map_err(|e| anyhow::anyhow!("importing the repository: {e}"))?;
    std::fs::write(data_dir.join("1.root.json"), root)?;
    let request = TokenRequest { name: "first-admin".into(), scopes: Scope::ALL.to_vec(), expires_in_days: None };
    let created = state.tokens.issue(&request, "setup", now).await.context("storing the admin token")?;
    tls::write_private(&data_dir.join("admin.token"), created.token.as_bytes())?;
    Ok(created.token)
}

pub fn print_init(done: &Initialised) {
    let dir = &done.data_dir;
    println!("Initialised {} (configuration: {})", dir.display(), done.config_path.display());
    println!("Online public keys for the ceremony (the private halves stay here, readable by this user only):");
    println!("  timestamp: {}  {}", done.timestamp.key_id(), dir.join("online-keys/timestamp.pub.json").display());
    println!("  snapshot:  {}  {}", done.snapshot.key_id(), dir.join("online-keys/snapshot.pub.json").display());
    if let Some(k) = &done.auto_approver {
        println!("  auto-approver: {}  {}", k.key_id(), dir.join("online-keys/auto-approver.pub.json").display());
    }
    println!("Next, on the offline machine: `ringfence metadata new-root` and `new-targets`, sign them,");
    println!(
        "then here: `ringfence import --config {} --root 1.root.json --targets 1.targets.json`.",
        done.config_path.display()
    );
}
