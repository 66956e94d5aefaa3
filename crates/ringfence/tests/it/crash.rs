//! Crash safety: the real server (`ringfence serve`, the embedded default) killed with SIGKILL
//! at random points while publishers publish, the server signs, approvers upload signatures
//! and a device reports, 100 times. After each restart python-tuf, keeping its trusted
//! metadata from one restart to the next, refreshes and downloads the newest published file
//! (nothing torn, nothing rolled back that it already trusted), and every report the server
//! acknowledged before the kill is stored.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{BIN, free_port, interop_script, python, wait_for_port};
use crate::device_api::{Device, open_session, signed_enrollment, signed_reports};

const KILLS: u64 = 100;

pub(crate) struct Installation {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: std::path::PathBuf,
    pub(crate) data: std::path::PathBuf,
    pub(crate) device_port: u16,
    pub(crate) admin_port: u16,
}

impl Installation {
    /// A quickstart installation on loopback, served, its publisher key online (a publish
    /// signs at once).
    pub(crate) fn quickstart_served() -> (Installation, Child) {
        let (dir, data, keys) = crate::common::quickstart_installation(&[]);
        std::fs::copy(keys.join("publisher-acme.key"), data.join("online-keys/publisher-acme.key")).unwrap();
        let config = data.join("ringfence.toml");
        let install = Installation { dir, config, data, device_port: free_port(), admin_port: free_port() };
        let server = install.serve();
        (install, server)
    }

    pub(crate) fn serve(&self) -> Child {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("server.log")).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RINGFENCE_DEVICE_ADDR", format!("127.0.0.1:{}", self.device_port))
            .env("RINGFENCE_ADMIN_ADDR", format!("127.0.0.1:{}", self.admin_port))
            .env("RINGFENCE_ALLOW_ROOT", "1")
            .env("RINGFENCE_REPOSITORY_ACCESS", "public")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(self.admin_port, "the admin listener");
        wait_for_port(self.device_port, "the device listener");
        child
    }

    pub(crate) fn cli(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("RINGFENCE_ADMIN_URL", format!("https://127.0.0.1:{}", self.admin_port))
            .env("RINGFENCE_CA", self.data.join("tls/cert.pem"))
            .env("RINGFENCE_TOKEN", std::fs::read_to_string(self.data.join("admin.token")).unwrap().trim())
            .env("RINGFENCE_SIGNER_STATE", self.dir.path().join("signer-state"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    fn device_client(&self, token: Option<String>) -> ringfence_cli::http::Client {
        ringfence_cli::http::Client::new(
            &format!("https://127.0.0.1:{}", self.device_port),
            token,
            &self.data.join("tls/cert.pem"),
        )
        .unwrap()
    }

    /// Publish update `id` (a script) and approve it in pilot: whether both were acknowledged.
    pub(crate) fn publish(&self, id: &str) -> bool {
        let (manifest, script) = crate::scale_out::script_update(&self.dir.path().join("work"), id);
        self.cli().args(["publish", "--manifest"]).arg(&manifest).arg(&script).status().unwrap().success()
            && self.cli().args(["approve", id, "--group", "pilot"]).status().unwrap().success()
    }

    /// python-tuf with its trusted metadata in `state` (kept across restarts): refresh, then
    /// download `target`. The client's JSON line and whether it succeeded.
    pub(crate) fn tuf(&self, state: &Path, target: &str) -> (bool, String) {
        let out_dir = self.dir.path().join("downloads");
        std::fs::create_dir_all(&out_dir).unwrap();
        let base = format!("https://127.0.0.1:{}/repo", self.device_port);
        let out = Command::new(python())
            .arg(interop_script("tuf_client.py"))
            .args(["--metadata-url", &format!("{base}/metadata/"), "--targets-url", &format!("{base}/targets/")])
            .arg("--root")
            .arg(self.data.join("1.root.json"))
            .arg("--metadata-dir")
            .arg(state)
            .arg("--ca-cert")
            .arg(self.data.join("tls/cert.pem"))
            .args(["download", "--target", target, "--out-dir"])
            .arg(&out_dir)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    /// The report ids stored for `device`.
    pub(crate) fn stored_reports(&self, device: &str) -> std::collections::BTreeSet<String> {
        let out = Command::new("python3")
            .arg("-c")
            .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); [print(r[0]) for r in c.execute('SELECT id FROM status_reports WHERE device_id = ?', (sys.argv[2],))]")
            .arg(self.data.join("ringfence.db"))
            .arg(device)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }
}

/// A small deterministic generator (the run is reproducible from its seed).
fn next(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    *seed >> 33
}

#[test]
fn a_server_killed_at_random_points_serves_nothing_torn_and_loses_no_acknowledged_report() {
    if crate::common::test_postgres_database().is_some() {
        // The embedded default is what this kills; PostgreSQL's durability is its own.
        return;
    }
    let (dir, data, keys) = crate::common::quickstart_installation(&[]);
    // The publisher's key online too, so a publish signs at once (pilot's approver is online),
    // and report batches unthrottled, so a device can report as fast as the server answers.
    std::fs::copy(keys.join("publisher-acme.key"), data.join("online-keys/publisher-acme.key")).unwrap();
    let config = data.join("ringfence.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    assert!(!toml.contains("[devices]"), "{toml}");
    toml.push_str("\n[devices]\nreport_batches_per_minute = 1000000\n");
    std::fs::write(&config, toml).unwrap();
    let install = Installation { dir, config, data, device_port: free_port(), admin_port: free_port() };

    let mut server = install.serve();
    assert!(install.publish("kb-c0"), "the first publish");
    let token = {
        let out = install
            .cli()
            .args(["device", "enrollment-token", "--group", "pilot", "--uses", "1"])
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let key = ringfence_trust::SigningKey::generate();
    let enrolled: Value = serde_json::from_slice(
        &install
            .device_client(None)
            .send_json("POST", "/device/v1/enroll", &signed_enrollment(&key, Some(&token), "pilot"))
            .unwrap()
            .ok()
            .unwrap(),
    )
    .unwrap();
    let device = Arc::new(Device { key, id: enrolled["device_id"].as_str().unwrap().to_owned() });
    let tuf_state = install.dir.path().join("tuf-state");
    std::fs::create_dir_all(&tuf_state).unwrap();
    let (ok, said) = install.tuf(&tuf_state, "acme/kb-c0.sh");
    assert!(ok, "{said}");

    let mut seed = 0x5eed_u64;
    let mut newest = "acme/kb-c0.sh".to_owned();
    let (mut acked_total, mut published_total) = (0usize, 0usize);
    let started = Instant::now();
    for kill in 0..KILLS {
        // Work against the server until it is killed: report batches (each acknowledged one
        // recorded), a publish and approval every few, approver signatures on production's
        // pending approval now and then.
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let published = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (acked, published, stopped, device) = (acked.clone(), published.clone(), stop.clone(), device.clone());
            let session = open_session(&install.device_client(None), &device);
            let client = install.device_client(Some(session));
            let install = &install;
            let kill_seed = next(&mut seed);
            let work = move || {
                let mut n = 0u64;
                while !stopped.load(Ordering::SeqCst) && n < 10_000 {
                    n += 1;
                    let id = format!("k{kill}-{n}");
                    let report =
                        json!([{"id": id, "target": "approvals/pilot/acme/kb-c0.sh", "state": "downloading", "at": 1}]);
                    match client.send_json("POST", "/device/v1/reports", &signed_reports(&device, report)) {
                        Ok(answer) if answer.status == 200 => acked.lock().unwrap().push(id),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                    if (n + kill_seed).is_multiple_of(7) {
                        let update = format!("kb-k{kill}-{n}");
                        if install.publish(&update) {
                            published.lock().unwrap().push(format!("acme/{update}.sh"));
                        }
                    }
                    if (n + kill_seed).is_multiple_of(23) {
                        let _ = install.cli().args(["approve", "kb-c0", "--group", "production"]).status();
                        let _ = install
                            .cli()
                            .args(["pending", "sign", "approvals.production", "--yes", "--key"])
                            .arg(install.dir.path().join("ringfence-keys/production-approver-1.key"))
                            .arg("--trusted-root")
                            .arg(install.dir.path().join("ringfence-keys/1.root.json"))
                            .status();
                    }
                }
            };
            // The worker borrows nothing that outlives this iteration.
            std::thread::scope(|scope| {
                let handle = scope.spawn(work);
                std::thread::sleep(Duration::from_millis(100 + next(&mut seed) % 1400));
                server.kill().unwrap();
                server.wait().unwrap();
                stop.store(true, Ordering::SeqCst);
                handle.join().unwrap();
            });
        }
        server = install.serve();
        // Nothing torn, nothing rolled back: python-tuf, with what it trusted before the kill,
        // refreshes and downloads the newest file whose publish and approval were acknowledged.
        if let Some(last) = published.lock().unwrap().last() {
            newest = last.clone();
        }
        published_total += published.lock().unwrap().len();
        let (ok, said) = install.tuf(&tuf_state, &newest);
        assert!(ok, "after kill {kill}: python-tuf could not read {newest}: {said}");
        // Every acknowledged report is stored.
        let stored = install.stored_reports(&device.id);
        let acked = acked.lock().unwrap();
        let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
        assert!(lost.is_empty(), "after kill {kill}: acknowledged reports lost: {lost:?}");
        acked_total += acked.len();
    }
    server.kill().unwrap();
    let _ = server.wait();
    eprintln!(
        "{KILLS} kills in {:.0} s: {acked_total} acknowledged reports all kept, {published_total} acknowledged publishes, \
         python-tuf read the repository after each",
        started.elapsed().as_secs_f64()
    );
}
