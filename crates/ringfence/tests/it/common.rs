//! A Ringfence installation made by the real `ringfence quickstart`, served on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ringfence_cli::http::Client;
use ringfence_server::{AppState, Config};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_ringfence");

pub struct Server {
    pub dir: tempfile::TempDir,
    pub keys: PathBuf,
    pub data: PathBuf,
    pub admin_url: String,
    pub repo_url: String,
    pub ca: PathBuf,
    pub token: String,
    pub state: Arc<AppState>,
    /// The database and content store opened on their own, as someone with the server's disk
    /// has them: what tests that play the attacker (or inspect the result) use. The server
    /// itself reaches them only through its domain layer.
    pub db: ringfence_store::SqlStore,
    pub blobs: ringfence_store::BlobStore,
    pub runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Server {
    /// An online key from the data directory, as an attacker who stole the disk has it.
    pub fn online_key(&self, file: &str) -> ringfence_trust::SigningKey {
        let pem = std::fs::read_to_string(self.data.join("online-keys").join(file)).unwrap();
        ringfence_trust::SigningKey::from_pem(&pem, None).unwrap()
    }

    /// The stolen-server attack: write the next version of `role` (changed by `edit`, signed
    /// with every online key) with a fresh snapshot and timestamp straight into the database.
    pub fn forge_role(&self, role: &str, edit: impl FnOnce(&mut ringfence_proto::tuf::Targets)) {
        self.forge_role_signed(role, edit, &[]);
    }

    /// [`Server::forge_role`], also signed by `keys` (say, a publisher key the attacker holds).
    pub fn forge_role_signed(
        &self,
        role: &str,
        edit: impl FnOnce(&mut ringfence_proto::tuf::Targets),
        keys: &[&ringfence_trust::SigningKey],
    ) {
        use ringfence_proto::tuf::Targets;
        use ringfence_store::Store;
        use ringfence_trust::Envelope;
        let store = &self.db;
        let current = self.runtime.block_on(store.latest_metadata(role)).unwrap().unwrap();
        let mut next = Envelope::<Targets>::parse(&current.bytes, 1 << 24).unwrap().signed;
        next.version += 1;
        edit(&mut next);
        self.forge_publish(vec![(role.to_owned(), next)], keys);
    }

    /// Publish `docs` straight into the database, each signed with every online key and
    /// `keys`, with a fresh snapshot and timestamp signed by the online keys — and on the
    /// transparency log, as a thief holding the online log key would do to get past agents
    /// (the other checks are what stop it then; the log keeps the evidence).
    pub fn forge_publish(
        &self,
        docs: Vec<(String, ringfence_proto::tuf::Targets)>,
        keys: &[&ringfence_trust::SigningKey],
    ) {
        self.forge(docs, keys, true);
    }

    /// [`Server::forge_publish`] without putting the forgery on the transparency log.
    pub fn forge_publish_unlogged(
        &self,
        docs: Vec<(String, ringfence_proto::tuf::Targets)>,
        keys: &[&ringfence_trust::SigningKey],
    ) {
        self.forge(docs, keys, false);
    }

    fn forge(
        &self,
        docs: Vec<(String, ringfence_proto::tuf::Targets)>,
        keys: &[&ringfence_trust::SigningKey],
        logged: bool,
    ) {
        use ringfence_proto::tuf::{Snapshot, Timestamp};
        use ringfence_store::{MetadataRecord, Store};
        use ringfence_trust::{Envelope, writer};
        let store = &self.db;
        let latest = |r: &str| self.runtime.block_on(store.latest_metadata(r)).unwrap().unwrap();
        let (snapshot, timestamp) = (latest("snapshot"), latest("timestamp"));
        let now = ringfence_server::unix_now();
        let mut records = Vec::new();
        let mut listed = Vec::new();
        for (role, doc) in docs {
            let mut forged = Envelope::new(doc).unwrap();
            for key in ["auto-approver.key", "snapshot.key", "timestamp.key"] {
                forged.sign(&self.online_key(key));
            }
            for key in keys {
                forged.sign(key);
            }
            let bytes = forged.to_bytes().unwrap();
            listed.push((role.clone(), forged.signed.version, bytes.len() as u64));
            records.push(MetadataRecord { role, version: forged.signed.version, expires: now + 86_400, bytes });
        }
        let snap = Envelope::<Snapshot>::parse(&snapshot.bytes, 1 << 24).unwrap();
        let mut snap =
            Envelope::new(writer::next_snapshot(Some(&snap.signed), snap.signed.version + 1, now + 86_400, &listed))
                .unwrap();
        snap.sign(&self.online_key("snapshot.key"));
        let snap_bytes = snap.to_bytes().unwrap();
        let ts_version = Envelope::<Timestamp>::parse(&timestamp.bytes, 1 << 16).unwrap().signed.version + 1;
        let mut ts =
            Envelope::new(writer::timestamp(ts_version, now + 86_400, snap.signed.version, &snap_bytes)).unwrap();
        ts.sign(&self.online_key("timestamp.key"));
        let record =
            |role: &str, version, bytes| MetadataRecord { role: role.into(), version, expires: now + 86_400, bytes };
        records.push(record("snapshot", snap.signed.version, snap_bytes));
        records.push(record("timestamp", ts_version, ts.to_bytes().unwrap()));
        let log: Vec<Vec<u8>> = if logged {
            records
                .iter()
                .map(|r| {
                    ringfence_tlog::entry::Entry::Metadata {
                        role: r.role.clone(),
                        version: r.version,
                        sha256: ringfence_trust::sha256_hex(&r.bytes),
                        length: r.bytes.len() as u64,
                    }
                    .to_bytes()
                    .unwrap()
                })
                .collect()
        } else {
            Vec::new()
        };
        self.runtime.block_on(store.publish(&records, &[], &log)).unwrap();
        // The thief owns the process too: what it serves from memory is what it wrote.
        self.state.repo.metadata_changed_elsewhere();
    }

    /// A delegation of every path (`path_hash_prefixes: [""]`, not terminating) named `name`
    /// to the server's online auto-approver key: what a hidden delegation looks like.
    pub fn all_paths_to_server(&self, name: &str) -> (ringfence_proto::tuf::Key, ringfence_proto::tuf::DelegatedRole) {
        let auto = self.online_key("auto-approver.key").public();
        let role = ringfence_proto::tuf::DelegatedRole {
            name: name.into(),
            keyids: vec![auto.key_id().to_string()],
            threshold: 1,
            terminating: false,
            paths: None,
            path_hash_prefixes: Some(vec![String::new()]),
            parent: None,
            unrecognized: Default::default(),
        };
        (auto.to_tuf(), role)
    }

    /// The signed part of the pending version of `role`.
    pub fn pending_doc(&self, role: &str) -> ringfence_proto::tuf::Targets {
        use ringfence_store::Store;
        let record = self.runtime.block_on(self.db.pending(role)).unwrap().expect("a pending version");
        ringfence_trust::Envelope::<ringfence_proto::tuf::Targets>::parse(&record.bytes, 1 << 24).unwrap().signed
    }

    /// The attacker writes a pending version straight into the database, and onto the
    /// transparency log (it holds the online log key), as it would to get it signed.
    pub fn put_pending(&self, role: &str, doc: ringfence_proto::tuf::Targets) {
        self.write_pending(role, doc, true);
    }

    /// [`Server::put_pending`] without a log entry.
    pub fn put_pending_unlogged(&self, role: &str, doc: ringfence_proto::tuf::Targets) {
        self.write_pending(role, doc, false);
    }

    fn write_pending(&self, role: &str, doc: ringfence_proto::tuf::Targets, logged: bool) {
        use ringfence_store::{PendingRecord, Store};
        let env = ringfence_trust::Envelope::new(doc).unwrap();
        let bytes = env.to_bytes().unwrap();
        let version = env.signed.version;
        let entry = ringfence_tlog::entry::Entry::Pending {
            role: role.into(),
            version,
            sha256: ringfence_trust::sha256_hex(env.canonical_signed()),
        };
        let log = if logged { vec![entry.to_bytes().unwrap()] } else { Vec::new() };
        let record = PendingRecord { role: role.into(), version, bytes, created_at: ringfence_server::unix_now() };
        self.runtime.block_on(self.db.put_pending(&record, &log)).unwrap();
    }

    /// A key file from the keys directory (the attacker does not have these).
    pub fn offline_key(&self, name: &str) -> ringfence_trust::SigningKey {
        ringfence_trust::SigningKey::from_pem(&std::fs::read_to_string(self.key(name)).unwrap(), None).unwrap()
    }

    /// The published version of `role` as a document.
    pub fn published(&self, role: &str) -> ringfence_proto::tuf::Targets {
        let bytes = self.admin().get(&format!("/api/v1/metadata/{role}")).unwrap().ok().unwrap();
        ringfence_trust::Envelope::<ringfence_proto::tuf::Targets>::parse(&bytes, 1 << 24).unwrap().signed
    }

    /// `ringfence pending sign[-all] ...` that may fail: (succeeded, stdout, stderr).
    pub fn try_sign(&self, role: Option<&str>, key: &str, extra: &[&str]) -> (bool, String, String) {
        let mut c = self.cli();
        match role {
            Some(role) => c.args(["pending", "sign", role]),
            None => c.args(["pending", "sign-all"]),
        };
        c.args(["--yes", "--key"]).arg(self.key(key)).arg("--trusted-root").arg(self.keys.join("1.root.json"));
        let out = c.args(extra).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    /// Quickstart into a temporary directory, adjust the configuration, serve.
    pub fn start(adjust: impl FnOnce(&mut Config)) -> Server {
        let mut extra = Vec::new();
        if let Some(url) = test_postgres_database() {
            extra.extend(["--database".to_owned(), url]);
        }
        if let Some(url) = test_bucket() {
            extra.extend(["--content".to_owned(), url]);
        }
        let (dir, data, keys) = quickstart_installation(&extra.iter().map(String::as_str).collect::<Vec<_>>());
        Self::serve(dir, keys, data, adjust)
    }

    /// Serve the installation in `data` (made by `quickstart` or `init` + `import`).
    pub fn serve(dir: tempfile::TempDir, keys: PathBuf, data: PathBuf, adjust: impl FnOnce(&mut Config)) -> Server {
        let mut config = Config::load(&data.join("ringfence.toml")).expect("config");
        adjust(&mut config);
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let db = runtime.block_on(ringfence_server::open_database(&config)).expect("database");
        let blobs = ringfence_server::open_content(&config).expect("content store");
        let state = runtime.block_on(ringfence_server::open_state(config)).expect("open state");
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serve_state = state.clone();
        let handle = runtime.handle().clone();
        let thread = std::thread::spawn(move || {
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
        let addrs = runtime.block_on(ready_rx).expect("server ready");
        let token = std::fs::read_to_string(data.join("admin.token")).expect("token");
        Server {
            admin_url: format!("https://{}", addrs.admin),
            repo_url: format!("https://{}/repo", addrs.device),
            ca: data.join("tls/cert.pem"),
            keys,
            data,
            token,
            state,
            db,
            blobs,
            runtime,
            dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Wait (at most 15 s) until everything queued is on the log and served.
    pub fn wait_for_log(&self) -> u64 {
        use ringfence_store::LogStore;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let (queued, size, served) = self.runtime.block_on(async {
                (
                    self.db.log_queue(1).await.unwrap().len(),
                    self.db.log_size().await.unwrap(),
                    self.db.latest_checkpoint().await.unwrap().map_or(0, |c| c.size),
                )
            });
            if queued == 0 && size > 0 && served == size {
                return size;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the log did not catch up: {queued} queued, {served} of {size}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// A client of the device listener (no token).
    pub fn device_client(&self) -> Client {
        Client::new(self.repo_url.trim_end_matches("/repo"), None, &self.ca).expect("client")
    }

    /// Stop serving and hand back the installation's directory (kept, not deleted).
    pub fn stop(mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    pub fn client(&self, token: Option<&str>) -> Client {
        Client::new(&self.admin_url, token.map(str::to_owned), &self.ca).expect("client")
    }

    pub fn admin(&self) -> Client {
        self.client(Some(&self.token))
    }

    /// The `ringfence` binary with the admin URL, CA and token in its environment.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("RINGFENCE_ADMIN_URL", &self.admin_url).env("RINGFENCE_CA", &self.ca).env("RINGFENCE_TOKEN", &self.token);
        // The signers' trusted state stays with this server's temporary directory.
        c.env("RINGFENCE_SIGNER_STATE", self.dir.path().join("signer-state"));
        c
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.keys.join(format!("{name}.key"))
    }

    /// Publish `content` as `acme/<name>` and sign its bin with the publisher key.
    pub fn publish_signed(&self, name: &str, content: &[u8]) {
        let work = self.dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let file = work.join(name);
        std::fs::write(&file, content).unwrap();
        let manifest = work.join(format!("{name}.manifest.json"));
        let mut m: Value = serde_json::from_str(include_str!("../../../../docs/examples/hello.manifest.json")).unwrap();
        m["id"] = Value::from(format!("acme-{name}"));
        std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
        let out = run_ok(self.cli().args(["publish", "--json", "--manifest"]).arg(&manifest).arg(&file));
        let outcome: Value = serde_json::from_str(out.trim()).expect("publish outcome");
        for pending in outcome["pending"].as_array().unwrap() {
            let role = pending["role"].as_str().unwrap();
            self.sign(role, "publisher-acme");
        }
    }

    /// `ringfence pending sign-all` with the key `<keys>/<key>.key`.
    pub fn sign_all(&self, key: &str) -> String {
        run_ok(
            self.cli()
                .args(["pending", "sign-all", "--yes", "--key"])
                .arg(self.key(key))
                .arg("--trusted-root")
                .arg(self.keys.join("1.root.json")),
        )
    }

    pub fn sign(&self, role: &str, key: &str) -> String {
        run_ok(
            self.cli()
                .args(["pending", "sign", role, "--yes", "--key"])
                .arg(self.key(key))
                .arg("--trusted-root")
                .arg(self.keys.join("1.root.json")),
        )
    }

    pub fn approve(&self, group: &str, target: &str) -> String {
        run_ok(self.cli().args(["approve", "--group", group, "--target", target]))
    }

    /// Every published metadata file, named as served (`N.role.json`, `timestamp.json`).
    pub fn dump_metadata(&self, out: &Path) {
        use ringfence_store::Store;
        std::fs::create_dir_all(out).unwrap();
        let store = &self.db;
        self.runtime.block_on(async {
            for latest in store.latest_all().await.unwrap() {
                if latest.role == "timestamp" {
                    std::fs::write(out.join("timestamp.json"), &latest.bytes).unwrap();
                    continue;
                }
                for v in 1..=latest.version {
                    if let Some(r) = store.metadata_version(&latest.role, v).await.unwrap() {
                        std::fs::write(out.join(format!("{v}.{}.json", r.role)), &r.bytes).unwrap();
                    }
                }
            }
        });
    }
}

/// The Python interpreter of the interop virtual environment.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("RINGFENCE_PYTHON") {
        return p.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
}

pub fn interop_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop").join(name)
}

/// Run python-tuf's ngclient; returns its JSON answer and whether it succeeded.
pub fn tuf_client(server: &Server, metadata_dir: &Path, args: &[&str]) -> (bool, Value) {
    let out = Command::new(python())
        .arg(interop_script("tuf_client.py"))
        .args([
            "--metadata-url",
            &format!("{}/metadata/", server.repo_url),
            "--targets-url",
            &format!("{}/targets/", server.repo_url),
        ])
        .arg("--root")
        .arg(server.data.join("1.root.json"))
        .arg("--metadata-dir")
        .arg(metadata_dir)
        .arg("--ca-cert")
        .arg(&server.ca)
        .args(args)
        .output()
        .expect("run python-tuf client (did scripts/test create .venv?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let value: Value = serde_json::from_str(line)
        .unwrap_or_else(|_| panic!("client said: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), value)
}

/// The `ringfence-agent` binary next to `ringfence`; `scripts/test` builds it first (cargo
/// builds another package's binary only when asked).
pub fn agent_bin() -> PathBuf {
    let path = Path::new(BIN).with_file_name("ringfence-agent");
    assert!(
        path.exists(),
        "{} is missing: run the suite with scripts/test (cargo builds every workspace binary)",
        path.display()
    );
    path
}

/// `ringfence-agent tuf ...` against `server`: (succeeded, stderr).
pub fn agent_tuf(
    server: &Server,
    metadata_dir: &Path,
    action: &[&str],
    targets: &[&str],
    target_dir: &Path,
) -> (bool, String) {
    let mut c = Command::new(agent_bin());
    c.arg("tuf").arg("--metadata-dir").arg(metadata_dir).arg("--ca").arg(&server.ca);
    c.arg("--metadata-url").arg(format!("{}/metadata/", server.repo_url));
    c.arg("--target-base-url").arg(format!("{}/targets/", server.repo_url)).arg("--target-dir").arg(target_dir);
    for t in targets {
        c.arg("--target-name").arg(t);
    }
    if !metadata_dir.join("root.json").exists() {
        let out = Command::new(agent_bin())
            .arg("tuf")
            .arg("--metadata-dir")
            .arg(metadata_dir)
            .arg("init")
            .arg(server.data.join("1.root.json"))
            .output()
            .unwrap();
        assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = c.args(action).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// With `RINGFENCE_TEST_DATABASE=postgres`: a new, empty database in the PostgreSQL server
/// `RINGFENCE_TEST_POSTGRES` names (`scripts/test` starts one for the whole run), for one
/// server of one test; otherwise none (the SQLite file in the data directory).
pub fn test_postgres_database() -> Option<String> {
    if std::env::var("RINGFENCE_TEST_DATABASE").as_deref() != Ok("postgres") {
        return None;
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let server = std::env::var("RINGFENCE_TEST_POSTGRES").expect("RINGFENCE_TEST_POSTGRES: the test server's URL");
    let name = format!("it_{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    psql(&format!("{server}/postgres"), &format!("DROP DATABASE IF EXISTS {name}"));
    psql(&format!("{server}/postgres"), &format!("CREATE DATABASE {name}"));
    Some(format!("{server}/{name}"))
}

/// With `RINGFENCE_TEST_S3_ROOT` set (the directory of the S3-compatible server `scripts/test`
/// starts, `AWS_*` in the environment pointing at it): a new, empty bucket for one server of
/// one test; otherwise none (content in the data directory).
pub fn test_bucket() -> Option<String> {
    let root = std::env::var_os("RINGFENCE_TEST_S3_ROOT")?;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!("it-{}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    // The server keeps a bucket as a directory under its root.
    std::fs::create_dir_all(Path::new(&root).join(&name)).unwrap();
    Some(format!("s3://{name}"))
}

/// Where a stored blob's bytes are on disk, for tests that tamper with them as the owner of
/// the storage would: in the data directory, or in the S3 server's directory.
pub fn blob_file(server: &Server, sha256: &str) -> PathBuf {
    match (&server.state.config.content.url, std::env::var_os("RINGFENCE_TEST_S3_ROOT")) {
        (Some(url), Some(root)) => {
            let bucket = url.strip_prefix("s3://").unwrap();
            Path::new(&root).join(bucket).join(ringfence_store::BlobStore::key_of(sha256).unwrap())
        }
        _ => server.blobs.path_of(sha256).unwrap(),
    }
}

/// Run one SQL statement with `psql`, returning what it prints (unaligned, tuples only).
fn psql(url: &str, statement: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", statement])
        .output()
        .unwrap();
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The attacker edits the database directly (with the engine's own client, not our code).
pub fn sql(server: &Server, statement: &str) {
    if let Some(url) = &server.state.config.database.url {
        psql(url, statement);
    } else {
        let out = Command::new("python3")
            .arg("-c")
            .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()")
            .arg(server.data.join("ringfence.db"))
            .arg(statement)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // The thief owns the process too: what it serves from memory is what it wrote.
    server.state.repo.metadata_changed_elsewhere();
    server.state.devices.changed_elsewhere();
}

/// A number the attacker's database query returns (`SELECT COUNT(*) ...`).
pub fn sql_number(server: &Server, query: &str) -> i64 {
    sql_column(server, query)[0].parse().unwrap()
}

/// The first column of every row a database query returns.
pub fn sql_column(server: &Server, query: &str) -> Vec<String> {
    if let Some(url) = &server.state.config.database.url {
        return psql(url, query).lines().map(str::to_owned).collect();
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; [print(r[0]) for r in sqlite3.connect(sys.argv[1]).execute(sys.argv[2])]")
        .arg(server.data.join("ringfence.db"))
        .arg(query)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// A quickstart installation in a temporary directory, not served (its listeners on loopback
/// port 0), with `extra` arguments: the directory, its `ringfence-data` and `ringfence-keys`.
pub fn quickstart_installation(extra: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    run_ok(
        Command::new(BIN)
            .args(["quickstart", "--no-serve", "--device-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .args(extra)
            .arg("--dir")
            .arg(dir.path()),
    );
    let (data, keys) = (dir.path().join("ringfence-data"), dir.path().join("ringfence-keys"));
    (dir, data, keys)
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Wait (at most 30 s) until something listens on loopback `port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
