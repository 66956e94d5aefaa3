//! A server-run rollout at fleet scale: `Rollouts::status` (what `ringfence rollout status`
//! and the job's halt and stage checks read: the group's accepted devices placed by their keys,
//! their newest states on the update's paths, the failure and stuck counts) for a group of
//! 1,000, 10,000 and 100,000 devices, one update of one file approved in it, 90 % of the
//! devices installed, 5 % failed, 5 % on their way. Run with
//! `cargo bench -p ringfence --bench rollouts`. Baseline: the 1,000-device group, same run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

// Each bench uses a part of what the benches share.
#[allow(dead_code)]
mod common;

use std::time::Instant;

use common::Bench;
use ringfence_proto::GroupName;
use ringfence_proto::api::{StartRollout, UpdateFile};

const SAMPLES: usize = 11;

fn main() {
    let bench = Bench::publishing();
    let (runtime, state) = (&bench.runtime, &bench.state);
    let pilot = GroupName::parse("pilot").unwrap();
    let now = ringfence_server::unix_now();
    let pool = bench.sqlite_pool();
    let sql = |statement: String| runtime.block_on(sqlx::query(&statement).execute(&pool)).unwrap();

    let content = b"rollout bench";
    let sha = bench.upload(content);
    runtime.block_on(async {
        let file = UpdateFile { name: "kb-r.bin".into(), sha256: sha.clone(), length: content.len() as u64 };
        state.repo.publish_update(common::manifest("kb-r".into(), vec![file]), "bench", now).await.unwrap();
        assert!(common::approve_install(state, "pilot", "kb-r", now).await);
        let start = StartRollout {
            group: pilot.clone(),
            update: "kb-r".into(),
            max_failures: None,
            max_failure_percent: Some(100),
            stuck_hours: None,
            stages: Some(vec![10, 50, 100]),
            soak_hours: None,
            success_percent: None,
        };
        state.rollouts.start(&state.repo, start, "bench", now).await.unwrap();
    });

    println!("| devices in the group | status median (ms) | min | max | vs 1,000 |");
    println!("|---|---|---|---|---|");
    let mut baseline = None;
    let mut have = 0u64;
    for devices in [1_000u64, 10_000, 100_000] {
        // Devices have..devices: accepted in pilot, each with its newest state on the file.
        sql(format!(
            "WITH RECURSIVE n(i) AS (SELECT {have} UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
             INSERT INTO devices (id, public_key, state, groups, hostname, inventory, enrolled_at) \
             SELECT printf('roll%028d', i), printf('%064x', i * 2654435761), 'accepted', 'pilot', 'h', '{{}}', 0 FROM n",
            devices - 1
        ));
        sql(format!(
            "WITH RECURSIVE n(i) AS (SELECT {have} UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
             INSERT INTO device_update_states (device_id, target, report_id, state, at, seq) \
             SELECT printf('roll%028d', i), 'approvals/pilot/acme/kb-r.bin', 'r', \
             CASE WHEN i % 20 = 0 THEN 'failed' WHEN i % 20 = 1 THEN 'installing' ELSE 'installed' END, {now}, 1 FROM n",
            devices - 1
        ));
        have = devices;
        let mut times = Vec::new();
        for _ in 0..SAMPLES {
            let started = Instant::now();
            let status = runtime.block_on(state.rollouts.status(&state.repo, now)).unwrap();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            let counted: u64 = status[0].stages.iter().map(|s| s.devices).sum();
            assert_eq!(counted, devices, "every device placed in a stage");
        }
        times.sort_by(f64::total_cmp);
        let (min, median, max) = (times[0], times[SAMPLES / 2], times[SAMPLES - 1]);
        let base = *baseline.get_or_insert(median);
        println!("| {devices} | {median:.1} | {min:.1} | {max:.1} | {:.1}× |", median / base);
    }
}
