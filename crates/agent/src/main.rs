//! `ringfence-agent`: the program on every managed device.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

mod fetch;
mod tuf_client;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ringfence-agent", version, about = "Ringfence device agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The agent's TUF client, for test harnesses and debugging.
    Tuf(TufArgs),
}

#[derive(Debug, clap::Args)]
struct TufArgs {
    #[arg(long)]
    metadata_dir: PathBuf,
    #[arg(long)]
    metadata_url: Option<String>,
    /// Repeatable; processed in order, stopping at the first failure.
    #[arg(long = "target-name")]
    target_names: Vec<String>,
    #[arg(long)]
    target_base_url: Option<String>,
    #[arg(long)]
    target_dir: Option<PathBuf>,
    /// CA certificate (PEM) to trust for https:// URLs.
    #[arg(long)]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    action: TufAction,
}

#[derive(Debug, Subcommand)]
enum TufAction {
    /// Trust this root (the file is checked to be a self-signed root).
    Init { root_file: PathBuf },
    /// Update the top-level metadata.
    Refresh,
    /// Refresh, then download each `--target-name`.
    Download,
}

#[allow(clippy::disallowed_methods)]
fn wall_clock() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tuf(args) => tuf(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn tuf(args: TufArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(&args.metadata_dir)?;
    let now = clock::trusted_now(&args.metadata_dir, wall_clock())?;
    if let TufAction::Init { root_file } = &args.action {
        let bytes = std::fs::read(root_file).with_context(|| format!("reading {}", root_file.display()))?;
        ringfence_trust::client::TrustedSet::new(&bytes, now).context("not a self-signed root")?;
        return tuf_client::write_atomic(&args.metadata_dir.join("root.json"), &bytes);
    }
    let ca = match &args.ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let client = tuf_client::Client {
        metadata_dir: args.metadata_dir.clone(),
        metadata_url: args.metadata_url.clone().context("--metadata-url is required")?,
        fetcher: fetch::Fetcher::new(ca.as_deref())?,
    };
    match args.action {
        TufAction::Init { .. } => Ok(()),
        TufAction::Refresh => client.refresh(now).map(|_| ()),
        TufAction::Download => {
            let base = args.target_base_url.context("--target-base-url is required")?;
            let dir = args.target_dir.context("--target-dir is required")?;
            anyhow::ensure!(!args.target_names.is_empty(), "--target-name is required");
            tuf_client::download(&client, now, &args.target_names, &base, &dir)
        }
    }
}

mod clock {
    //! A clock that never goes backwards past the newest time the agent has seen, so setting
    //! the device clock back cannot revive expired metadata.

    use std::path::Path;

    pub fn trusted_now(dir: &Path, wall: i64) -> anyhow::Result<i64> {
        let path = dir.join(".clock");
        let seen = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<i64>().ok()).unwrap_or(0);
        let now = wall.max(seen);
        if now > seen {
            crate::tuf_client::write_atomic(&path, now.to_string().as_bytes())?;
        }
        Ok(now)
    }
}
