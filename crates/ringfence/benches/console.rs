//! The web console's pages at fleet size: 100,000 accepted devices in `pilot` (and 100 pending),
//! 1,000 updates in the catalog, 50 of them approved for `pilot` with the compliance aggregates
//! such a fleet leaves (90 % installed, 5 % needed, 3 % failed, 2 % not applicable), one
//! rollout over the group with every device's newest state on its file. Each page is asked for
//! over HTTPS on loopback with a logged-in session cookie, on one kept-alive connection;
//! median, min and max of 11 requests after a first one (its time shown apart: the rollout
//! pages count the group's stages then, and reuse that count for two minutes). Baseline, same run: the embedded
//! stylesheet (no database). Run with `cargo bench -p ringfence --bench console`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

// Each bench uses a part of what the benches share.
#[allow(dead_code)]
mod common;

use std::time::Instant;

use common::Bench;
use ringfence_proto::GroupName;
use ringfence_proto::api::{StartRollout, UpdateFile};

const UPDATES: usize = 1_000;
const APPROVED: usize = 50;
const DEVICES: u64 = 100_000;
const SAMPLES: usize = 11;

fn main() {
    let bench = Bench::publishing();
    let (runtime, state) = (&bench.runtime, &bench.state);
    let pilot = GroupName::parse("pilot").unwrap();
    let now = ringfence_server::unix_now();
    let pool = bench.sqlite_pool();
    let sql = |statement: String| runtime.block_on(sqlx::query(&statement).execute(&pool)).unwrap();

    let content = b"console bench";
    let sha = bench.upload(content);
    let setup = Instant::now();
    runtime.block_on(async {
        for u in 0..UPDATES {
            let file = UpdateFile { name: format!("kb-{u:04}.bin"), sha256: sha.clone(), length: content.len() as u64 };
            let mut manifest = common::manifest(format!("kb-{u:04}"), vec![file]);
            manifest.cves = vec![format!("CVE-2026-{:04}", 1000 + u)];
            manifest.title = format!("Bench update {u}");
            state.repo.publish_update(manifest, "bench", now).await.unwrap();
        }
        for u in 0..APPROVED {
            assert!(common::approve_install(state, "pilot", &format!("kb-{u:04}"), now).await);
        }
        let start = StartRollout {
            group: pilot.clone(),
            update: "kb-0000".into(),
            max_failures: None,
            max_failure_percent: Some(100),
            stuck_hours: None,
            stages: Some(vec![10, 50, 100]),
            soak_hours: None,
            success_percent: None,
        };
        state.rollouts.start(&state.repo, start, "bench", now).await.unwrap();
    });
    sql(format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
         INSERT INTO devices (id, public_key, state, groups, hostname, inventory, enrolled_at, last_checkin) \
         SELECT printf('%032x', i), printf('%064x', i * 2654435761), 'accepted', 'pilot', 'host-' || i, \
         '{{\"hostname\":\"h\",\"os\":\"linux\",\"os_version\":\"12\",\"architecture\":\"x86_64\",\"agent_version\":\"0.1.0\"}}', \
         0, {now} - (i % 172800) FROM n",
        DEVICES - 1
    ));
    sql(format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 99) \
         INSERT INTO devices (id, public_key, state, groups, hostname, inventory, enrolled_at, source) \
         SELECT printf('p%031x', i), printf('p%063x', i), 'pending', 'pilot', 'new-' || i, '{{}}', {now}, '127.0.0.1' FROM n"
    ));
    sql(format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
         INSERT INTO device_update_states (device_id, target, report_id, state, at, seq) \
         SELECT printf('%032x', i), 'approvals/pilot/acme/kb-0000.bin', 'r', \
         CASE WHEN i % 20 = 0 THEN 'failed' WHEN i % 20 = 1 THEN 'installing' ELSE 'installed' END, {now}, 1 FROM n",
        DEVICES - 1
    ));
    sql(format!("INSERT INTO group_devices (group_name, devices) VALUES ('pilot', {DEVICES})"));
    let rows: Vec<String> = (0..APPROVED)
        .flat_map(|u| {
            [("installed", 90), ("needed", 5), ("failed", 3), ("not_applicable", 2)]
                .map(|(b, pct)| format!("('approvals/pilot/acme/kb-{u:04}.bin', '{b}', {})", DEVICES * pct / 100))
        })
        .collect();
    sql(format!("INSERT INTO compliance_counts (target, bucket, devices) VALUES {}", rows.join(",")));
    eprintln!("set up in {:.0} s", setup.elapsed().as_secs_f64());

    let running = bench.serve();
    let token = std::fs::read_to_string(bench.data.join("admin.token")).unwrap();
    let (session, _) = runtime.block_on(state.console.login(token.trim(), now)).unwrap();
    let cookie = format!("{}={session}", ringfence_server::console::COOKIE);
    let agent = ringfence_cli::http::agent(&std::fs::read(bench.ca()).unwrap()).unwrap();
    let base = format!("https://{}", running.addrs.admin);
    let get = |path: &str| -> (u16, usize) {
        let mut answer = agent.get(&format!("{base}{path}")).header("cookie", &cookie).call().unwrap();
        let body = answer.body_mut().with_config().limit(64 << 20).read_to_vec().unwrap();
        (answer.status().as_u16(), body.len())
    };
    let pages = [
        ("/console/assets/style.css", "stylesheet (baseline)"),
        ("/console/", "dashboard"),
        ("/console/updates", "updates, first page"),
        ("/console/updates?cve=CVE-2026-1999", "updates filtered by CVE (the whole catalog looked at)"),
        ("/console/updates/kb-0000", "an update (approvals, compliance per group)"),
        ("/console/approvals", "pending approvals"),
        ("/console/rollouts", "rollouts"),
        ("/console/devices", "devices, first page"),
        ("/console/devices?state=pending", "pending devices"),
        ("/console/devices?q=host-99999", "device search by host name"),
        ("/console/devices/000000000000000000000000000003e8", "a device"),
        ("/console/compliance?group=pilot", "compliance of pilot, first page"),
        ("/console/compliance.csv?group=pilot", "compliance CSV of pilot"),
        ("/console/cve?cve=CVE-2026-1000", "a CVE"),
        ("/console/audit", "audit trail, first page"),
        ("/console/log", "transparency log"),
        ("/console/groups", "groups"),
    ];
    println!("| page | median (ms) | min | max | vs stylesheet | first request (ms) | bytes |");
    println!("|---|---|---|---|---|---|---|");
    let mut baseline = None;
    for (path, what) in pages {
        let started = Instant::now();
        let (status, bytes) = get(path);
        let first = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(status, 200, "{path}");
        let mut times: Vec<f64> = (0..SAMPLES)
            .map(|_| {
                let started = Instant::now();
                get(path);
                started.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (min, median, max) = (times[0], times[SAMPLES / 2], times[SAMPLES - 1]);
        let base = *baseline.get_or_insert(median);
        println!(
            "| {what} (`{path}`) | {median:.1} | {min:.1} | {max:.1} | {:.0}× | {first:.1} | {bytes} |",
            median / base
        );
    }

    // Where the dashboard's time goes: each domain call it makes, on its own.
    let time = |f: &dyn Fn()| -> f64 {
        let mut times: Vec<f64> = (0..SAMPLES)
            .map(|_| {
                let started = Instant::now();
                f();
                started.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        times[SAMPLES / 2]
    };
    println!();
    println!("| the dashboard's parts | median (ms) |");
    println!("|---|---|");
    let parts: [(&str, &dyn Fn()); 4] = [
        ("fleet counts (devices per state, seen in 24 h)", &|| {
            runtime.block_on(state.console.fleet(now)).unwrap();
        }),
        ("repository health (every role's expiry)", &|| {
            runtime.block_on(state.repo.health(now)).unwrap();
        }),
        ("pending role versions", &|| {
            runtime.block_on(state.repo.list_pending()).unwrap();
        }),
        ("rollouts (stage counts reused)", &|| {
            runtime.block_on(state.rollouts.status_for_display(&state.repo, now, 120)).unwrap();
        }),
    ];
    for (what, f) in parts {
        println!("| {what} | {:.1} |", time(f));
    }
}
