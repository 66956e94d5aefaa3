//! `ringfence-bench`: the fleet simulator. It pre-authorises N simulated devices in bulk through
//! the admin API, opens their sessions through the device API, then drives load phases on
//! loopback, each bounded in time and count: check-ins with nothing new, check-ins that learn of
//! a new timestamp (and the refresh that follows), signed status-report batches, and content
//! downloads whole and by `Range`. Every request goes over TLS with kept-alive connections, as
//! agents do. It prints throughput, latency percentiles (p50, p99, p99.9), failures by kind,
//! the server's CPU and peak memory, and writes the same as JSON.
//!
//! Against a running server (`--admin-url`, `--device-url`, `--token`, `--ca`, and
//! `--server-pid` to watch it), or `--quickstart`: a server of its own, started from the
//! `ringfence` binary beside this one.

mod fleet;
mod load;
mod probe;
mod quickstart;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

use crate::fleet::Device;
use crate::load::{Limits, Tally};
use crate::probe::{Probe, ServerUse};

/// Longest a phase may run, in seconds.
const MAX_SECONDS: f64 = 600.0;
/// Largest fleet the simulator sets up.
const MAX_DEVICES: u64 = 10_000_000;
/// Bytes a `range` request asks for.
const RANGE_BYTES: u64 = 64 * 1024;

#[derive(Debug, Parser)]
#[command(name = "ringfence-bench", version, about = "The Ringfence fleet simulator")]
struct Args {
    /// Start a server of its own: `ringfence quickstart` in a temporary directory and
    /// `ringfence serve`, with one update approved for the group to download.
    #[arg(long)]
    quickstart: bool,
    /// The `ringfence` binary for `--quickstart` (default: the one beside this binary).
    #[arg(long)]
    ringfence: Option<PathBuf>,
    /// Size of the update `--quickstart` publishes, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    target_size: u64,
    /// Admin API of a running server.
    #[arg(long, env = "RINGFENCE_ADMIN_URL")]
    admin_url: Option<String>,
    /// Device listener of that server (`https://host:port`).
    #[arg(long)]
    device_url: Option<String>,
    /// An admin token of that server.
    #[arg(long, env = "RINGFENCE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA certificate (PEM) both listeners' certificates chain to.
    #[arg(long, env = "RINGFENCE_CA")]
    ca: Option<PathBuf>,
    /// The server's process id, to report its CPU and memory (Linux).
    #[arg(long)]
    server_pid: Option<u32>,
    /// For the download phases against a running server: the target's path under the device
    /// listener (`repo/targets/<publisher>/<sha256>.<name>`).
    #[arg(long)]
    target: Option<String>,
    /// Devices to pre-authorise (the enrolled fleet).
    #[arg(long, default_value_t = 1_000)]
    devices: u64,
    /// Devices that open sessions and send the load (default: all of them).
    #[arg(long)]
    active: Option<u64>,
    /// The group the devices join (its approvals are what the reports name).
    #[arg(long, default_value = "pilot")]
    group: String,
    /// Phases to run, in order: checkin, storm, refresh, reports, download, range. `storm` is
    /// `checkin` paced at `--storm-rate` whatever `--rate` says.
    #[arg(long, value_delimiter = ',', default_value = "checkin,refresh,reports,download,range")]
    phases: Vec<String>,
    /// Check-ins per second of the `storm` phase (default: the whole enrolled fleet within 15
    /// minutes, as after Patch Tuesday).
    #[arg(long)]
    storm_rate: Option<f64>,
    /// Write the active devices' session tokens here, one per line (for driving the same
    /// sessions with another load generator, such as wrk).
    #[arg(long)]
    sessions_out: Option<PathBuf>,
    /// Seconds per phase (at most 600).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Operations per phase at most (a phase ends at whichever of time and count comes first).
    #[arg(long)]
    requests: Option<u64>,
    /// Operations per second to aim at; latency is counted from when each was due. Without
    /// it, as fast as the connections allow.
    #[arg(long)]
    rate: Option<f64>,
    /// Concurrent kept-alive connections (one worker thread each).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Reports per batch in the `reports` phase (at most 256).
    #[arg(long, default_value_t = 16)]
    report_batch: usize,
    /// Seed of the device keys (default: a new one each run, so a server can be reused).
    #[arg(long)]
    seed: Option<u64>,
    /// Write the results as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What a run measured (the JSON written by `--json`).
#[derive(Debug, Serialize)]
struct Run {
    devices: u64,
    active: u64,
    connections: usize,
    rate: Option<f64>,
    seconds_per_phase: f64,
    cores: usize,
    setup: Setup,
    phases: Vec<Phase>,
    /// The server's largest resident set over its whole life (VmHWM), MiB.
    server_peak_rss_mib: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Setup {
    preauthorized: u64,
    preauthorize_seconds: f64,
    preauthorized_per_second: f64,
    sessions: Phase,
}

#[derive(Debug, Serialize)]
struct Phase {
    name: String,
    /// The pace aimed at (operations per second); none: as fast as possible.
    target_rate: Option<f64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    seconds: f64,
    per_second: f64,
    latency_ms: Latency,
    bytes: u64,
    mib_per_second: f64,
    server: Option<ServerUse>,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    max: Option<f64>,
}

impl Phase {
    fn from(name: &str, target_rate: Option<f64>, t: Tally) -> Phase {
        let q = |x| load::quantile_ms(&t.latencies_us, x);
        let seconds = t.seconds.max(1e-9);
        Phase {
            name: name.to_owned(),
            target_rate,
            ok: t.ok,
            per_second: t.ok as f64 / seconds,
            latency_ms: Latency { p50: q(0.5), p90: q(0.9), p99: q(0.99), p999: q(0.999), max: q(1.0) },
            mib_per_second: t.bytes as f64 / seconds / (1024.0 * 1024.0),
            bytes: t.bytes,
            errors: t.errors,
            seconds: t.seconds,
            server: t.server,
        }
    }
}

/// A ureq agent trusting only the CA in `ca` (one kept-alive connection per agent in use).
pub fn connect(ca: &Path) -> anyhow::Result<ureq::Agent> {
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let config = ureq::Agent::config_builder()
        .tls_config(ringfence_client_net::pinned_tls(&pem)?)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build();
    Ok(config.into())
}

/// Where the server is and how to reach it.
struct Target {
    admin_url: String,
    device_url: String,
    token: String,
    ca: PathBuf,
    probe: Option<Probe>,
    /// `repo/targets/...` and size, for the download phases.
    content: Option<(String, u64)>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("ringfence-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.seconds > 0.0 && args.seconds <= MAX_SECONDS, "--seconds: more than 0, at most 600");
    anyhow::ensure!(args.devices >= 1 && args.devices <= MAX_DEVICES, "--devices: 1 to 10,000,000");
    anyhow::ensure!((1..=1024).contains(&args.connections), "--connections: 1 to 1024");
    anyhow::ensure!((1..=256).contains(&args.report_batch), "--report-batch: 1 to 256");
    anyhow::ensure!(args.rate.is_none_or(|r| r > 0.0), "--rate: more than 0");
    for p in &args.phases {
        anyhow::ensure!(
            ["checkin", "storm", "refresh", "reports", "download", "range"].contains(&p.as_str()),
            "--phases: checkin, storm, refresh, reports, download or range, not {p}"
        );
    }
    let group = ringfence_proto::GroupName::parse(&args.group)?;
    let active = args.active.unwrap_or(args.devices).min(args.devices);

    // Keep the quickstart server alive until the end of the run.
    let mut own_server = None;
    let mut target = if args.quickstart {
        let ringfence = match &args.ringfence {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("ringfence"),
        };
        eprintln!("starting a quickstart server ({})", ringfence.display());
        let server = quickstart::start(&ringfence, &args.group, args.target_size)?;
        let target = Target {
            admin_url: server.admin_url.clone(),
            device_url: server.device_url.clone(),
            token: server.token.clone(),
            ca: server.ca.clone(),
            probe: Probe::new(server.pid()),
            content: Some(server.target.clone()),
        };
        own_server = Some(server);
        target
    } else {
        let need = |v: &Option<String>, flag: &str| v.clone().with_context(|| format!("{flag} (or --quickstart)"));
        let ca = args.ca.clone().context("--ca (or --quickstart)")?;
        let device_url = need(&args.device_url, "--device-url")?.trim_end_matches('/').to_owned();
        // The size is asked for once a device has a session.
        let content = args.target.as_ref().map(|path| (path.trim_start_matches('/').to_owned(), 0));
        Target {
            admin_url: need(&args.admin_url, "--admin-url")?.trim_end_matches('/').to_owned(),
            device_url,
            token: need(&args.token, "--token")?,
            ca,
            probe: args.server_pid.and_then(Probe::new),
            content,
        }
    };
    let seed = args.seed.unwrap_or_else(|| u64::from(std::process::id()) << 32 ^ clock_seconds() as u64);

    // Set up: keys, bulk pre-authorisation, sessions for the active devices.
    eprintln!("pre-authorising {} devices in {}", args.devices, args.group);
    let keys = fleet::keys(seed, args.devices);
    let started = Instant::now();
    let devices = fleet::preauthorize(&connect(&target.ca)?, &target.admin_url, &target.token, &group, keys)?;
    let preauthorize_seconds = started.elapsed().as_secs_f64();
    eprintln!("opening sessions for {active} devices");
    let setup_limits = Limits { seconds: MAX_SECONDS, count: Some(active), rate: None, connections: args.connections };
    let sessions = load::run(
        "sessions",
        setup_limits,
        target.probe.as_ref(),
        || connect(&target.ca),
        |agent, k| {
            let device = devices.get(k as usize).ok_or("no such device")?;
            fleet::open_session(agent, &target.device_url, device)
        },
    )?;
    let sessions = Phase::from("sessions", None, sessions);
    let ready: Vec<&Device> = devices.iter().filter(|d| d.session.get().is_some()).collect();
    let some_session = ready
        .first()
        .and_then(|d| d.session.get())
        .with_context(|| format!("no device could open a session: {:?}", sessions.errors))?;
    if let Some(path) = &args.sessions_out {
        let lines: String = ready.iter().filter_map(|d| d.session.get()).map(|t| format!("{t}\n")).collect();
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some((path, size)) = target.content.as_mut()
        && *size == 0
    {
        *size = target_size(&target.ca, &target.device_url, path, some_session)?;
    }

    let mut phases = Vec::new();
    let limits = Limits { seconds: args.seconds, count: args.requests, rate: args.rate, connections: args.connections };
    let storm_rate = args.storm_rate.unwrap_or(args.devices as f64 / 900.0);
    anyhow::ensure!(storm_rate > 0.0, "--storm-rate: more than 0");
    let now = clock_seconds();
    let report_target = format!("approvals/{}/acme/bench.bin", args.group);
    for name in &args.phases {
        let current = current_timestamp(&target, some_session)?;
        let nth = |k: u64| -> Result<(u64, &Device), String> {
            let i = k % ready.len() as u64;
            ready.get(i as usize).map(|d| (i, *d)).ok_or_else(|| "no such device".to_owned())
        };
        let url = target.device_url.as_str();
        let content = target.content.as_ref();
        if matches!(name.as_str(), "download" | "range") && content.is_none() {
            eprintln!("skipping {name}: no --target (or --quickstart)");
            continue;
        }
        let op = |agent: &ureq::Agent, k: u64| -> load::Outcome {
            match name.as_str() {
                "checkin" | "storm" => {
                    let (i, d) = nth(k)?;
                    let answer = fleet::check_in(agent, url, d, i, current)?;
                    if answer.changed { Err("change announced".into()) } else { Ok(0) }
                }
                "refresh" => {
                    let (i, d) = nth(k)?;
                    fleet::refresh(agent, url, d, i, current)
                }
                "reports" => {
                    let (_, d) = nth(k)?;
                    fleet::report(agent, url, d, k, args.report_batch, &report_target, now)
                }
                "download" => {
                    let ((path, _), (_, d)) = (content.ok_or("no target")?, nth(k)?);
                    fleet::download(agent, url, d, path)
                }
                _ => {
                    let ((path, size), (_, d)) = (content.ok_or("no target")?, nth(k)?);
                    fleet::download_range(agent, url, d, (path, *size), k, RANGE_BYTES)
                }
            }
        };
        let limits = if name == "storm" { Limits { rate: Some(storm_rate), ..limits } } else { limits };
        let tally = load::run(name, limits, target.probe.as_ref(), || connect(&target.ca), op)?;
        let phase = Phase::from(name, limits.rate, tally);
        eprintln!("{}", row(&phase));
        phases.push(phase);
    }

    let run = Run {
        devices: args.devices,
        active: ready.len() as u64,
        connections: args.connections,
        rate: args.rate,
        seconds_per_phase: args.seconds,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        setup: Setup {
            preauthorized: devices.len() as u64,
            preauthorize_seconds,
            preauthorized_per_second: devices.len() as f64 / preauthorize_seconds.max(1e-9),
            sessions,
        },
        phases,
        server_peak_rss_mib: target.probe.as_ref().and_then(Probe::peak_rss_kib).map(|k| k as f64 / 1024.0),
    };
    print_tables(&run);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&run)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    drop(own_server);
    Ok(())
}

/// Unix seconds now (the report timestamps, a default seed).
#[allow(clippy::disallowed_methods)] // the simulator's outermost layer reads the clock
fn clock_seconds() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The timestamp version the server serves now.
fn current_timestamp(target: &Target, session: &str) -> anyhow::Result<u64> {
    let url = format!("{}/repo/metadata/timestamp.json", target.device_url);
    let mut answer = connect(&target.ca)?.get(url).header("authorization", format!("Bearer {session}")).call()?;
    anyhow::ensure!(answer.status() == 200, "timestamp.json: the server answered {}", answer.status());
    let value: serde_json::Value = serde_json::from_slice(&answer.body_mut().read_to_vec()?)?;
    value.get("signed").and_then(|s| s.get("version")).and_then(serde_json::Value::as_u64).context("timestamp version")
}

/// A target's size, from the answer to a one-byte range request.
fn target_size(ca: &Path, device_url: &str, path: &str, session: &str) -> anyhow::Result<u64> {
    let url = format!("{device_url}/{}", path.trim_start_matches('/'));
    let request = connect(ca)?.get(&url).header("authorization", format!("Bearer {session}"));
    let answer = request.header("range", "bytes=0-0").call()?;
    anyhow::ensure!(answer.status() == 206, "{url}: the server answered {} to a range request", answer.status());
    let range = answer.headers().get("content-range").and_then(|v| v.to_str().ok()).context("no Content-Range")?;
    range.rsplit_once('/').and_then(|(_, total)| total.parse().ok()).context("a Content-Range without a size")
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

fn row(p: &Phase) -> String {
    let errors = if p.errors.is_empty() {
        "0".to_owned()
    } else {
        p.errors.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
    };
    let server = p.server.map_or("- | -".into(), |s| format!("{:.2} | {:.0}", s.cpu_cores, s.rss_peak_mib));
    let throughput = if p.bytes > 0 { format!("{:.0}", p.mib_per_second) } else { "-".into() };
    format!(
        "| {} | {} | {errors} | {:.0} | {} | {} | {} | {} | {throughput} | {server} |",
        p.name,
        p.ok,
        p.per_second,
        ms(p.latency_ms.p50),
        ms(p.latency_ms.p99),
        ms(p.latency_ms.p999),
        ms(p.latency_ms.max)
    )
}

fn print_tables(run: &Run) {
    let pace = run.rate.map_or("as fast as possible".to_owned(), |r| format!("{r:.0} per second"));
    println!(
        "{} devices enrolled, {} with sessions; {} connections, {pace}, {} s per phase; {} cores",
        run.devices, run.active, run.connections, run.seconds_per_phase, run.cores
    );
    println!(
        "pre-authorised {} devices in {:.1} s ({:.0} per second)",
        run.setup.preauthorized, run.setup.preauthorize_seconds, run.setup.preauthorized_per_second
    );
    println!();
    println!(
        "| phase | ok | failed | per second | p50 ms | p99 ms | p99.9 ms | max ms | MiB/s | server CPU (cores) | server RSS peak (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!("{}", row(&run.setup.sessions));
    for p in &run.phases {
        println!("{}", row(p));
    }
    if let Some(peak) = run.server_peak_rss_mib {
        println!();
        println!("server peak resident memory over its life: {peak:.0} MiB");
    }
}
