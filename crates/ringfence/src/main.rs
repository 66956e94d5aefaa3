//! The `ringfence` binary: the server (`serve`, `quickstart`) and the administrator commands.

mod quickstart;
mod setup;

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
    #[command(flatten)]
    Admin(Box<ringfence_cli::Command>),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RINGFENCE_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Quickstart(options) => {
            init_logging();
            runtime()?.block_on(quickstart::run(options))
        }
        Command::Init(options) => {
            let done = setup::init(&options)?;
            setup::print_init(&done);
            Ok(())
        }
        Command::Import(options) => {
            let root = std::fs::read(&options.root).with_context(|| format!("reading {}", options.root.display()))?;
            let targets =
                std::fs::read(&options.targets).with_context(|| format!("reading {}", options.targets.display()))?;
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
        Command::Admin(command) => ringfence_cli::run(*command),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")
}

async fn serve(config: ringfence_server::Config) -> anyhow::Result<()> {
    let state = ringfence_server::open_state(config).await?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    ringfence_server::serve(state, shutdown, None).await
}
