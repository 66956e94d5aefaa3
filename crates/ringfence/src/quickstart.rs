//! `ringfence quickstart`: a complete local installation for trying Ringfence.
//!
//! It plays the offline ceremony on this machine (which a real installation never does) and
//! writes every offline key to a separate keys directory, then initialises the server's data
//! directory with only the online keys, and starts the server.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ringfence_cli::ceremony::{self, TopLevelKeys};
use ringfence_proto::{GroupName, PublisherName, RoleName};
use ringfence_server::Config;
use ringfence_trust::SigningKey;
use ringfence_trust::writer::{self, RoleKeySet};

use crate::setup;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Where to put `ringfence-keys/` and `ringfence-data/`.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    #[arg(long, default_value = "0.0.0.0:8531")]
    device_addr: String,
    #[arg(long, default_value = "127.0.0.1:8532")]
    admin_addr: String,
    /// Extra host names or addresses for the TLS certificate.
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
    /// Set up only; do not start the server.
    #[arg(long)]
    no_serve: bool,
    /// Keep the database in PostgreSQL (`postgres://user@host:port/name`, an empty database)
    /// instead of the SQLite file in the data directory.
    #[arg(long)]
    database: Option<String>,
    /// Keep update content in an S3-compatible bucket (`s3://bucket`) instead of the data
    /// directory; endpoint, region and credentials come from the `AWS_*` environment.
    #[arg(long)]
    content: Option<String>,
}

const YEAR: i64 = 365 * 86_400;

pub async fn run(options: Options) -> anyhow::Result<()> {
    let keys_dir = options.dir.join("ringfence-keys");
    let data_dir = options.dir.join("ringfence-data");
    let config_path = data_dir.join("ringfence.toml");
    if config_path.exists() {
        println!("Using the existing installation in {}", data_dir.display());
    } else {
        create(&options, &keys_dir, &data_dir, &config_path).await?;
    }
    let config = Config::load(&config_path)?;
    if options.no_serve {
        return Ok(());
    }
    print_next_steps(&config, &keys_dir, &data_dir);
    if ringfence_server::check_not_root(&config).is_err() {
        tracing::warn!(
            "quickstart is running as root: acceptable for a local try-out only; `ringfence serve` refuses root unless allow_root is set"
        );
    }
    let state = ringfence_server::open_state(config).await?;
    print_console_login(&state, &data_dir).await;
    ringfence_server::serve(state, crate::stopped(), None).await
}

/// The web console's address and a one-time login for the installation's admin token.
async fn print_console_login(state: &ringfence_server::AppState, data_dir: &Path) {
    if !state.config.console.enabled {
        return;
    }
    let url = format!("https://{}/console/", state.config.admin_listener.addr);
    let token = std::fs::read_to_string(data_dir.join("admin.token")).unwrap_or_default();
    match state.console.login_code(token.trim(), 15 * 60, ringfence_server::unix_now()).await {
        Ok(code) => {
            println!("Web console: {url}");
            println!("  one-time login (15 minutes, once): {url}login?once={code}");
        }
        Err(_) => println!("Web console: {url} (log in with an admin token)"),
    }
    println!();
}

async fn create(options: &Options, keys_dir: &Path, data_dir: &Path, config_path: &Path) -> anyhow::Result<()> {
    let now = ringfence_server::unix_now();
    let passphrase = std::env::var("RINGFENCE_KEY_PASSPHRASE").ok().filter(|p| !p.is_empty());
    std::fs::create_dir_all(keys_dir)?;
    let online = setup::init(&setup::InitOptions {
        data_dir: data_dir.to_path_buf(),
        config: None,
        device_addr: options.device_addr.clone(),
        admin_addr: options.admin_addr.clone(),
        tls_names: options.tls_names.clone(),
        auto_approver: true,
        database: options.database.clone(),
        content: options.content.clone(),
        mirror_of: None,
        upstream: None,
        upstream_ca: None,
        upstream_token: None,
    })?;
    let auto_approver = online.auto_approver.context("auto-approver key")?;

    // Offline keys: in the keys directory, which belongs on an offline machine.
    let offline = |name: &str| -> anyhow::Result<SigningKey> {
        let key = SigningKey::generate();
        ceremony::write_key(keys_dir, name, &key, passphrase.as_deref())?;
        Ok(key)
    };
    let root_key = offline("root")?;
    let targets_key = offline("targets")?;
    let publisher_key = offline("publisher-acme")?;
    let approvers =
        [offline("production-approver-1")?, offline("production-approver-2")?, offline("production-approver-3")?];
    std::fs::write(
        keys_dir.join("README.txt"),
        "THESE KEYS BELONG OFFLINE.\n\nThey were made by `ringfence quickstart` for a local try-out. Whoever holds them can\n\
         sign what the fleet installs. In a real installation each key is generated on its holder's own\n\
         offline machine (`ringfence key generate`), and the server never sees any of them.\n",
    )?;

    let one = |k: &SigningKey| RoleKeySet::new(vec![k.public()], 1);
    let top = TopLevelKeys {
        root: one(&root_key),
        targets: one(&targets_key),
        snapshot: one(&online.snapshot),
        timestamp: one(&online.timestamp),
    };
    let mut root = ceremony::root(1, now + YEAR, &top)?;
    root.sign(&root_key);

    let acme = PublisherName::parse("acme")?;
    let pilot = GroupName::parse("pilot")?;
    let production = GroupName::parse("production")?;
    let production_keys = RoleKeySet::new(approvers.iter().map(SigningKey::public).collect(), 2);
    let mut targets = writer::targets(1, now + YEAR);
    ceremony::add_publisher(&mut targets, &acme, &one(&publisher_key));
    ceremony::add_group(&mut targets, &pilot, &one(&auto_approver));
    ceremony::add_group(&mut targets, &production, &production_keys);
    ceremony::set_log_identity(&mut targets, &online.log)?;
    let mut targets = ringfence_trust::Envelope::new(targets)?;
    targets.sign(&targets_key);

    // The delegated roles' first versions, signed here because quickstart holds every key;
    // `ringfence import` instead leaves them pending for their holders.
    let mut roles: Vec<(RoleName, Vec<u8>)> = vec![(RoleName::targets(), targets.to_bytes()?)];
    for (name, env) in ceremony::publisher_roles(&acme, &one(&publisher_key), &[&publisher_key], now + YEAR)? {
        roles.push((name, env.to_bytes()?));
    }
    let mut production_role = ringfence_trust::Envelope::new(writer::targets(1, now + 90 * 86_400))?;
    production_role.sign(&approvers[0]);
    production_role.sign(&approvers[1]);
    roles.push((production.approval_role(), production_role.to_bytes()?));

    let root_bytes = root.to_bytes()?;
    std::fs::write(keys_dir.join("1.root.json"), &root_bytes)?;
    setup::import(config_path, &root_bytes, &roles).await?;
    println!("Created a Ringfence installation:");
    println!("  offline keys (MOVE THEM OFFLINE): {}", keys_dir.display());
    if passphrase.is_none() {
        println!(
            "  !! the offline keys are UNENCRYPTED development keys; set RINGFENCE_KEY_PASSPHRASE before quickstart to encrypt them"
        );
    }
    println!("  server data (database, content, online keys, TLS): {}", data_dir.display());
    Ok(())
}

fn print_next_steps(config: &Config, keys_dir: &Path, data_dir: &Path) {
    let device = config.device_listener.addr.replace("0.0.0.0", "127.0.0.1");
    let ca = data_dir.join("tls/cert.pem");
    println!();
    println!("Ringfence is starting.");
    println!("  repository (devices, TUF): https://{device}/repo/metadata/timestamp.json");
    println!("  admin API (loopback):      https://{}/api/v1/health", config.admin_listener.addr);
    println!("  trust root for devices:    {}", data_dir.join("1.root.json").display());
    println!();
    println!("Next, in another shell:");
    println!(
        "  export RINGFENCE_ADMIN_URL=https://{} RINGFENCE_CA={} RINGFENCE_TOKEN=$(cat {})",
        config.admin_listener.addr,
        ca.display(),
        data_dir.join("admin.token").display()
    );
    println!("  echo 'hello fleet' > hello.txt");
    println!("  cargo run --release -- publish --manifest docs/examples/hello.manifest.json hello.txt");
    println!(
        "  cargo run --release -- pending sign publisher.acme.<bin> --key {}/publisher-acme.key --trusted-root {}/1.root.json",
        keys_dir.display(),
        keys_dir.display()
    );
    println!("  cargo run --release -- approve --group pilot --target acme/hello.txt        # auto-approved online");
    println!("  cargo run --release -- approve --group production --target acme/hello.txt   # needs 2 of 3 approvers:");
    println!(
        "  cargo run --release -- pending sign approvals.production --key {}/production-approver-1.key --trusted-root {}/1.root.json",
        keys_dir.display(),
        keys_dir.display()
    );
    println!(
        "  cargo run --release -- pending sign approvals.production --key {}/production-approver-2.key --trusted-root {}/1.root.json",
        keys_dir.display(),
        keys_dir.display()
    );
    println!("See README.md for the walk-through.");
    println!();
}
