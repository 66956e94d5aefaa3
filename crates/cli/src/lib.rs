//! Ringfence's administrator commands: the offline ceremony (keys, root, top-level targets,
//! signing pending roles) and the admin API client (publish, approve, propose). One module
//! per command family under `commands/`; `output` prints for people (sentences, aligned
//! tables, the next step) or, with `--json`, for scripts.
//!
//! **Invariant:** before it signs anything, `pending sign` verifies what it is shown: it
//! walks the published repository from a root the operator trusts, shows the complete
//! difference from the published version, and refuses an approval whose length or hashes
//! are not the ones the publisher role signed.

pub mod ceremony;
pub mod commands;
pub mod http;
pub mod output;
pub mod review;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use commands::repository::{self, Approval};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate and inspect signing keys.
    #[command(subcommand)]
    Key(commands::keys::KeyCommand),
    /// Work on local metadata files (offline).
    #[command(subcommand)]
    Metadata(commands::metadata::MetadataCommand),
    /// Upload a file to the content store.
    Upload {
        #[command(flatten)]
        server: ServerArgs,
        file: PathBuf,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Publish an update: upload its files and post its manifest.
    Publish {
        #[command(flatten)]
        server: ServerArgs,
        /// Update manifest (JSON) without `files`; the files are added from the arguments.
        #[arg(long)]
        manifest: PathBuf,
        files: Vec<PathBuf>,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Propose an approval of a published file for a group.
    Approve {
        #[command(flatten)]
        server: ServerArgs,
        /// The update (its id) whose files to approve; or name one file with --target.
        #[arg(required_unless_present = "target", conflicts_with = "target")]
        update: Option<String>,
        #[arg(long)]
        group: String,
        /// One published path, `<publisher>/<file>`.
        #[arg(long)]
        target: Option<String>,
        /// install, uninstall or decline.
        #[arg(long, default_value = "install")]
        action: String,
        /// Install by then at the latest, `YYYY-MM-DDTHH:MM:SSZ`.
        #[arg(long)]
        deadline: Option<String>,
        /// Why (a change ticket): signed with the approval.
        #[arg(long)]
        reason: Option<String>,
        /// A rollout stage, PERCENT@TIME (e.g. 10@2026-12-01T00:00:00Z); repeat for each.
        #[arg(long = "stage")]
        stages: Vec<String>,
        #[command(flatten)]
        sign: commands::pending::SignNow,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Take a group's approval of an update (or one file) back.
    Withdraw {
        #[command(flatten)]
        server: ServerArgs,
        /// The update (its id); or name one file with --target.
        #[arg(required_unless_present = "target", conflicts_with = "target")]
        update: Option<String>,
        #[arg(long)]
        group: String,
        #[arg(long)]
        target: Option<String>,
        #[command(flatten)]
        sign: commands::pending::SignNow,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Computer groups: their parents, approvers and whether the server approves for them.
    #[command(subcommand)]
    Group(commands::groups::GroupCommand),
    /// Reports: compliance per group, CVE exposure, devices not seen.
    #[command(subcommand)]
    Report(commands::reports::ReportCommand),
    /// Automatic approval rules.
    #[command(subcommand)]
    Rule(commands::rules::RuleCommand),
    /// Rollouts the server watches and may hold back (pause, stop, halt on failures).
    #[command(subcommand)]
    Rollout(commands::rollouts::RolloutCommand),
    /// The audit trail: who changed what, newest first. With `--log URL --trusted-root FILE`:
    /// an independent audit of the server's transparency log instead.
    Audit {
        #[command(flatten)]
        server: OptionalServerArgs,
        #[command(flatten)]
        log: commands::audit_log::LogAuditArgs,
        /// Records per page (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// Records older than this sequence number (the next page).
        #[arg(long)]
        before: Option<i64>,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Remove content no approval needs (uploads never published, updates declined where
    /// they were approved) and, with --devices-not-seen-days, devices gone quiet.
    Cleanup {
        #[command(flatten)]
        server: ServerArgs,
        /// Say what would go, remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        devices_not_seen_days: Option<u32>,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Role versions waiting for signatures.
    #[command(subcommand)]
    Pending(commands::pending::PendingCommand),
    /// Admin API tokens.
    #[command(subcommand)]
    Token(commands::tokens::TokenCommand),
    /// Devices: enrollment tokens, the fleet list, accept / reject / revoke.
    #[command(subcommand)]
    Device(commands::devices::DeviceCommand),
    /// Save the published version of a role to a file (to start its next version offline).
    Fetch {
        #[command(flatten)]
        server: ServerArgs,
        role: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Propose a new version of an offline role (root, targets, ...) from a signed file.
    Propose {
        #[command(flatten)]
        server: ServerArgs,
        role: String,
        file: PathBuf,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    /// Admin API URL.
    #[arg(long, env = "RINGFENCE_ADMIN_URL", default_value = "https://127.0.0.1:8532")]
    pub server: String,
    /// API token.
    #[arg(long, env = "RINGFENCE_TOKEN", hide_env_values = true)]
    pub token: String,
    /// CA certificate (PEM) to trust for the admin listener.
    #[arg(long, env = "RINGFENCE_CA")]
    pub ca: PathBuf,
}

/// [`ServerArgs`] for a command that needs them only in one of its modes.
#[derive(Debug, clap::Args)]
pub struct OptionalServerArgs {
    /// Admin API URL.
    #[arg(long, env = "RINGFENCE_ADMIN_URL", default_value = "https://127.0.0.1:8532")]
    pub server: String,
    /// API token.
    #[arg(long, env = "RINGFENCE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust for the admin listener.
    #[arg(long, env = "RINGFENCE_CA")]
    pub ca: Option<PathBuf>,
}

impl OptionalServerArgs {
    fn required(self) -> anyhow::Result<ServerArgs> {
        Ok(ServerArgs {
            server: self.server,
            token: self.token.context("--token (or RINGFENCE_TOKEN) is required")?,
            ca: self.ca.context("--ca (or RINGFENCE_CA) is required")?,
        })
    }
}

fn client(server: &ServerArgs) -> anyhow::Result<http::Client> {
    http::Client::new(&server.server, Some(server.token.clone()), &server.ca)
}

/// Wall-clock Unix seconds: the CLI's one clock.
#[allow(clippy::disallowed_methods)]
fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Key(command) => commands::keys::run(command),
        Command::Metadata(command) => commands::metadata::run(command),
        Command::Upload { server, file, json } => repository::upload(&server, &file, json),
        Command::Publish { server, manifest, files, json } => repository::publish(&server, &manifest, &files, json),
        Command::Approve { server, update, group, target, action, deadline, reason, stages, sign, json } => {
            let approval = Approval { update, group, target, action, deadline, reason, stages };
            repository::approve(&server, approval, &sign, json)
        }
        Command::Withdraw { server, update, group, target, sign, json } => {
            repository::withdraw(&server, update, &group, target, &sign, json)
        }
        Command::Group(command) => commands::groups::run(command),
        Command::Report(command) => commands::reports::run(command),
        Command::Rule(command) => commands::rules::run(command),
        Command::Rollout(command) => commands::rollouts::run(command),
        Command::Audit { server, log, limit, before, json } => {
            if log.log.is_some() {
                // Metadata through the admin API when a token is given, else the repository.
                let source = match (&server.token, &server.ca) {
                    (Some(token), Some(ca)) => commands::audit_log::MetadataSource::Admin(http::Client::new(
                        &server.server,
                        Some(token.clone()),
                        ca,
                    )?),
                    _ => {
                        let url = log.log.as_deref().unwrap_or_default().trim_end_matches('/');
                        let ca = log.log_ca.as_ref().context("--log-ca")?;
                        commands::audit_log::MetadataSource::Repository(http::Client::new(url, None, ca)?)
                    }
                };
                return commands::audit_log::run(&log, source, json);
            }
            let server = server.required()?;
            commands::audit::run(&server, limit, before, json)
        }
        Command::Cleanup { server, dry_run, devices_not_seen_days, json } => {
            commands::cleanup::run(&server, dry_run, devices_not_seen_days, json)
        }
        Command::Pending(command) => commands::pending::run(command),
        Command::Token(command) => commands::tokens::run(command),
        Command::Device(command) => commands::devices::run(command),
        Command::Fetch { server, role, out } => repository::fetch(&server, &role, &out),
        Command::Propose { server, role, file, json } => repository::propose(&server, &role, &file, json),
    }
}
