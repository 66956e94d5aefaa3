//! Device check-ins per second on this machine with 10k enrolled devices, against the
//! listener's unauthenticated `/healthz` as the baseline measured in the same run.
//! Run with `cargo bench -p ringfence --bench checkin`.
//!
//! The server runs in-process on loopback with TLS; clients are 16 threads, each with its
//! own keep-alive connection, each holding a real device session. Every round is bounded in
//! time (5 s) and the median of 3 rounds is reported.

// A harness, not product code: a failed step is a failed test or measurement.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ringfence_proto::device::{CheckinRequest, Inventory};

mod common;
use common::Bench;

const DEVICES: usize = 10_000;
const THREADS: usize = 16;
const ROUND: Duration = Duration::from_secs(5);
const ROUNDS: usize = 3;

fn main() {
    let bench = Bench::quickstart(|c| c.devices.max_concurrent_requests = 1024);
    // 10k accepted devices, each with a live session.
    let tokens = bench.devices_with_sessions(DEVICES, "production");
    let server = bench.serve();
    let base = format!("https://{}", server.addrs.device);
    let ca = bench.ca();
    let tokens = Arc::new(tokens);

    let mut baseline = Vec::new();
    let mut checkins = Vec::new();
    for _ in 0..ROUNDS {
        baseline.push(round(&base, &ca, &tokens, false));
        checkins.push(round(&base, &ca, &tokens, true));
    }
    baseline.sort_by(f64::total_cmp);
    checkins.sort_by(f64::total_cmp);
    let (b, c) = (baseline[ROUNDS / 2], checkins[ROUNDS / 2]);
    println!("| requests | median per second | rounds (per second) |");
    println!("|---|---|---|");
    println!("| GET /healthz (baseline) | {b:.0} | {baseline:.0?} |");
    println!("| POST /device/v1/checkin, {DEVICES} devices | {c:.0} | {checkins:.0?} |");
    println!("check-in / baseline: {:.2}", c / b);
    drop(server);
}

/// Requests per second over one bounded round.
fn round(base: &str, ca: &std::path::Path, tokens: &Arc<Vec<String>>, checkin: bool) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + ROUND;
    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = ringfence_cli::http::Client::new(base, None, ca).expect("client");
            let done = done.clone();
            let tokens = tokens.clone();
            std::thread::spawn(move || {
                let body = CheckinRequest {
                    inventory: Inventory {
                        hostname: "bench".into(),
                        os: "linux".into(),
                        os_version: "12".into(),
                        architecture: "x86_64".into(),
                        agent_version: "bench".into(),
                        installed: vec![],
                    },
                    timestamp_version: 1,
                };
                let mut i = t;
                while Instant::now() < deadline {
                    let ok = if checkin {
                        let token = &tokens[i % tokens.len()];
                        let c = client.with_token(token);
                        c.send_json("POST", "/device/v1/checkin", &body).map(|a| a.status == 200).unwrap_or(false)
                    } else {
                        client.get("/healthz").map(|a| a.status == 200).unwrap_or(false)
                    };
                    assert!(ok, "request failed");
                    done.fetch_add(1, Ordering::Relaxed);
                    i += THREADS;
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
