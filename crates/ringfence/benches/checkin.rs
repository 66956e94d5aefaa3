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
use std::time::Duration;

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
        baseline.push(common::round(std::slice::from_ref(&base), &ca, &tokens, THREADS, ROUND, false));
        checkins.push(common::round(std::slice::from_ref(&base), &ca, &tokens, THREADS, ROUND, true));
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
