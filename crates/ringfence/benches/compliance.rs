//! Compliance at fleet scale: a group's compliance summary read from the maintained
//! aggregates, and status-report ingest with those aggregates kept up to date. Run with
//! `cargo bench -p ringfence --bench compliance`.
//!
//! 1. Summary: a quickstart repository where `pilot` approves 1,024 files (16 updates of 64
//!    files, published and approved through `Repository`). The aggregates a fleet's reports
//!    leave behind are written as that fleet would leave them (per file: 90 % installed, 5 %
//!    needed, 3 % failed, 2 % not applicable) for 1,000 and for 100,000 devices; one sample is
//!    one `Reports::compliance` call for the whole group (the code behind
//!    `GET /api/v1/reports/compliance`). For scale, the recount the aggregates replace: a
//!    `GROUP BY` over 1,000 devices' real newest-report rows (1,024 each), 1 % of the fleet.
//! 2. Ingest: 1,024 accepted devices each send report batches of 64 state transitions
//!    (16 files × downloading, downloaded, installing, installed) through
//!    `DeviceStore::insert_reports`, one device after another and two at a time; the baseline
//!    is the same batches from devices that are not accepted (no aggregates to maintain).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

// Each bench uses a part of what the benches share.
#[allow(dead_code)]
mod common;

use std::time::Instant;

use common::Bench;
use ringfence_proto::GroupName;
use ringfence_proto::api::{Classification, Severity, UpdateFile};
use ringfence_store::{DeviceRecord, DeviceState, DeviceStore, ReportLimits, ReportRecord};

const UPDATES: usize = 16;
const FILES: usize = 64;
const SAMPLES: usize = 31;

fn median(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (xs[0], xs[xs.len() / 2], xs[xs.len() - 1])
}

fn main() {
    let bench = Bench::publishing();
    let (runtime, state) = (&bench.runtime, &bench.state);
    let pilot = GroupName::parse("pilot").unwrap();
    let now = ringfence_server::unix_now();
    let pool = bench.sqlite_pool();
    let sql = |statement: String| runtime.block_on(sqlx::query(&statement).execute(&pool)).unwrap();

    // 1,024 approved files.
    let content = b"compliance bench";
    let sha = bench.upload(content);
    runtime.block_on(async {
        for u in 0..UPDATES {
            let files = (0..FILES)
                .map(|i| UpdateFile {
                    name: format!("kb{u}-{i}.bin"),
                    sha256: sha.clone(),
                    length: content.len() as u64,
                })
                .collect();
            let mut manifest = common::manifest(format!("kb-{u}"), files);
            manifest.classification = Classification::Security;
            manifest.severity = Severity::Critical;
            manifest.cves = vec![format!("CVE-2026-{:04}", 1000 + u)];
            let outcome = state.repo.publish_update(manifest, "bench", now).await.unwrap();
            assert!(outcome.pending.is_empty(), "the publisher key is online");
            assert!(common::approve_install(state, "pilot", &format!("kb-{u}"), now).await);
        }
    });
    let targets: Vec<String> =
        (0..UPDATES).flat_map(|u| (0..FILES).map(move |i| format!("approvals/pilot/acme/kb{u}-{i}.bin"))).collect();

    // 1. The summary, from aggregates shaped like a fleet of N devices.
    let summary = |devices: u64| -> (f64, f64, f64) {
        sql("DELETE FROM compliance_counts".into());
        sql(format!(
            "INSERT INTO group_devices (group_name, devices) VALUES ('pilot', {devices}) \
             ON CONFLICT (group_name) DO UPDATE SET devices = excluded.devices"
        ));
        for chunk in targets.chunks(256) {
            let rows: Vec<String> = chunk
                .iter()
                .flat_map(|t| {
                    [("installed", 90), ("needed", 5), ("failed", 3), ("not_applicable", 2)]
                        .map(|(b, pct)| format!("('{t}', '{b}', {})", devices * pct / 100))
                })
                .collect();
            sql(format!("INSERT INTO compliance_counts (target, bucket, devices) VALUES {}", rows.join(",")));
        }
        let mut times = Vec::new();
        for _ in 0..SAMPLES {
            let started = Instant::now();
            let report = runtime.block_on(state.reports.compliance(&state.repo, &pilot, "", 1000)).unwrap();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(report.rows.len(), 1000);
            assert_eq!(report.devices, devices);
            assert_eq!(report.rows[0].installed, devices * 90 / 100);
        }
        median(times)
    };
    let small = summary(1_000);
    let large = summary(100_000);

    // The recount the aggregates replace, over real rows: 1,000 devices × 1,024 files.
    sql("WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 999) \
         INSERT INTO devices (id, public_key, state, groups, hostname, inventory, enrolled_at) \
         SELECT printf('scan%028d', i), printf('%064d', i), 'accepted', 'pilot', 'h', '{}', 0 FROM n"
        .into());
    sql(format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 999), \
         f(t) AS (SELECT 'approvals/pilot/acme/kb' || u || '-' || i || '.bin' FROM \
           (WITH RECURSIVE a(u) AS (SELECT 0 UNION ALL SELECT u + 1 FROM a WHERE u < {}) SELECT u FROM a), \
           (WITH RECURSIVE b(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM b WHERE i < {}) SELECT i FROM b)) \
         INSERT INTO device_update_states (device_id, target, report_id, state, at, seq) \
         SELECT printf('scan%028d', n.i), f.t, 'r', CASE WHEN n.i % 20 = 0 THEN 'failed' ELSE 'installed' END, 0, 1 \
         FROM n, f",
        UPDATES - 1,
        FILES - 1
    ));
    let mut scans = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        let rows = runtime
            .block_on(
                sqlx::query(
                    "SELECT target, state, COUNT(*) FROM device_update_states \
                     WHERE target >= 'approvals/pilot/' AND target < 'approvals/pilot0' GROUP BY target, state",
                )
                .fetch_all(&pool),
            )
            .unwrap();
        scans.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(rows.len(), UPDATES * FILES * 2);
    }
    let scan = median(scans);
    println!("compliance summary, pilot, 1,024 approved files, first page of 1,000 rows, {SAMPLES} samples:");
    println!("  aggregates of   1,000 devices: median {:.2} ms (min {:.2}, max {:.2})", small.1, small.0, small.2);
    println!(
        "  aggregates of 100,000 devices: median {:.2} ms (min {:.2}, max {:.2}); ratio to 1,000: {:.2}",
        large.1,
        large.0,
        large.2,
        large.1 / small.1
    );
    println!(
        "  recount over 1,000 devices' rows (1,048,576), 7 samples: median {:.1} ms (min {:.1}, max {:.1}); {:.0}x the 100k summary",
        scan.1,
        scan.0,
        scan.2,
        scan.1 / large.1
    );

    // 2. Ingest, after the seeding's large write-ahead log is checkpointed away.
    sql("PRAGMA wal_checkpoint(TRUNCATE)".into());
    let store = bench.db.clone();
    let limits = ReportLimits { history: 1000, max_targets: 4096, max_batch_bytes: 64 << 20, forward: false };
    let ingest = |label: &str, accepted: bool, parallel: usize| -> f64 {
        let devices: Vec<DeviceRecord> = (0..1024)
            .map(|i| DeviceRecord {
                id: format!("{label}{i:024}"),
                public_key: format!("{label}{i:060}"),
                state: if accepted { DeviceState::Accepted } else { DeviceState::Pending },
                groups: vec!["pilot".into()],
                hostname: format!("host-{i}"),
                inventory: "{}".into(),
                enrolled_at: now,
                last_checkin: None,
                timestamp_version: None,
            })
            .collect();
        runtime.block_on(async {
            for d in &devices {
                store.insert_device(d).await.unwrap();
            }
        });
        let batches: Vec<(String, Vec<ReportRecord>)> = devices
            .iter()
            .map(|d| {
                let reports = (0..16)
                    .flat_map(|f| {
                        ["downloading", "downloaded", "installing", "installed"].into_iter().enumerate().map(
                            move |(k, s)| ReportRecord {
                                id: format!("r{f}-{k}"),
                                target: format!("approvals/pilot/acme/kb0-{f}.bin"),
                                state: s.into(),
                                reason: None,
                                exit_code: None,
                                at: now,
                            },
                        )
                    })
                    .collect();
                (d.id.clone(), reports)
            })
            .collect();
        let started = Instant::now();
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for part in batches.chunks(batches.len() / parallel) {
                let store = store.clone();
                let part = part.to_vec();
                tasks.push(tokio::spawn(async move {
                    for (device, reports) in part {
                        // A batch that found the database locked past the busy timeout is sent
                        // again, as an agent would; how often is counted and printed.
                        let mut tries = 0;
                        loop {
                            match store.insert_reports(&device, &reports, &common::unsigned_batch(), now, limits).await
                            {
                                Ok(_) => break,
                                Err(e) if e.to_string().contains("database is locked") && tries < 10 => {
                                    tries += 1;
                                    RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        (1024 * 64) as f64 / started.elapsed().as_secs_f64()
    };
    println!("report ingest, 1,024 devices x 64 transitions, transitions per second (3 rounds):");
    for parallel in [1, 2] {
        let mut with = Vec::new();
        let mut without = Vec::new();
        for round in 0..3 {
            without.push(ingest(&format!("b{parallel}{round}"), false, parallel));
            with.push(ingest(&format!("a{parallel}{round}"), true, parallel));
        }
        let (w, wo) = (median(with.clone()), median(without.clone()));
        println!(
            "  {parallel} at a time: maintained {:.0} (rounds {:?}); baseline without aggregates {:.0} (rounds {:?}); ratio {:.2}",
            w.1,
            with.iter().map(|x| x.round() as u64).collect::<Vec<_>>(),
            wo.1,
            without.iter().map(|x| x.round() as u64).collect::<Vec<_>>(),
            w.1 / wo.1
        );
    }
    println!("  batches sent again after 'database is locked': {}", RETRIES.load(std::sync::atomic::Ordering::Relaxed));
}

/// Report batches the ingest rounds had to send again.
static RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
