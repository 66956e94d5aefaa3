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
use ringfence_server::Config;
use ringfence_store::{DeviceRecord, DeviceState, DeviceStore};

const DEVICES: usize = 10_000;
const THREADS: usize = 16;
const ROUND: Duration = Duration::from_secs(5);
const ROUNDS: usize = 3;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["quickstart", "--no-serve", "--device-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--dir"])
        .arg(dir.path())
        .output()
        .expect("quickstart");
    assert!(status.status.success());
    let data = dir.path().join("ringfence-data");
    let mut config = Config::load(&data.join("ringfence.toml")).expect("config");
    config.devices.max_concurrent_requests = 1024;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let state = runtime.block_on(ringfence_server::open_state(config)).expect("state");

    // 10k accepted devices, each with a live session.
    let now = ringfence_server::unix_now();
    let mut tokens = Vec::new();
    runtime.block_on(async {
        for i in 0..DEVICES {
            let id = format!("{i:032x}");
            let device = DeviceRecord {
                id: id.clone(),
                public_key: format!("{i:064x}"),
                state: DeviceState::Accepted,
                groups: vec!["production".into()],
                hostname: format!("host-{i}"),
                inventory: "{}".into(),
                enrolled_at: now,
                last_checkin: None,
                timestamp_version: None,
            };
            state.repo.store.insert_device(&device).await.expect("device");
            let token = format!("rfds_{i:064x}");
            let hash = ringfence_trust::sha256_hex(token.as_bytes());
            state.repo.store.insert_session(&hash, &id, now + 3600).await.expect("session");
            tokens.push(token);
        }
    });
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve_state = state.clone();
    let handle = runtime.handle().clone();
    let server = std::thread::spawn(move || {
        handle
            .block_on(ringfence_server::serve(
                serve_state,
                async {
                    let _ = stop_rx.await;
                },
                Some(ready_tx),
            ))
            .expect("serve");
    });
    let addrs = runtime.block_on(ready_rx).expect("ready");
    let base = format!("https://{}", addrs.device);
    let ca = data.join("tls/cert.pem");
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
    let _ = stop_tx.send(());
    let _ = server.join();
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
