//! The `ringfence` binary: the server (`serve`, `quickstart`) and the administrator commands.

mod quickstart;
mod setup;
mod witness;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ringfence",
    version,
    about = "A self-hosted update server a compromised server cannot turn against its fleet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a local installation (keys, repository, TLS certificate) and start the server.
    Quickstart(quickstart::Options),
    /// Create a server's data directory: online keys, TLS certificate, configuration.
    Init(setup::InitOptions),
    /// Import the offline ceremony's root and top-level targets into an initialised server.
    Import(setup::ImportOptions),
    /// Run the server from a configuration file.
    Serve {
        #[arg(long, default_value = "ringfence-data/ringfence.toml")]
        config: PathBuf,
    },
    /// Move a stopped embedded installation to PostgreSQL (and its content to S3), verified,
    /// and point its configuration there.
    Migrate {
        #[arg(long, default_value = "ringfence-data/ringfence.toml")]
        config: PathBuf,
        /// An empty PostgreSQL database: `postgres://user@host:port/name`.
        #[arg(long)]
        to: String,
        /// An empty S3-compatible bucket for the content: `s3://bucket` (endpoint, region and
        /// credentials from the `AWS_*` environment). Without it content stays in the data
        /// directory (one node only).
        #[arg(long)]
        blobs: Option<String>,
    },
    /// Back an embedded installation up while it serves: a consistent copy of the database,
    /// the content it references, the content store's manifest, and the data directory's
    /// configuration, certificate and online keys (keep the backup as safe as the server).
    Backup {
        #[arg(long, default_value = "ringfence-data/ringfence.toml")]
        config: PathBuf,
        /// A new (or empty) directory to write the backup into.
        #[arg(long)]
        to: PathBuf,
        /// Leave the content out (it is content-addressed: back the content directory or the
        /// bucket up on its own); the manifest still lists every blob a restore needs.
        #[arg(long)]
        without_content: bool,
    },
    /// Restore a backup into an installation without a database, then put the transparency
    /// log's tail back from the content store and sign every role past the versions devices
    /// may already trust (the server is stopped meanwhile).
    Restore {
        #[arg(long, default_value = "ringfence-data/ringfence.toml")]
        config: PathBuf,
        /// The backup directory (`ringfence backup --to`).
        #[arg(long, required_unless_present = "recover_only", conflicts_with = "recover_only")]
        from: Option<PathBuf>,
        /// Only recover a database restored by other means (PostgreSQL's pg_restore).
        #[arg(long)]
        recover_only: bool,
        /// Move every version floor this much further (when the content store may not hold
        /// the whole log tail).
        #[arg(long, default_value_t = 0)]
        skip: u64,
    },
    /// Write the current repository as plain files (`DIR/repo/metadata/…`, `DIR/repo/targets/…`)
    /// that any web server or CDN can serve and any TUF client can read.
    ///
    /// Or, with `--bundle`, write a bundle for a mirror (a branch or air-gapped site) to import
    /// with `ringfence import DIR`: metadata, content and the transparency log's entries, all
    /// verified there before anything is served.
    Export {
        #[arg(long, default_value = "ringfence-data/ringfence.toml")]
        config: PathBuf,
        /// The directory to write into (created; files already there are kept).
        #[arg(long = "static", required_unless_present = "bundle", conflicts_with = "bundle")]
        dir: Option<PathBuf>,
        /// Write an export bundle into this new (or empty) directory.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// The log size the mirror's last import printed: ship only content of roles changed
        /// since, and the log from there (default: everything).
        #[arg(long, default_value_t = 0, requires = "bundle")]
        since: u64,
        /// Ship only content approved for this group (repeat for more; default: all content).
        #[arg(long = "group", requires = "bundle")]
        groups: Vec<String>,
        /// Ship only content of updates of this product (repeat for more).
        #[arg(long = "product", requires = "bundle")]
        products: Vec<String>,
        /// Ship only content of updates of this classification (`security`, `critical`, …;
        /// repeat for more).
        #[arg(long = "classification", requires = "bundle")]
        classifications: Vec<String>,
    },
    /// Issue an admin token on the server's own machine, through its database: for when every
    /// admin token has expired or was revoked. Whoever can run this can read the server's data
    /// anyway; it is audited (`local recovery`) and logged like any token. The secret is
    /// printed once on standard output.
    RecoverAdminToken {
        #[arg(long, default_value = "ringfence-data/ringfence.toml")]
        config: PathBuf,
        #[arg(long, default_value = "recovered-admin")]
        name: String,
        /// Days until the token is refused (1 to 730; default 90).
        #[arg(long)]
        days: Option<u64>,
    },
    /// A witness for transparency logs (C2SP tlog-witness): cosigns checkpoints, only ever
    /// forward.
    Witness {
        #[command(subcommand)]
        command: witness::WitnessCommand,
    },
    #[command(flatten)]
    Admin(Box<ringfence_cli::Command>),
}

/// Logs on standard error: `RINGFENCE_LOG` filters (default `info`; add
/// `ringfence_access=debug` for a line per request), `RINGFENCE_LOG_FORMAT=json` writes one
/// JSON object per line with the request's id and route.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RINGFENCE_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("RINGFENCE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().with_current_span(true).with_span_list(false).init();
    } else {
        builder.init();
    }
}

/// Errors can carry text from a server or a document: each line is shown with its control
/// characters written out (`review::shown`), never raw on the terminal.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            for (i, line) in format!("{e:?}").lines().enumerate() {
                let shown = ringfence_trust::review::shown(line);
                if i == 0 { eprintln!("Error: {shown}") } else { eprintln!("{shown}") }
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Quickstart(options) => {
            init_logging();
            runtime()?.block_on(quickstart::run(options))
        }
        Command::Export { config, bundle: Some(bundle), since, groups, products, classifications, .. } => {
            let config = ringfence_server::Config::load(&config)?;
            let groups = groups
                .iter()
                .map(|g| ringfence_proto::GroupName::parse(g).with_context(|| format!("--group {g}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let options = ringfence_server::domain::mirror::ExportOptions { since, groups, products, classifications };
            let done = runtime()?.block_on(ringfence_server::export_bundle(&config, &bundle, &options))?;
            println!(
                "Wrote {}: {} metadata files, {} content files ({} bytes), the log from entry {} to {}.",
                bundle.display(),
                done.metadata_files,
                done.content_files,
                done.content_bytes,
                done.log_from,
                done.log_size
            );
            println!("Carry it to the mirror and run `ringfence import {}` there.", bundle.display());
            Ok(())
        }
        Command::Export { config, dir, .. } => {
            let dir = dir.context("--static DIR or --bundle DIR")?;
            let config = ringfence_server::Config::load(&config)?;
            let done = runtime()?.block_on(async {
                let state = ringfence_server::open_state(config).await?;
                ringfence_server::export::export_static(&state, &dir).await
            })?;
            println!(
                "Wrote {} metadata files and {} targets under {}; serve that directory (its repo/ is what devices read at /repo/).",
                done.metadata,
                done.targets,
                dir.display()
            );
            Ok(())
        }
        Command::RecoverAdminToken { config, name, days } => {
            let config = ringfence_server::Config::load(&config)?;
            let created = runtime()?.block_on(async {
                let state = ringfence_server::open_state(config).await?;
                let request = ringfence_proto::api::TokenRequest {
                    name,
                    scopes: ringfence_proto::api::Scope::ALL.to_vec(),
                    expires_in_days: days,
                };
                let now = ringfence_server::unix_now();
                anyhow::Ok(state.tokens.issue(&request, "local recovery", now).await?)
            })?;
            println!("{}", created.token);
            eprintln!(
                "admin token {} (every scope), refused from {}: shown only now",
                created.id,
                ringfence_trust::expiry::format(created.expires_at)
            );
            Ok(())
        }
        Command::Witness { command } => {
            init_logging();
            witness::run(command)
        }
        Command::Init(options) => {
            if let Some(root) = &options.mirror_of {
                let done = runtime()?.block_on(setup::init_mirror(&options, root))?;
                println!(
                    "Initialised the mirror {} (configuration: {})",
                    done.data_dir.display(),
                    done.config_path.display()
                );
                println!("Pinned root version 1, SHA-256 {}: compare it with the upstream's.", done.root_sha256);
                println!("The first admin token is in admin.token in the data directory (owner-only).");
                match &options.upstream {
                    Some(url) => println!(
                        "Next: `ringfence serve --config {}`: it syncs from {url} and verifies before it serves; \
                         devices enroll here with the upstream's enrollment tokens.",
                        done.config_path.display()
                    ),
                    None => println!(
                        "Next: `ringfence import --config {} BUNDLE` with a bundle from `ringfence export --bundle` upstream.",
                        done.config_path.display()
                    ),
                }
                return Ok(());
            }
            let done = setup::init(&options)?;
            setup::print_init(&done);
            Ok(())
        }
        Command::Import(options) if options.bundle.is_some() => {
            let bundle = options.bundle.as_deref().context("a bundle directory")?;
            let config = ringfence_server::Config::load(&options.config)?;
            let done = runtime()?.block_on(ringfence_server::import_bundle(&config, bundle))?;
            println!(
                "Imported {}: {} new role versions, {} content files ({} bytes; {} held already), {} log entries.",
                bundle.display(),
                done.roles.len(),
                done.content,
                done.content_bytes,
                done.content_held,
                done.log_entries
            );
            println!(
                "Serving timestamp version {}, which expires {}: import again before then.",
                done.timestamp_version,
                ringfence_trust::expiry::format(done.expires)
            );
            if done.holds_version > 0 {
                println!("Serving the upstream's rollout holds, version {}.", done.holds_version);
            }
            if !done.expired.is_empty() {
                println!("Left out, expired (devices refuse them; renew them upstream): {}", done.expired.join(", "));
            }
            println!(
                "The log has {} entries: export the next bundle upstream with --since {}.",
                done.log_size, done.log_size
            );
            Ok(())
        }
        Command::Import(options) => {
            let (Some(root), Some(targets)) = (&options.root, &options.targets) else {
                anyhow::bail!("--root and --targets, or a bundle directory")
            };
            let root = std::fs::read(root).with_context(|| format!("reading {}", root.display()))?;
            let targets = std::fs::read(targets).with_context(|| format!("reading {}", targets.display()))?;
            let roles = [(ringfence_proto::RoleName::targets(), targets)];
            runtime()?.block_on(setup::import(&options.config, &root, &roles))?;
            println!("Imported. The first admin token is in admin.token in the data directory (owner-only).");
            println!(
                "Start the server with `ringfence serve --config {}`; key holders then run",
                options.config.display()
            );
            println!("`ringfence pending sign-all` for the roles the server prepared.");
            Ok(())
        }
        Command::Serve { config } => {
            init_logging();
            let config = ringfence_server::Config::load(&config)?;
            ringfence_server::check_not_root(&config)?;
            runtime()?.block_on(serve(config))
        }
        Command::Migrate { config, to, blobs } => {
            anyhow::ensure!(
                to.starts_with("postgres://") || to.starts_with("postgresql://"),
                "--to: a postgres:// URL"
            );
            anyhow::ensure!(blobs.as_deref().is_none_or(|b| b.starts_with("s3://")), "--blobs: an s3:// URL");
            let loaded = ringfence_server::Config::load(&config)?;
            let text = std::fs::read_to_string(&config)?;
            anyhow::ensure!(
                !text.contains("[database]") && !text.contains("[content]"),
                "{} has a [database] or [content] section: move by hand (docs/SCALE-OUT.md)",
                config.display()
            );
            let done = runtime()?.block_on(ringfence_server::migrate(&loaded, &to, blobs.as_deref()))?;
            for (table, rows) in done.rows.iter().filter(|(_, n)| *n > 0) {
                println!("  {table}: {rows} rows");
            }
            println!(
                "Copied {} tables and {} blobs ({} bytes), each checked.",
                done.rows.len(),
                done.blobs,
                done.bytes
            );
            // Point the configuration at the copy; the old one is kept beside it.
            let backup = config.with_extension("toml.before-migrate");
            std::fs::write(&backup, &text)?;
            let mut next = format!("{}\n[database]\nurl = {to:?}\n", text.trim_end());
            if let Some(bucket) = &blobs {
                next.push_str(&format!("\n[content]\nurl = {bucket:?}\n"));
            }
            // Owner-only: the database URL may carry a password.
            ringfence_server::tls::write_private(&config, next.as_bytes())?;
            println!("{} now names them (the previous configuration is {}).", config.display(), backup.display());
            println!("Start the nodes with `ringfence serve --config {}` (docs/SCALE-OUT.md).", config.display());
            Ok(())
        }
        Command::Backup { config, to, without_content } => {
            let loaded = ringfence_server::Config::load(&config)?;
            let m = runtime()?.block_on(ringfence_server::backup(&loaded, &to, without_content))?;
            println!(
                "Backed up to {}: database {} bytes (SHA-256 {}), log size {}, {} blobs{}, {} roles.",
                to.display(),
                m.database_bytes,
                m.database_sha256,
                m.log_size,
                m.blobs.len(),
                if m.content_included { " with their content" } else { " listed (content not copied)" },
                m.roles.len()
            );
            println!("It holds the online keys and the TLS key: keep it as safe as the server's data directory.");
            Ok(())
        }
        Command::Restore { config, from, recover_only: _, skip } => {
            init_logging();
            let loaded = ringfence_server::Config::load(&config)?;
            let done = runtime()?.block_on(ringfence_server::restore(&loaded, from.as_deref(), skip))?;
            if let Some(m) = &done.manifest {
                println!(
                    "Restored the backup of {} (log size {}); content: {} blobs present, {} put back from the backup.",
                    ringfence_trust::expiry::format(m.created_at),
                    m.log_size,
                    done.blobs_found,
                    done.blobs_restored
                );
            }
            let r = &done.recovered;
            println!(
                "The transparency log: {} entries put back from the content store; its size is {}.",
                r.log_entries, r.log_size
            );
            for (role, version) in &r.floors {
                println!("  floor {role}: versions up to {version} are never signed again");
            }
            for (role, version) in &r.signed {
                println!("  signed {role} version {version}");
            }
            for (role, version) in &r.pending {
                println!(
                    "  {role} version {version} waits for its key holders: \
                     `ringfence pending sign {role} --key … --after-restore-version {version}`"
                );
            }
            for role in &r.lost {
                println!(
                    "  LOST: {role} was made after the backup; devices that saw it refuse the repository until \
                     it is made again (docs/OPERATIONS.md)"
                );
            }
            println!("Start the server: devices go on from the versions they trust.");
            Ok(())
        }
        Command::Admin(command) => ringfence_cli::run(*command),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")
}

async fn serve(config: ringfence_server::Config) -> anyhow::Result<()> {
    let state = ringfence_server::open_state(config).await?;
    ringfence_server::serve(state, stopped(), None).await
}

/// Ctrl-C or SIGTERM (what systemd and container runtimes send): either stops the server
/// gracefully (requests in flight finish, buffered check-ins are written).
pub async fn stopped() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("stopping");
}
