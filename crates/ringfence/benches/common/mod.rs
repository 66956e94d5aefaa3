//! What the server benches share: a quickstart installation served in-process on loopback,
//! and accepted devices with live sessions.

use std::path::PathBuf;
use std::sync::Arc;

use ringfence_server::{AppState, BoundAddrs, Config};
use ringfence_store::{DeviceRecord, DeviceState, DeviceStore, SqlStore};

pub struct Bench {
    pub runtime: tokio::runtime::Runtime,
    pub state: Arc<AppState>,
    /// The database opened on its own, to set up fleets faster than the API would.
    pub db: SqlStore,
    pub data: PathBuf,
    _dir: tempfile::TempDir,
}

/// A running server; stopped when dropped.
pub struct Running {
    pub addrs: BoundAddrs,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Bench {
    /// Quickstart into a temporary directory, adjust the configuration, open the state.
    pub fn quickstart(adjust: impl FnOnce(&mut Config)) -> Bench {
        Self::quickstart_with(&[], adjust)
    }

    /// [`Bench::quickstart`] with more `quickstart` arguments (`--database URL`, say).
    pub fn quickstart_with(args: &[&str], adjust: impl FnOnce(&mut Config)) -> Bench {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_ringfence"))
            .args(["quickstart", "--no-serve", "--device-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .output()
            .expect("quickstart");
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        let data = dir.path().join("ringfence-data");
        let mut config = Config::load(&data.join("ringfence.toml")).expect("config");
        adjust(&mut config);
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        let db = runtime.block_on(ringfence_server::open_database(&config)).expect("database");
        let state = runtime.block_on(ringfence_server::open_state(config)).expect("state");
        Bench { runtime, state, db, data, _dir: dir }
    }

    /// A quickstart whose publisher key is online too, so a publish signs at once (pilot's
    /// approver is online already).
    #[allow(dead_code)] // only the benches that publish
    pub fn publishing() -> Bench {
        Self::quickstart(|c| {
            let keys = c.data_dir.parent().expect("dir").join("ringfence-keys");
            std::fs::copy(keys.join("publisher-acme.key"), c.data_dir.join("online-keys/publisher-acme.key"))
                .expect("publisher key");
        })
    }

    /// Upload `content` to the content store; its SHA-256.
    #[allow(dead_code)] // only the benches that publish
    pub fn upload(&self, content: &'static [u8]) -> ringfence_proto::Sha256Hex {
        let sha = ringfence_proto::Sha256Hex::parse(&ringfence_trust::sha256_hex(content)).expect("sha");
        let chunks = futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(content))]);
        let now = ringfence_server::unix_now();
        self.runtime
            .block_on(self.state.repo.upload_content(chunks, Some(sha.as_str()), 1 << 20, "bench", now))
            .expect("upload");
        sha
    }

    /// The SQLite database on a pool of its own, to write fleets faster than the API would.
    #[allow(dead_code)] // only the benches that write rows directly
    pub fn sqlite_pool(&self) -> sqlx::SqlitePool {
        self.runtime
            .block_on(sqlx::SqlitePool::connect(&format!("sqlite://{}", self.data.join("ringfence.db").display())))
            .expect("pool")
    }

    /// An accepted device numbered `i` in `group`.
    /// Device `i`'s key (from a seed, so benches can sign as any device).
    pub fn device_key(i: usize) -> ringfence_trust::SigningKey {
        let mut seed = [7u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
        ringfence_trust::SigningKey::from_seed(seed)
    }

    pub fn device(i: usize, group: &str, now: i64) -> DeviceRecord {
        DeviceRecord {
            id: format!("{i:032x}"),
            public_key: Self::device_key(i).public().to_tuf().keyval.public,
            state: DeviceState::Accepted,
            groups: vec![group.into()],
            hostname: format!("host-{i}"),
            inventory: "{}".into(),
            enrolled_at: now,
            last_checkin: None,
            timestamp_version: None,
        }
    }

    /// `count` accepted devices, each with a live session: their session tokens.
    pub fn devices_with_sessions(&self, count: usize, group: &str) -> Vec<String> {
        let now = ringfence_server::unix_now();
        self.runtime.block_on(async {
            let mut tokens = Vec::new();
            for i in 0..count {
                let device = Self::device(i, group, now);
                self.db.insert_device(&device).await.expect("device");
                let token = format!("rfds_{i:064x}");
                let hash = ringfence_trust::sha256_hex(token.as_bytes());
                self.db.insert_session(&hash, &device.id, now + 3600).await.expect("session");
                tokens.push(token);
            }
            tokens
        })
    }

    /// Serve both listeners on loopback until the returned value is dropped.
    pub fn serve(&self) -> Running {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = self.state.clone();
        let handle = self.runtime.handle().clone();
        let thread = std::thread::spawn(move || {
            let stopped = async {
                let _ = stop_rx.await;
            };
            handle.block_on(ringfence_server::serve(state, stopped, Some(ready_tx))).expect("serve");
        });
        let addrs = self.runtime.block_on(ready_rx).expect("ready");
        Running { addrs, stop: Some(stop_tx), thread: Some(thread) }
    }

    pub fn ca(&self) -> PathBuf {
        self.data.join("tls/cert.pem")
    }

    /// One more node on the same database and content: its own state, its own listeners.
    #[allow(dead_code)] // only the benches that run several nodes
    pub fn another_node(&self, adjust: impl FnOnce(&mut Config)) -> (Arc<AppState>, Running) {
        let mut config = Config::load(&self.data.join("ringfence.toml")).expect("config");
        adjust(&mut config);
        let state = self.runtime.block_on(ringfence_server::open_state(config)).expect("state");
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = state.clone();
        let handle = self.runtime.handle().clone();
        let thread = std::thread::spawn(move || {
            let stopped = async {
                let _ = stop_rx.await;
            };
            handle.block_on(ringfence_server::serve(serving, stopped, Some(ready_tx))).expect("serve");
        });
        let addrs = self.runtime.block_on(ready_rx).expect("ready");
        (state, Running { addrs, stop: Some(stop_tx), thread: Some(thread) })
    }
}

/// A bench update of `acme`'s: a low-severity bug fix whose `files` the `file` module places.
#[allow(dead_code)] // only the benches that publish
pub fn manifest(id: String, files: Vec<ringfence_proto::api::UpdateFile>) -> ringfence_proto::api::UpdateManifest {
    use ringfence_proto::api::{Applicability, Classification, Installer, Severity, UpdateManifest};
    UpdateManifest {
        id,
        publisher: ringfence_proto::PublisherName::parse("acme").expect("name"),
        title: "bench".into(),
        description: String::new(),
        product: "bench".into(),
        classification: Classification::Bugfix,
        severity: Severity::Low,
        kb: vec![],
        cves: vec![],
        release_date: "2026-11-26".into(),
        supersedes: vec![],
        prerequisites: vec![],
        applicability: Applicability::default(),
        installer: Installer {
            module: "file".into(),
            arguments: vec![],
            reboot_required: false,
            health_check: vec![],
            exit_codes: vec![],
            product_code: None,
        },
        files,
    }
}

/// The check-in a bench device sends.
#[allow(dead_code)] // only the check-in benches
pub fn checkin_body() -> ringfence_proto::device::CheckinRequest {
    ringfence_proto::device::CheckinRequest {
        inventory: ringfence_proto::device::Inventory {
            hostname: "bench".into(),
            os: "linux".into(),
            os_version: "12".into(),
            architecture: "x86_64".into(),
            agent_version: "bench".into(),
            installed: vec![],
        },
        timestamp_version: 1,
    }
}

/// Requests per second over one round of `length`: `threads` clients, each on its own
/// kept-alive connection to one of `bases` (in turn), posting check-ins for rotating devices
/// (`checkin`) or getting `/healthz`.
#[allow(dead_code)] // only the check-in benches
pub fn round(
    bases: &[String],
    ca: &std::path::Path,
    tokens: &Arc<Vec<String>>,
    threads: usize,
    length: std::time::Duration,
    checkin: bool,
) -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    let done = Arc::new(AtomicU64::new(0));
    let deadline = std::time::Instant::now() + length;
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let client = ringfence_cli::http::Client::new(&bases[t % bases.len()], None, ca).expect("client");
            let done = done.clone();
            let tokens = tokens.clone();
            std::thread::spawn(move || {
                let body = checkin_body();
                let mut i = t;
                while std::time::Instant::now() < deadline {
                    let ok = if checkin {
                        let token = &tokens[i % tokens.len()];
                        let c = client.with_token(token);
                        c.send_json("POST", "/device/v1/checkin", &body).map(|a| a.status == 200).unwrap_or(false)
                    } else {
                        client.get("/healthz").map(|a| a.status == 200).unwrap_or(false)
                    };
                    assert!(ok, "request failed");
                    done.fetch_add(1, Ordering::Relaxed);
                    i += threads;
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// A report batch for benches that call the store directly: the server checks signatures, the
/// store keeps what it is given.
#[allow(dead_code)] // only the benches that call the store directly
pub fn unsigned_batch() -> ringfence_store::SignedBatch {
    ringfence_store::SignedBatch { message: b"bench".to_vec(), signature: "00".repeat(64) }
}

/// Approve update `update` for `group` to install, signed by the online keys: whether it was
/// published at once.
#[allow(dead_code)] // only the benches that approve
pub async fn approve_install(state: &AppState, group: &str, update: &str, now: i64) -> bool {
    let request = ringfence_proto::api::ApprovalRequest {
        group: ringfence_proto::GroupName::parse(group).expect("group"),
        update: Some(update.to_owned()),
        target: None,
        action: ringfence_proto::tuf::ApprovalAction::Install,
        deadline: None,
        reason: None,
        rollout: None,
    };
    state.repo.approve(request, "bench", now).await.expect("approve").published
}
