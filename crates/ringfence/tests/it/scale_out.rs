//! Three `ringfence serve` processes on one PostgreSQL database and one S3 bucket behind nginx
//! (TCP passthrough: TLS ends at the nodes). Agents and the CLI talk to nginx only. The node
//! running the background jobs is killed with SIGKILL while updates are being published and
//! approved; afterwards another node leads, nothing published is torn, duplicated or lost,
//! every acknowledged report is kept, and python-tuf reads the repository through nginx.
//!
//! Runs on the second test pass only (PostgreSQL and S3; the first pass leaves `scale_out`
//! out): `RINGFENCE_TEST_DATABASE=postgres` with a PostgreSQL server and an S3 server started.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{
    BIN, agent_bin, free_port, interop_script, python, run_ok, test_bucket, test_postgres_database, wait_for_port,
};

/// A child process stopped when the test ends, however it ends: SIGTERM (so nginx stops its
/// workers), SIGKILL if it is still there after a few seconds.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Node {
    process: Process,
    device: u16,
    admin: u16,
}

struct Cluster {
    dir: tempfile::TempDir,
    data: PathBuf,
    database: String,
    config: PathBuf,
    nodes: Vec<Node>,
    nginx: Option<Process>,
    device_port: u16,
    admin_port: u16,
}

impl Cluster {
    /// Start node `i`: `ringfence serve` with the installation's configuration on ports of its own.
    fn node(&self, i: usize) -> Node {
        let (device, admin) = (free_port(), free_port());
        let log = std::fs::File::create(self.dir.path().join(format!("node-{i}.log"))).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RINGFENCE_DEVICE_ADDR", format!("127.0.0.1:{device}"))
            .env("RINGFENCE_ADMIN_ADDR", format!("127.0.0.1:{admin}"))
            .env("RINGFENCE_ALLOW_ROOT", "1")
            // The reference client reads the repository too (it has no device session).
            .env("RINGFENCE_REPOSITORY_ACCESS", "public")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(admin, "a node's admin listener");
        wait_for_port(device, "a node's device listener");
        Node { process: Process(child), device, admin }
    }

    /// The `ringfence` CLI, talking to the admin listeners through nginx.
    fn cli(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("RINGFENCE_ADMIN_URL", format!("https://127.0.0.1:{}", self.admin_port))
            .env("RINGFENCE_CA", self.data.join("tls/cert.pem"))
            .env("RINGFENCE_TOKEN", std::fs::read_to_string(self.data.join("admin.token")).unwrap())
            .env("RINGFENCE_SIGNER_STATE", self.dir.path().join("signer-state"));
        c
    }

    fn sql(&self, query: &str) -> String {
        let out = Command::new("psql").args(["-X", "-q", "-A", "-t", &self.database, "-c", query]).output().unwrap();
        assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The process id in the name of the node holding the jobs lease (`host-pid-random`).
    fn leader_pid(&self) -> Option<u32> {
        let holder = self.sql("SELECT holder FROM leases WHERE name = 'jobs'");
        holder.rsplit('-').nth(1)?.parse().ok()
    }

    fn publish(&self, id: &str) -> bool {
        let (manifest, script) = script_update(&self.dir.path().join("work"), id);
        let published = self.cli().args(["publish", "--manifest"]).arg(&manifest).arg(&script).output().unwrap();
        published.status.success()
            && self.cli().args(["approve", id, "--group", "pilot"]).output().unwrap().status.success()
    }
}

/// Update `id` in `work`: a script that appends a line to `ran-<id>` where it runs, and its
/// manifest. Returns (manifest, script).
pub(crate) fn script_update(work: &Path, id: &str) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(work).unwrap();
    let script = work.join(format!("{id}.sh"));
    std::fs::write(&script, format!("#!/bin/sh\necho ran >> ran-{id}\n")).unwrap();
    let mut m: Value = serde_json::from_str(include_str!("../../../../docs/examples/hello.manifest.json")).unwrap();
    m["id"] = id.into();
    m["installer"] = json!({"module": "script"});
    m["applicability"] = json!({});
    let manifest = work.join(format!("{id}.json"));
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    (manifest, script)
}

fn start_cluster() -> Cluster {
    let database = test_postgres_database().expect("the scale-out test runs on PostgreSQL (RINGFENCE_TEST_DATABASE)");
    let bucket = test_bucket().expect("the scale-out test runs on S3 (RINGFENCE_TEST_S3_ROOT)");
    let (dir, data, keys) = crate::common::quickstart_installation(&["--database", &database, "--content", &bucket]);
    // The publisher's key online too, so a publish signs at once (pilot's approver is online).
    std::fs::copy(keys.join("publisher-acme.key"), data.join("online-keys/publisher-acme.key")).unwrap();
    let config = data.join("ringfence.toml");
    let (device_port, admin_port) = (free_port(), free_port());
    let mut cluster = Cluster { dir, data, database, config, nodes: Vec::new(), nginx: None, device_port, admin_port };
    cluster.nodes = (0..3).map(|i| cluster.node(i)).collect();
    let upstream = |port: fn(&Node) -> u16| -> String {
        cluster.nodes.iter().map(|n| format!("server 127.0.0.1:{} max_fails=1 fail_timeout=2s; ", port(n))).collect()
    };
    let conf = cluster.dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log;\n\
             events {{ worker_connections 256; }}\n\
             stream {{\n\
               upstream devices {{ {devices} }}\n\
               upstream admins {{ {admins} }}\n\
               server {{ listen 127.0.0.1:{device_port}; proxy_pass devices; proxy_connect_timeout 1s; }}\n\
               server {{ listen 127.0.0.1:{admin_port}; proxy_pass admins; proxy_connect_timeout 1s; }}\n\
             }}\n",
            dir = cluster.dir.path().display(),
            devices = upstream(|n| n.device),
            admins = upstream(|n| n.admin),
        ),
    )
    .unwrap();
    let nginx = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(cluster.dir.path())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (scripts/test installs it)");
    cluster.nginx = Some(Process(nginx));
    wait_for_port(admin_port, "nginx");
    wait_for_port(device_port, "nginx");
    cluster
}

fn enroll(cluster: &Cluster, root: &Path, name: &str, token: &str) -> PathBuf {
    enroll_in_pilot(cluster.device_port, &cluster.data, &root.join(name), token)
}

/// An agent in `dir` enrolled in pilot with `token` at the server process whose device listener
/// is on loopback `port` and whose data directory is `data` (its root and certificate).
pub(crate) fn enroll_in_pilot(port: u16, data: &Path, dir: &Path, token: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let root_sha = ringfence_trust::sha256_hex(&std::fs::read(data.join("1.root.json")).unwrap());
    let out = run_ok(
        Command::new(agent_bin())
            .args(["enroll", "--server", &format!("https://127.0.0.1:{port}")])
            .args(["--root-sha256", &root_sha, "--group", "pilot", "--token", token, "--ca"])
            .arg(data.join("tls/cert.pem"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .current_dir(dir),
    );
    assert!(out.contains("(accepted)"), "{out}");
    dir.to_path_buf()
}

/// One agent cycle: its exit code and what it printed.
pub(crate) fn check(agent: &Path) -> (i32, String) {
    let out = Command::new(agent_bin())
        .args(["check", "--state-dir"])
        .arg(agent.join("state"))
        .current_dir(agent)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn three_nodes_behind_nginx_survive_their_leader_being_killed() {
    let mut cluster = start_cluster();
    let token = run_ok(cluster.cli().args(["device", "enrollment-token", "--group", "pilot", "--uses", "3"]));
    let root = cluster.dir.path().join("agents");
    let agents: Vec<PathBuf> = (0..3).map(|i| enroll(&cluster, &root, &format!("agent-{i}"), token.trim())).collect();
    assert!(cluster.publish("u-0"), "a publish through nginx");
    for agent in &agents {
        let (code, out) = check(agent);
        assert_eq!(code, 0, "{out}");
        assert!(agent.join("ran-u-0").exists(), "{out}");
    }

    // One node leads the jobs.
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        if let Some(pid) = cluster.leader_pid() {
            break pid;
        }
        assert!(Instant::now() < deadline, "no node took the jobs lease");
        std::thread::sleep(Duration::from_millis(200));
    };
    let leader_at =
        cluster.nodes.iter().position(|n| n.process.0.id() == leader).expect("the leader is one of the nodes");

    // Publish and approve, one update after another, while the leader is killed in the middle
    // of it, and for two seconds after (at most 200 updates); meanwhile the agents check in,
    // install and report through nginx (at most 100 cycles each), so reports are in flight when
    // the leader dies.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (published, killed_at, cycles) = std::thread::scope(|s| {
        let checking: Vec<_> = agents
            .iter()
            .map(|agent| {
                let done = &done;
                s.spawn(move || {
                    let mut cycles = 0;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) && cycles < 100 {
                        check(agent);
                        cycles += 1;
                    }
                    cycles
                })
            })
            .collect();
        let publishing = s.spawn(|| {
            let mut out = Vec::new();
            for i in 1..=200 {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let id = format!("u-{i}");
                let ok = cluster.publish(&id);
                out.push((id, ok, Instant::now()));
            }
            out
        });
        std::thread::sleep(Duration::from_millis(500));
        run_ok(Command::new("kill").args(["-KILL", &leader.to_string()]));
        let killed_at = Instant::now();
        std::thread::sleep(Duration::from_secs(2));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let cycles: u32 = checking.into_iter().map(|c| c.join().unwrap()).sum();
        (publishing.join().unwrap(), killed_at, cycles)
    });
    eprintln!("{cycles} agent cycles ran while publishing and through the kill");
    let before = published.iter().filter(|(_, _, at)| *at < killed_at).count();
    let failed = published.iter().filter(|(_, ok, _)| !ok).count();
    assert!(before > 0 && before < published.len(), "the kill came in the middle of publishing: {before} before");
    eprintln!("{} updates published, {before} before the kill, {failed} failed at it", published.len());
    let mut killed = cluster.nodes.remove(leader_at);
    let status = killed.process.0.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "killed by SIGKILL");

    // Another node takes the jobs within seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let next = loop {
        match cluster.leader_pid() {
            Some(pid) if pid != leader => break pid,
            _ => assert!(Instant::now() < deadline, "no node took over the jobs"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(cluster.nodes.iter().any(|n| n.process.0.id() == next), "the new leader is a live node");
    // For the record (not asserted: timings are measured, not tested).
    eprintln!("another node leads {:.1} s after the kill", killed_at.elapsed().as_secs_f64());

    // Whatever failed at the kill goes through now (no lock was left held).
    let mut done: Vec<String> = vec!["u-0".into()];
    for (id, ok, _) in published {
        assert!(ok || cluster.publish(&id), "{id} after the kill");
        done.push(id);
    }

    // Nothing torn or duplicated: each role's versions run 1, 2, 3 ... without a gap, once each.
    let rows = cluster.sql("SELECT role || ' ' || COUNT(*) || ' ' || COUNT(DISTINCT version) || ' ' || MAX(version) FROM metadata GROUP BY role");
    for row in rows.lines() {
        let f: Vec<&str> = row.split(' ').collect();
        assert!(f[1] == f[2] && f[2] == f[3], "role {} has versions {row}", f[0]);
    }
    // Nothing lost: every agent installs every update, and reports it.
    for agent in &agents {
        let (code, out) = check(agent);
        assert_eq!(code, 0, "{out}");
        for id in &done {
            assert!(agent.join(format!("ran-{id}")).exists(), "{id} on {}: {out}", agent.display());
        }
        let outbox = agent.join("state/outbox");
        let pending = std::fs::read_dir(&outbox).map_or(0, |d| d.count());
        assert_eq!(pending, 0, "every report acknowledged");
    }
    let installed: i64 =
        cluster.sql("SELECT COUNT(*) FROM device_update_states WHERE state = 'installed'").parse().unwrap();
    assert_eq!(installed, (agents.len() * done.len()) as i64, "every acknowledged report is kept");

    // The reference client reads the repository through nginx, verifying every signature.
    let md = cluster.dir.path().join("python-tuf");
    let out = Command::new(python())
        .arg(interop_script("tuf_client.py"))
        .args(["--metadata-url", &format!("https://127.0.0.1:{}/repo/metadata/", cluster.device_port)])
        .args(["--targets-url", &format!("https://127.0.0.1:{}/repo/targets/", cluster.device_port)])
        .arg("--root")
        .arg(cluster.data.join("1.root.json"))
        .arg("--metadata-dir")
        .arg(&md)
        .arg("--ca-cert")
        .arg(cluster.data.join("tls/cert.pem"))
        .args(["download", "--target", "approvals/pilot/acme/u-6.sh", "--out-dir"])
        .arg(cluster.dir.path().join("python-tuf-out"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    // A node started now serves nothing older than what clients trust already.
    let fresh = cluster.node(9);
    let newest: u64 = cluster.sql("SELECT MAX(version) FROM metadata WHERE role = 'timestamp'").parse().unwrap();
    let trusted: Value = serde_json::from_slice(&std::fs::read(md.join("timestamp.json")).unwrap()).unwrap();
    let served = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(cluster.data.join("tls/cert.pem"))
        .arg(format!("https://127.0.0.1:{}/repo/metadata/timestamp.json", fresh.device))
        .output()
        .unwrap();
    let served: Value = serde_json::from_slice(&served.stdout).unwrap();
    let version = served["signed"]["version"].as_u64().unwrap();
    assert!(version >= trusted["signed"]["version"].as_u64().unwrap() && version == newest, "{version} vs {newest}");

    // SIGTERM (what systemd sends) stops a node gracefully: it exits 0.
    let mut node = fresh.process;
    run_ok(Command::new("kill").args(["-TERM", &node.0.id().to_string()]));
    let status = node.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// The newest timestamp exactly as node `n` serves it (straight to the node, not through nginx).
fn served_timestamp(cluster: &Cluster, n: &Node) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(cluster.data.join("tls/cert.pem"))
        .arg(format!("https://127.0.0.1:{}/repo/metadata/timestamp.json", n.device))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Wait (at most 10 s) until `check` holds for every node's served timestamp.
fn until_every_node(cluster: &Cluster, what: &str, check: impl Fn(&[u8]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.nodes.iter().all(|n| check(&served_timestamp(cluster, n))) {
        assert!(Instant::now() < deadline, "waited for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Append a space to the newest timestamp's stored bytes behind every node's back (no
/// notification): still the same document, but a node that reads the database serves the
/// space and a node that kept the timestamp in memory does not.
fn touch_newest_timestamp(cluster: &Cluster) {
    cluster.sql(
        "UPDATE metadata SET bytes = bytes || '\\x20'::bytea WHERE role = 'timestamp' \
         AND version = (SELECT MAX(version) FROM metadata WHERE role = 'timestamp')",
    );
}

/// Each node keeps the newest metadata and device sessions in memory only while it hears the
/// other nodes: a commit on one node reaches the others' memory within moments, a revoked
/// device is refused by every node at once, and a node whose listening connection is lost
/// forgets everything it kept.
#[test]
fn nodes_keep_caches_only_while_they_hear_each_other() {
    let cluster = start_cluster();
    let token =
        run_ok(cluster.cli().args(["device", "enrollment-token", "--group", "pilot", "--uses", "1"])).trim().to_owned();
    let agent = enroll(&cluster, &cluster.dir.path().join("agents"), "agent-1", &token);
    // Every node hears its own pings (the metric says so) and keeps the timestamp it served.
    for n in &cluster.nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = Command::new("curl")
                .args(["-sS", "--fail", "--cacert"])
                .arg(cluster.data.join("tls/cert.pem"))
                .arg("-H")
                .arg(format!(
                    "Authorization: Bearer {}",
                    std::fs::read_to_string(cluster.data.join("admin.token")).unwrap().trim()
                ))
                .arg(format!("https://127.0.0.1:{}/metrics", n.admin))
                .output()
                .unwrap();
            if String::from_utf8_lossy(&metrics.stdout).lines().any(|l| l == "ringfence_caches_on 1") {
                break;
            }
            assert!(Instant::now() < deadline, "node on {} never turned its caches on", n.admin);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let kept: Vec<Vec<u8>> = cluster.nodes.iter().map(|n| served_timestamp(&cluster, n)).collect();
    touch_newest_timestamp(&cluster);
    for (n, before) in cluster.nodes.iter().zip(&kept) {
        assert_eq!(&served_timestamp(&cluster, n), before, "a node serves the timestamp it keeps");
    }

    // A publish through any node reaches every node's memory (the kept timestamp is old now).
    assert!(cluster.publish("u-heard"));
    let newest: u64 = cluster.sql("SELECT MAX(version) FROM metadata WHERE role = 'timestamp'").parse().unwrap();
    until_every_node(&cluster, "the new timestamp on every node", |bytes| {
        serde_json::from_slice::<Value>(bytes).unwrap()["signed"]["version"].as_u64() == Some(newest)
    });

    // A device's session, kept by every node it checked in with, ends on every node at once
    // when another node revokes the device.
    let (code, out) = check(&agent);
    assert_eq!(code, 0, "{out}");
    let session: Value = serde_json::from_slice(&std::fs::read(agent.join("state/session.json")).unwrap()).unwrap();
    let session = session["token"].as_str().unwrap().to_owned();
    let checkin = |n: &Node| -> String {
        let body = json!({"inventory": {"hostname": "agent-1", "os": "linux", "os_version": "12",
            "architecture": "x86_64", "agent_version": "0"}, "timestamp_version": 0});
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(cluster.data.join("tls/cert.pem"))
            .args(["-H", &format!("Authorization: Bearer {session}"), "-H", "Content-Type: application/json"])
            .args(["--data", &body.to_string()])
            .arg(format!("https://127.0.0.1:{}/device/v1/checkin", n.device))
            .output()
            .unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    for n in &cluster.nodes {
        assert_eq!(checkin(n), "200", "the session is good on every node");
    }
    // Its row removed behind the nodes' backs (no notice): every node still knows it, from memory.
    let id = cluster.sql("SELECT id FROM devices WHERE state = 'accepted'");
    cluster.sql(&format!("DELETE FROM device_sessions WHERE device_id = '{id}'"));
    for n in &cluster.nodes {
        assert_eq!(checkin(n), "200", "every node keeps the session in memory");
    }
    // Revoked through nginx (one node): within moments (a notice's delay) no node accepts it.
    run_ok(cluster.cli().args(["device", "revoke", &id]));
    for n in &cluster.nodes {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut answer = checkin(n);
        while answer != "401" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            answer = checkin(n);
        }
        assert_eq!(answer, "401", "a revoked device's session is refused by every node");
    }

    // Listening connections lost: each node forgets what it kept and reads the database.
    until_every_node(&cluster, "the timestamp kept again", |bytes| !bytes.ends_with(b" "));
    touch_newest_timestamp(&cluster);
    for n in &cluster.nodes {
        assert!(!served_timestamp(&cluster, n).ends_with(b" "), "kept before the connections go");
    }
    let ended = cluster.sql(&format!(
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN %{}%'",
        "ringfence_changes"
    ));
    assert_eq!(ended, cluster.nodes.len().to_string(), "one listening connection per node");
    until_every_node(&cluster, "what the database holds, once nothing is heard", |bytes| bytes.ends_with(b" "));
}

#[test]
fn an_embedded_installation_moves_to_postgres_and_s3_and_goes_on() {
    use crate::agents::{enroll, token};
    use crate::common::Server;
    // An embedded installation (SQLite, local content) with an enrolled device and an update.
    let (dir, data, keys) = crate::common::quickstart_installation(&[]);
    let server = Server::serve(dir, keys.clone(), data.clone(), |_| {});
    assert!(server.state.config.database.url.is_none(), "embedded");
    let agent = enroll(&server, &server.dir.path().join("agents"), "m-1", "pilot", &token(&server, "pilot", 1));
    server.publish_signed("before.txt", b"published before the move\n");
    assert!(server.approve("pilot", "acme/before.txt").contains("is published"));
    let (code, out) = agent.check();
    assert_eq!(code, 0, "{out}");
    let (device, admin) = (
        server.repo_url.trim_start_matches("https://").trim_end_matches("/repo").to_owned(),
        server.admin_url.trim_start_matches("https://").to_owned(),
    );
    let dir = server.stop();

    // Moved, with verification; the configuration now names PostgreSQL and the bucket.
    let database = test_postgres_database().expect("runs on the PostgreSQL pass");
    let bucket = test_bucket().expect("runs on the S3 pass");
    let config = data.join("ringfence.toml");
    let migrate = |to: &str, blobs: &str| {
        Command::new(BIN)
            .args(["migrate", "--config"])
            .arg(&config)
            .args(["--to", to, "--blobs", blobs])
            .output()
            .unwrap()
    };
    let out = migrate(&database, &bucket);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("metadata:") && said.contains("blobs"), "{said}");
    assert!(std::fs::read_to_string(&config).unwrap().contains(&database));
    // A second move into a database that holds data is refused.
    std::fs::copy(config.with_extension("toml.before-migrate"), &config).unwrap();
    let out = migrate(&database, &test_bucket().unwrap());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds data"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = migrate(&test_postgres_database().unwrap(), &bucket);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds content"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        &config,
        format!(
            "{}\n[database]\nurl = {database:?}\n\n[content]\nurl = {bucket:?}\n",
            std::fs::read_to_string(&config).unwrap().trim_end()
        ),
    )
    .unwrap();

    // Served from there on the same addresses: the device goes on, and installs what is new.
    let server = Server::serve(dir, keys, data, |c| {
        c.device_listener.addr = device.clone();
        c.admin_listener.addr = admin.clone();
    });
    assert_eq!(server.state.config.database.url.as_deref(), Some(database.as_str()));
    let (code, out) = agent.check();
    assert_eq!(code, 0, "{out}");
    server.publish_signed("after.txt", b"published after the move\n");
    assert!(server.approve("pilot", "acme/after.txt").contains("is published"));
    let (code, out) = agent.check();
    assert_eq!(code, 0, "{out}");
    let states: Vec<String> = crate::agents::devices(&server)
        .into_iter()
        .flat_map(|d| d.updates)
        .map(|u| format!("{} {}", u.target, u.state.as_str()))
        .collect();
    assert!(states.contains(&"approvals/pilot/acme/before.txt installed".to_owned()), "{states:?}");
    assert!(states.contains(&"approvals/pilot/acme/after.txt installed".to_owned()), "{states:?}");
}

#[test]
fn downloads_can_come_straight_from_the_bucket_and_are_still_checked() {
    use crate::agents::{enroll, token};
    use crate::common::Server;
    let server = Server::start(|c| {
        c.content.redirect_downloads = true;
        // The reference client and curl below read without a device session.
        c.repository.access = ringfence_server::config::RepositoryAccess::Public;
    });
    assert!(server.state.config.content.url.is_some(), "runs on the S3 pass");
    let root = server.dir.path().join("agents");
    let token = token(&server, "pilot", 2);
    let (lab, strict) =
        (enroll(&server, &root, "r-1", "pilot", &token), enroll(&server, &root, "r-2", "pilot", &token));
    // One device may fetch content from the bucket (as `enroll --content-origin` sets), the
    // other was given no origin.
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let config = lab.state().join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    // (The test's bucket listens on loopback, the one place plain HTTP is allowed.)
    c["content_origins"] = json!([endpoint]);
    std::fs::write(&config, serde_json::to_vec(&c).unwrap()).unwrap();

    let publish = |id: &str| -> String {
        let (manifest, script) = script_update(&server.dir.path().join("work"), id);
        run_ok(server.cli().args(["publish", "--manifest"]).arg(&manifest).arg(&script));
        server.sign_all("publisher-acme");
        run_ok(server.cli().args(["approve", id, "--group", "pilot"]));
        ringfence_trust::sha256_hex(&std::fs::read(&script).unwrap())
    };
    let sha = publish("direct");

    // The node answers a download with a redirect to a pre-signed URL of the bucket.
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "--cacert"])
        .arg(&server.ca)
        .arg(format!("{}/targets/approvals/pilot/acme/{sha}.direct.sh", server.repo_url))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(answer.starts_with("307 ") && answer.contains(&endpoint) && answer.contains("X-Amz-Signature"), "{answer}");

    // The device that may follow it installs from the bucket; the other refuses plain HTTP.
    let (code, out) = lab.check();
    assert_eq!(code, 0, "{out}");
    assert!(lab.dir.join("ran-direct").exists(), "{out}");
    let (code, out) = strict.check();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("does not fetch from") && !out.contains("X-Amz-Signature"), "{out}");
    assert!(!strict.dir.join("ran-direct").exists());

    // Bytes changed in the bucket are refused: the signed hash decides, wherever they come from.
    let sha = publish("second");
    // The same length, other bytes: only the hash check can catch it.
    std::fs::write(crate::common::blob_file(&server, &sha), "#!/bin/sh\necho bad >> ran-second\n").unwrap();
    let (code, out) = lab.check();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("download"), "{out}");
    assert!(!lab.dir.join("ran-second").exists(), "{out}");
}
