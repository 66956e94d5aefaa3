//! The load driver: worker threads, each on its own kept-alive TLS connection, running one
//! operation after another until a time limit or a count is reached, paced to a target rate or
//! as fast as they can. Latency is recorded per operation; failures are counted by kind.
//!
//! With a target rate, operation `k` is due at `start + k / rate` and its latency is counted
//! from when it was due, not from when a worker got to it: a server that falls behind shows as
//! latency, not as a quietly lower rate (no "coordinated omission").

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::probe::{Probe, ServerUse};

/// Latencies kept per worker at most (4 bytes each); later operations still count.
const MAX_SAMPLES_PER_WORKER: usize = 8_000_000;

/// How long and how hard one phase runs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub seconds: f64,
    /// Stop after this many operations (whichever of time and count comes first).
    pub count: Option<u64>,
    /// Operations per second to aim at; `None`: as fast as the workers can.
    pub rate: Option<f64>,
    pub connections: usize,
}

/// What one operation did: bytes received, or the kind of failure.
pub type Outcome = Result<u64, String>;

/// What a phase did.
pub struct Tally {
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Microseconds, one per successful operation (up to the per-worker bound).
    pub latencies_us: Vec<u32>,
    pub bytes: u64,
    pub seconds: f64,
    pub server: Option<ServerUse>,
}

struct Worker {
    ok: u64,
    errors: BTreeMap<String, u64>,
    latencies_us: Vec<u32>,
    bytes: u64,
}

/// Run `op(agent, k)` for k = 0, 1, 2, … on `limits.connections` workers, each with the agent
/// `connect()` made for it, within `limits`; `probe` watches the server meanwhile.
pub fn run<C, F>(name: &str, limits: Limits, probe: Option<&Probe>, connect: C, op: F) -> anyhow::Result<Tally>
where
    C: Fn() -> anyhow::Result<ureq::Agent> + Sync,
    F: Fn(&ureq::Agent, u64) -> Outcome + Sync,
{
    let agents = (0..limits.connections.max(1)).map(|_| connect()).collect::<anyhow::Result<Vec<_>>>()?;
    let next = AtomicU64::new(0);
    let ok_so_far = AtomicU64::new(0);
    let failed_so_far = AtomicU64::new(0);
    let finished = AtomicBool::new(false);
    let length = Duration::from_secs_f64(limits.seconds.max(0.0));
    let cpu_before = probe.map(Probe::cpu_seconds);
    let peak_rss = Mutex::new(0u64);
    let start = Instant::now();
    let deadline = start + length;
    let workers: Vec<Worker> = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            watch(name, limits, start, probe, &finished, &ok_so_far, &failed_so_far, &peak_rss);
        });
        let handles: Vec<_> = agents
            .iter()
            .map(|agent| {
                let (next, ok_so_far, failed_so_far, op) = (&next, &ok_so_far, &failed_so_far, &op);
                scope.spawn(move || {
                    let mut w = Worker { ok: 0, errors: BTreeMap::new(), latencies_us: Vec::new(), bytes: 0 };
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if limits.count.is_some_and(|c| k >= c) {
                            break;
                        }
                        let due = match limits.rate {
                            Some(rate) if rate > 0.0 => start + Duration::from_secs_f64(k as f64 / rate),
                            _ => Instant::now(),
                        };
                        if due >= deadline || Instant::now() >= deadline {
                            break;
                        }
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        match op(agent, k) {
                            Ok(bytes) => {
                                let took = due.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                                if w.latencies_us.len() < MAX_SAMPLES_PER_WORKER {
                                    w.latencies_us.push(took);
                                }
                                w.ok += 1;
                                w.bytes += bytes;
                                ok_so_far.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(kind) => {
                                *w.errors.entry(kind).or_default() += 1;
                                failed_so_far.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    w
                })
            })
            .collect();
        let workers = handles.into_iter().filter_map(|h| h.join().ok()).collect();
        finished.store(true, Ordering::Relaxed);
        let _ = watcher.join();
        workers
    });
    let seconds = start.elapsed().as_secs_f64();
    anyhow::ensure!(workers.len() == agents.len(), "a worker of phase {name} panicked");
    let server = match (probe, cpu_before) {
        (Some(p), Some(before)) => Some(ServerUse {
            cpu_cores: (p.cpu_seconds() - before) / seconds.max(1e-9),
            rss_peak_mib: *peak_rss.lock().unwrap_or_else(|e| e.into_inner()) as f64 / 1024.0,
            rss_end_mib: p.rss_kib().unwrap_or(0) as f64 / 1024.0,
        }),
        _ => None,
    };
    let mut tally = Tally { ok: 0, errors: BTreeMap::new(), latencies_us: Vec::new(), bytes: 0, seconds, server };
    for w in workers {
        tally.ok += w.ok;
        tally.bytes += w.bytes;
        tally.latencies_us.extend(w.latencies_us);
        for (kind, n) in w.errors {
            *tally.errors.entry(kind).or_default() += n;
        }
    }
    tally.latencies_us.sort_unstable();
    Ok(tally)
}

/// Until `finished`: sample the server's memory every 100 ms and, on a terminal, redraw a
/// progress line on standard error.
#[allow(clippy::too_many_arguments)]
fn watch(
    name: &str,
    limits: Limits,
    start: Instant,
    probe: Option<&Probe>,
    finished: &AtomicBool,
    ok: &AtomicU64,
    failed: &AtomicU64,
    peak_rss: &Mutex<u64>,
) {
    let shown = std::io::stderr().is_terminal();
    let mut tick = 0u64;
    while !finished.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(rss) = probe.and_then(Probe::rss_kib) {
            let mut peak = peak_rss.lock().unwrap_or_else(|e| e.into_inner());
            *peak = (*peak).max(rss);
        }
        tick += 1;
        if shown && tick.is_multiple_of(3) {
            let elapsed = start.elapsed().as_secs_f64();
            let by_time = elapsed / limits.seconds.max(1e-9);
            let done = ok.load(Ordering::Relaxed);
            let by_count = limits.count.map_or(0.0, |c| done as f64 / c.max(1) as f64);
            let fraction = by_time.max(by_count).min(1.0);
            let filled = (fraction * 30.0) as usize;
            eprint!(
                "\r{name:<10} [{}{}] {elapsed:>6.1} s  {done} ok  {} failed  {:.0}/s   ",
                "#".repeat(filled),
                "-".repeat(30 - filled.min(30)),
                failed.load(Ordering::Relaxed),
                done as f64 / elapsed.max(1e-9)
            );
        }
    }
    if shown {
        eprint!("\r{}\r", " ".repeat(90));
    }
}

/// The latency at quantile `q` (0..=1) of sorted samples, in milliseconds (nearest rank).
pub fn quantile_ms(sorted_us: &[u32], q: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us.get(rank - 1).map(|us| f64::from(*us) / 1000.0)
}

/// A short name for what went wrong with a request (the table's error columns).
pub fn error_kind(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => "timeout".into(),
        ureq::Error::Io(io) => format!("io {:?}", io.kind()),
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => "connect".into(),
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => "tls".into(),
        ureq::Error::Protocol(_) => "protocol".into(),
        ureq::Error::BodyExceedsLimit(_) => "body too large".into(),
        _ => "other".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let samples: Vec<u32> = (1..=1000).map(|ms| ms * 1000).collect();
        assert_eq!(quantile_ms(&samples, 0.5), Some(500.0));
        assert_eq!(quantile_ms(&samples, 0.99), Some(990.0));
        assert_eq!(quantile_ms(&samples, 0.999), Some(999.0));
        assert_eq!(quantile_ms(&samples, 1.0), Some(1000.0));
        assert_eq!(quantile_ms(&[7000], 0.999), Some(7.0));
        assert_eq!(quantile_ms(&[], 0.5), None);
    }

    #[test]
    fn a_phase_stops_at_its_count_and_counts_failures_by_kind() {
        let limits = Limits { seconds: 30.0, count: Some(100), rate: None, connections: 4 };
        let connect = || Ok(ureq::Agent::new_with_defaults());
        let tally =
            run("t", limits, None, connect, |_, k| if k % 10 == 0 { Err("odd".into()) } else { Ok(3) }).unwrap();
        assert_eq!(tally.ok, 90);
        assert_eq!(tally.errors.get("odd"), Some(&10));
        assert_eq!(tally.bytes, 270);
        assert_eq!(tally.latencies_us.len(), 90);
        assert!(tally.seconds < 30.0, "stopped by count, not by time");
    }

    #[test]
    fn a_paced_phase_stops_at_its_deadline() {
        // 20 per second for 0.5 s: operations 0 to 9 fall due before the deadline, never the
        // 1,000 the count allows.
        let limits = Limits { seconds: 0.5, count: Some(1000), rate: Some(20.0), connections: 2 };
        let tally = run("t", limits, None, || Ok(ureq::Agent::new_with_defaults()), |_, _| Ok(0)).unwrap();
        assert!((1..=10).contains(&tally.ok), "{}", tally.ok);
    }
}
