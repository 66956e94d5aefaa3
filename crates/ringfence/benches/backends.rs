//! The embedded default against PostgreSQL, and one node against three, on this machine and in
//! one run. Needs a PostgreSQL server: `scripts/postgres` starts a throwaway one.
//!
//! ```sh
//! eval "$(scripts/postgres start)"
//! cargo bench -p ringfence --bench backends
//! scripts/postgres stop "$RINGFENCE_TEST_PGDIR"
//! ```
//!
//! 1. Publish: 21 updates of one file each through `Repository::publish_update` (validate,
//!    record, re-sign a bin, snapshot and timestamp, write them in one transaction, under the
//!    repository's lock: on PostgreSQL a database lock every node shares), on a quickstart
//!    repository with the publisher's key online; median, min and max.
//! 2. Check-ins: 2,000 accepted devices with sessions; 16 client threads on kept-alive
//!    connections post check-ins for 5 s, 3 rounds, median; the clients spread over the nodes
//!    in turn. Baseline: the same run against SQLite on one node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

// Each bench uses a part of what the benches share.
#[allow(dead_code)]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Bench;
use ringfence_proto::api::UpdateFile;

const SAMPLES: usize = 21;
const DEVICES: usize = 2_000;
const THREADS: usize = 16;
const ROUND: Duration = Duration::from_secs(5);
const ROUNDS: usize = 3;

fn main() {
    let server =
        std::env::var("RINGFENCE_TEST_POSTGRES").expect("RINGFENCE_TEST_POSTGRES: eval \"$(scripts/postgres start)\"");
    println!("| backend | nodes | publish median (ms) | min | max | check-ins per second (median) | rounds |");
    println!("|---|---|---|---|---|---|---|");
    let mut baseline = None;
    for (backend, nodes) in [("SQLite", 1), ("PostgreSQL", 1), ("PostgreSQL", 3)] {
        let mut args: Vec<String> = Vec::new();
        if backend == "PostgreSQL" {
            let name = format!("bench_{}_{nodes}", std::process::id());
            let psql = |sql: &str| {
                let out = std::process::Command::new("psql")
                    .args(["-X", "-q", &format!("{server}/postgres"), "-c", sql])
                    .output()
                    .expect("psql");
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            };
            psql(&format!("DROP DATABASE IF EXISTS {name}"));
            psql(&format!("CREATE DATABASE {name}"));
            args = vec!["--database".into(), format!("{server}/{name}")];
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let roomy = |c: &mut ringfence_server::Config| c.devices.max_concurrent_requests = 1024;
        let bench = Bench::quickstart_with(&args, roomy);
        let keys = bench.data.parent().unwrap().join("ringfence-keys");
        std::fs::copy(keys.join("publisher-acme.key"), bench.data.join("online-keys/publisher-acme.key")).unwrap();
        // The state was opened before the key was there: a node opened now signs with it.
        let (state, first) = bench.another_node(roomy);
        let (median, min, max) = publish(&bench, &state);
        let tokens = Arc::new(bench.devices_with_sessions(DEVICES, "production"));
        let mut running = vec![first];
        for _ in 1..nodes {
            running.push(bench.another_node(roomy).1);
        }
        let bases: Vec<String> = running.iter().map(|r| format!("https://{}", r.addrs.device)).collect();
        let mut rounds: Vec<f64> =
            (0..ROUNDS).map(|_| common::round(&bases, &bench.ca(), &tokens, THREADS, ROUND, true)).collect();
        rounds.sort_by(f64::total_cmp);
        let checkins = rounds[ROUNDS / 2];
        let base = *baseline.get_or_insert((median, checkins));
        println!(
            "| {backend} | {nodes} | {median:.2} ({:.2}×) | {min:.2} | {max:.2} | {checkins:.0} ({:.2}×) | {rounds:.0?} |",
            median / base.0,
            checkins / base.1
        );
        drop(running);
    }
}

/// Publish `SAMPLES` updates through `state` (the node with the publisher's key): median, min
/// and max milliseconds.
fn publish(bench: &Bench, state: &ringfence_server::AppState) -> (f64, f64, f64) {
    let now = ringfence_server::unix_now();
    let content = b"backends bench";
    let sha = bench.upload(content);
    let mut times: Vec<f64> = (0..SAMPLES)
        .map(|i| {
            let file = UpdateFile { name: format!("b-{i}.bin"), sha256: sha.clone(), length: content.len() as u64 };
            let manifest = common::manifest(format!("backend-{i}"), vec![file]);
            let started = Instant::now();
            bench.runtime.block_on(state.repo.publish_update(manifest, "bench", now)).unwrap();
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[SAMPLES / 2], times[0], times[SAMPLES - 1])
}
