//! The fleet simulator (`ringfence-bench`) against a real server, at a tiny size, so the
//! performance harness never rots: every phase does what it claims, and the server shows it.
//! Nothing here looks at a timing.

use std::path::Path;
use std::process::Command;

use ringfence_store::DeviceStore;
use serde_json::Value;

use crate::common::{BIN, Server, sql_number};

#[test]
fn the_fleet_simulator_drives_every_phase_against_a_real_server() {
    let server = Server::start(|c| {
        // Every simulated device comes from 127.0.0.1.
        c.devices.sessions_per_minute = 10_000;
        c.devices.max_connections_per_source = 64;
    });
    let content = b"bytes for the simulated fleet to download, and a little more to range over".repeat(1024);
    server.publish_signed("sim.bin", &content);
    server.approve("pilot", "acme/sim.bin");
    let target = format!("repo/targets/acme/{}.sim.bin", ringfence_trust::sha256_hex(&content));
    let bench = Path::new(BIN).with_file_name("ringfence-bench");
    assert!(bench.exists(), "{} is missing: run the suite with scripts/test", bench.display());
    let json = server.dir.path().join("sim.json");
    let out = Command::new(&bench)
        .args(["--devices", "24", "--active", "12", "--connections", "3", "--requests", "40", "--seconds", "30"])
        .args(["--report-batch", "4", "--seed", "7"])
        .args(["--admin-url", &server.admin_url, "--token", &server.token])
        .args(["--device-url", server.repo_url.trim_end_matches("/repo")])
        .arg("--ca")
        .arg(&server.ca)
        .args(["--target", &target, "--server-pid", &std::process::id().to_string()])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| checkin | 40 | 0 |"), "{stdout}");

    let run: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(run["devices"], 24);
    assert_eq!(run["setup"]["preauthorized"], 24);
    assert_eq!(run["setup"]["sessions"]["ok"], 12, "{run:#}");
    assert_eq!(run["active"], 12);
    let phases = run["phases"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["checkin", "refresh", "reports", "download", "range"]);
    for p in phases {
        // Bounded by count: exactly 40 of each, none failed, each with latencies.
        assert_eq!(p["ok"], 40, "{p:#}");
        assert_eq!(p["errors"], serde_json::json!({}), "{p:#}");
        let l = &p["latency_ms"];
        assert!(l["p50"].as_f64().unwrap() <= l["p99"].as_f64().unwrap(), "{p:#}");
        assert!(l["p999"].as_f64().unwrap() <= l["max"].as_f64().unwrap(), "{p:#}");
        assert!(p["server"]["rss_peak_mib"].as_f64().unwrap() > 0.0, "the server process was watched");
    }
    let bytes = |name: &str| phases.iter().find(|p| p["name"] == name).unwrap()["bytes"].as_u64().unwrap();
    assert_eq!(bytes("download"), 40 * content.len() as u64, "every download whole");
    assert_eq!(bytes("range"), 40 * 64 * 1024, "every range exactly 64 KiB");
    assert!(bytes("refresh") > 40 * 400, "timestamp and snapshot fetched each time");

    // The server saw it: 24 accepted devices in pilot, the active ones checked in, and their
    // signed reports are stored.
    server.runtime.block_on(async {
        assert_eq!(server.db.count_devices().await.unwrap(), 24);
    });
    let accepted = "SELECT COUNT(*) FROM devices WHERE state = 'accepted' AND groups LIKE '%pilot%'";
    assert_eq!(sql_number(&server, accepted), 24);
    let reporters = "SELECT COUNT(DISTINCT device_id) FROM status_reports";
    assert_eq!(sql_number(&server, reporters), 12, "each active device reported");
    for _ in 0..50 {
        if sql_number(
            &server,
            "SELECT COUNT(*) FROM devices WHERE last_checkin IS NOT NULL AND inventory LIKE '%sim-%'",
        ) == 12
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the check-ins' inventories were never written");
}
