//! `ringfence-agent`: the program on every managed device.

mod cycle;
mod fetch;
mod log;
mod modules;
mod platform;
mod state;
mod tuf_client;

use std::io::Write;
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
    /// Pin the server and its root, make this device's key, and enroll.
    Enroll {
        #[command(flatten)]
        state: StateArgs,
        /// Device listener URL, e.g. https://updates.example:8531
        #[arg(long)]
        server: String,
        /// Enrollment token; without one the device waits for an administrator.
        #[arg(long, env = "RINGFENCE_ENROLLMENT_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// CA certificate (PEM) of the server's TLS certificate.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// SHA-256 of the repository's 1.root.json, from the administrator.
        #[arg(long)]
        root_sha256: String,
        /// Groups this device follows: decided here, on the device. With a token, they must be
        /// among the token's groups.
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
        /// Where the server may send this device for update content (its S3 bucket's endpoint,
        /// `https://host[:port]`); repeat for several. Without one, redirected downloads are
        /// not followed. The bytes are checked against the signed hashes wherever they come from.
        #[arg(long = "content-origin")]
        content_origins: Vec<String>,
    },
    /// One cycle, then exit: 0 up to date, 1 error, 2 enrollment pending, 3 something was
    /// refused or failed, 4 server busy.
    Check {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Run in the foreground (under systemd, or in a console): a cycle every poll interval,
    /// with jitter and backoff.
    Run {
        #[command(flatten)]
        state: StateArgs,
    },
    /// The Windows service (`RingfenceAgent`): install, uninstall, or run under the Service
    /// Control Manager.
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// What this device holds and why.
    Status {
        #[command(flatten)]
        state: StateArgs,
    },
    /// The agent's TUF client, for test harnesses and debugging.
    Tuf(TufArgs),
}

#[derive(Debug, clap::Args)]
struct StateArgs {
    /// Default: /var/lib/ringfence-agent on Linux, %ProgramData%\Ringfence on Windows.
    #[arg(long, env = "RINGFENCE_AGENT_STATE", default_value_os_t = platform::default_state_dir())]
    state_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum ServiceAction {
    /// Register the service (automatic start, LocalSystem, restarted after a failure); it runs
    /// `service run` with this state directory. Start it with `sc start RingfenceAgent`.
    Install {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Stop and remove the service. The state directory (key, trusted metadata) stays.
    Uninstall,
    /// What the Service Control Manager starts: `run`'s cycles until the service is stopped.
    Run {
        #[command(flatten)]
        state: StateArgs,
    },
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
pub(crate) fn wall_clock() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tuf(args) => tuf(args).map(|()| ExitCode::SUCCESS),
        Command::Enroll { state, server, token, ca, root_sha256, groups, content_origins } => (|| {
            let state = state::StateDir::open(&state.state_dir)?;
            let groups = groups.iter().map(|g| ringfence_proto::GroupName::parse(g)).collect::<Result<Vec<_>, _>>()?;
            let enrolled = cycle::enroll(&state, &server, token, ca.as_deref(), &root_sha256, groups, content_origins)?;
            let config = state.config()?;
            let state_word = match enrolled {
                ringfence_proto::device::EnrollState::Accepted => "accepted",
                ringfence_proto::device::EnrollState::Pending => "pending: an administrator must accept it",
            };
            let groups: Vec<&str> = config.groups.iter().map(|g| g.as_str()).collect();
            println!("enrolled as {} ({state_word}), following groups {}", config.device_id, groups.join(", "));
            Ok(ExitCode::SUCCESS)
        })(),
        Command::Check { state } => (|| {
            let state = state::StateDir::open(&state.state_dir)?;
            let connection = cycle::fetcher(&state)?;
            let result = cycle::check(
                &state,
                clock::trusted_now(&state.root, &state.metadata_dir(), wall_clock())?,
                &connection,
            )?;
            let summary = result.to_string();
            state.save_last_cycle(&summary)?;
            println!("{summary}");
            Ok(ExitCode::from(match result {
                cycle::CycleResult::UpToDate { .. } => 0,
                cycle::CycleResult::Pending => 2,
                cycle::CycleResult::Problems(_) => 3,
                cycle::CycleResult::Busy(_) => 4,
            }))
        })(),
        Command::Run { state } => run(&state.state_dir, &|wait| {
            std::thread::sleep(wait);
            false
        })
        .map(|()| ExitCode::SUCCESS),
        Command::Service { action } => match action {
            ServiceAction::Install { state } => (|| {
                state::StateDir::open(&state.state_dir)?;
                platform::service::install(&state.state_dir)?;
                println!("service RingfenceAgent installed (state in {})", state.state_dir.display());
                Ok(ExitCode::SUCCESS)
            })(),
            ServiceAction::Uninstall => platform::service::uninstall().map(|()| {
                println!("service RingfenceAgent removed");
                ExitCode::SUCCESS
            }),
            ServiceAction::Run { state } => {
                let _ = SERVICE_LOG.set(state.state_dir.join("service.log"));
                platform::service::run(&state.state_dir, run).map(|()| ExitCode::SUCCESS)
            }
        },
        Command::Status { state } => (|| {
            let state = state::StateDir::open(&state.state_dir)?;
            let config = state.config()?;
            let groups: Vec<&str> = config.groups.iter().map(|g| g.as_str()).collect();
            println!("device {} at {}, groups {}", config.device_id, config.server, groups.join(", "));
            let access = platform::access_of(&state.root).unwrap_or_else(|e| format!("unknown ({e})"));
            println!("state {} ({access})", state.root.display());
            // For checking this device's reports on the server: `ringfence device evidence --device-key`.
            println!("device key {}", state.device_key()?.public().to_tuf().keyval.public);
            for (path, i) in state.installed() {
                println!("  {path}: {} ({}, sha256 {})", i.state, i.update_id, i.sha256);
            }
            println!("queued reports: {}", state.queued_reports().len());
            println!("last cycle: {}", state.last_cycle().unwrap_or_else(|| "none yet".into()));
            println!("transparency log checkpoint: {}", log::describe(&state.root));
            Ok(ExitCode::SUCCESS)
        })(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A line on standard error, or for a Windows service in its log file: a service's standard
/// error is nothing at all (Windows) or whatever its manager inherited (Wine), and writing to it
/// must never stop the agent.
pub(crate) fn say(line: &str) {
    let Some(path) = SERVICE_LOG.get() else {
        let _ = writeln!(std::io::stderr(), "{line}");
        return;
    };
    // Only into the state directory once it was made private (before that, a planted link
    // could lead the service elsewhere), only into a plain file, and kept short: past 1 MiB the
    // log moves to service.log.1 and starts afresh.
    if !SERVICE_LOG_READY.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => return,
        Ok(m) if m.len() > 1 << 20 => {
            let _ = std::fs::rename(path, path.with_extension("log.1"));
        }
        _ => {}
    }
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(file, "{} {line}", ringfence_trust::expiry::format(wall_clock()));
    }
}

/// Where a Windows service's lines go (`<state>\service.log`): it has no console. Written
/// only once `run` has made the state directory private.
static SERVICE_LOG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
static SERVICE_LOG_READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How often a service that is not enrolled yet looks for its enrollment.
const ENROLLMENT_POLL_SECONDS: u64 = 5;

/// The service loop: poll interval with ±20% jitter, exponential backoff on errors,
/// `Retry-After` when the server sheds load. `wait` sleeps between cycles and says whether to
/// stop (a Windows service being stopped); the cycle in progress always finishes first.
fn run(state_dir: &std::path::Path, wait: &dyn Fn(std::time::Duration) -> bool) -> anyhow::Result<()> {
    let state = state::StateDir::open(state_dir)?;
    SERVICE_LOG_READY.store(true, std::sync::atomic::Ordering::SeqCst);
    say(&format!("agent {} started, state in {}", env!("CARGO_PKG_VERSION"), state.root.display()));
    // Installed before it was enrolled (a package deployed first, enrolled after): look for the
    // enrollment every few seconds, without backoff, and only then read the pinned CA.
    let mut said = false;
    while state.config().is_err() {
        if !said {
            say("not enrolled yet: waiting for `ringfence-agent enroll`");
            said = true;
        }
        if wait(std::time::Duration::from_secs(ENROLLMENT_POLL_SECONDS)) {
            return Ok(());
        }
    }
    if said {
        say("enrolled: cycles start");
    }
    let connection = cycle::fetcher(&state)?;
    let mut failures: u32 = 0;
    loop {
        let now = clock::trusted_now(&state.root, &state.metadata_dir(), wall_clock())?;
        // Bounded whatever the server says: it can slow the agent down, not stop it.
        let poll = state.config().map(|c| c.poll_seconds).unwrap_or(300).clamp(10, 86_400);
        let seconds = match cycle::check(&state, now, &connection) {
            Ok(cycle::CycleResult::Busy(after)) => after.clamp(1, 3600),
            Ok(result) => {
                failures = 0;
                state.save_last_cycle(&result.to_string())?;
                jitter(poll)
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                state.save_last_cycle(&format!("error: {e:#}"))?;
                say(&format!("cycle failed: {e:#}"));
                jitter(poll.min(60).saturating_mul(1 << failures.min(6)).min(3600))
            }
        };
        // Upgraded (by a package, possibly installed by this very agent): end here, and the
        // service manager starts the new program (the unit restarts it always).
        if platform::program_replaced() {
            say("the agent's program was replaced (an upgrade): exiting for the new one to start");
            return Ok(());
        }
        if wait(std::time::Duration::from_secs(seconds)) {
            return Ok(());
        }
    }
}

fn jitter(seconds: u64) -> u64 {
    let spread = seconds / 5;
    if spread == 0 {
        return seconds;
    }
    let r = rand_core::RngCore::next_u64(&mut rand_core::OsRng) % (2 * spread + 1);
    seconds - spread + r
}

fn tuf(args: TufArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(&args.metadata_dir)?;
    let now = clock::trusted_now(&args.metadata_dir, &args.metadata_dir, wall_clock())?;
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
        log: None,
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
    //! A clock that never goes back past the newest time the agent may trust, so setting the
    //! device clock back cannot revive expired metadata.

    use std::path::Path;

    use ringfence_proto::tuf::Timestamp;

    /// `max(wall clock, remembered time)`. The time remembered never passes the expiry of the
    /// trusted timestamp: a wall clock that jumped far ahead (a forged NTP answer, say) is not
    /// remembered beyond what verified metadata vouches for, so it cannot freeze the device
    /// once the clock is corrected.
    pub fn trusted_now(clock_dir: &Path, metadata_dir: &Path, wall: i64) -> anyhow::Result<i64> {
        let path = clock_dir.join(".clock");
        let seen = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<i64>().ok()).unwrap_or(0);
        let now = wall.max(seen);
        let cap = std::fs::read(metadata_dir.join("timestamp.json"))
            .ok()
            .and_then(|b| {
                ringfence_trust::Envelope::<Timestamp>::parse(&b, ringfence_proto::limits::MAX_TIMESTAMP_BYTES as usize)
                    .ok()
            })
            .and_then(|t| ringfence_trust::expiry::parse(&t.signed.expires).ok())
            .map(|expires| expires - 1);
        let remember = cap.map_or(seen, |cap| now.min(cap));
        if remember > seen {
            crate::tuf_client::write_atomic(&path, remember.to_string().as_bytes())?;
        }
        Ok(now)
    }
}

#[cfg(test)]
mod tests {
    use super::clock::trusted_now;

    fn timestamp_expiring(dir: &std::path::Path, expires: i64) {
        let ts = ringfence_trust::writer::timestamp(1, expires, 1, b"snapshot");
        let env = ringfence_trust::Envelope::new(ts).unwrap();
        std::fs::write(dir.join("timestamp.json"), env.to_bytes().unwrap()).unwrap();
    }

    #[test]
    fn the_clock_never_goes_back_and_never_remembers_past_trusted_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let expires = 2_000_000_000;
        // Nothing trusted yet: nothing remembered.
        assert_eq!(trusted_now(d, d, 100).unwrap(), 100);
        assert_eq!(trusted_now(d, d, 50).unwrap(), 50);
        timestamp_expiring(d, expires);
        assert_eq!(trusted_now(d, d, expires - 500).unwrap(), expires - 500);
        // Set back: the remembered time wins, so older metadata stays expired.
        assert_eq!(trusted_now(d, d, expires - 10_000).unwrap(), expires - 500);
        // A jump far ahead is used now but remembered only up to the trusted expiry...
        assert_eq!(trusted_now(d, d, expires + 1_000_000).unwrap(), expires + 1_000_000);
        // ...so once the clock is corrected, the trusted timestamp is still fresh.
        assert_eq!(trusted_now(d, d, expires - 400).unwrap(), expires - 1);
    }
}
