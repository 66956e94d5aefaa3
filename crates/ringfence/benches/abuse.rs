//! The device listener under abuse, measured. Run with `cargo bench -p ringfence --bench abuse`.
//!
//! 1. Report ingest: a probe device's 256-report batches per second (40 timed) with 0, 100k
//!    and 1M reports already stored by 1,000 other devices (1,000 each, the default history).
//! 2. Check-ins of well-behaved devices (8 threads, keep-alive, 1,000 devices with sessions)
//!    while each attack runs from other threads, as a ratio of the rate without an attack
//!    in the same run. Rounds are bounded (3 s); the median of 3 is reported.

// A harness, not product code: a failed step is a failed test or measurement.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ringfence_store::{DeviceStore, ReportLimits, ReportRecord};

mod common;
use common::Bench;

const DEVICES: usize = 1_000;
const THREADS: usize = 8;
const ROUND: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;

fn main() {
    let bench = Bench::quickstart(|_| {});
    let runtime = &bench.runtime;
    let now = ringfence_server::unix_now();
    let device = |i: usize| Bench::device(i, "pilot", now);

    // 1. Ingest at 0, 100k and 1M stored reports: the stored reports belong to other devices
    //    (1,000 each, the default history), as in a fleet; one probe device's batches are timed.
    let store = bench.db.clone();
    let limits = ReportLimits { history: 1000, max_targets: 4096, max_batch_bytes: 64 << 20, forward: false };
    let batch = |tag: &str, size: usize| -> Vec<ReportRecord> {
        (0..size)
            .map(|i| ReportRecord {
                id: format!("{tag}-{i}"),
                target: format!("approvals/pilot/acme/f{}", i % 16),
                state: "installed".into(),
                reason: None,
                exit_code: None,
                at: i as i64,
            })
            .collect()
    };
    let probe = device(usize::MAX >> 8);
    runtime.block_on(store.insert_device(&probe)).expect("device");
    let mut stored = 0u64;
    let mut filler = 0usize;
    let mut probe_batches = 0u64;
    println!("| reports stored (other devices) | probe batches of 256 per second | reports per second |");
    println!("|---|---|---|");
    let mut ingest = Vec::new();
    for milestone in [0u64, 100_000, 1_000_000] {
        while stored < milestone {
            let d = device(1_000_000 + filler);
            runtime.block_on(store.insert_device(&d)).expect("device");
            runtime
                .block_on(store.insert_reports(&d.id, &batch("fill", 1000), &common::unsigned_batch(), now, limits))
                .expect("fill");
            stored += 1000;
            filler += 1;
        }
        let started = Instant::now();
        for _ in 0..40 {
            let records = batch(&format!("p{probe_batches}"), 256);
            runtime
                .block_on(store.insert_reports(&probe.id, &records, &common::unsigned_batch(), now, limits))
                .expect("reports");
            probe_batches += 1;
        }
        let per_second = 40.0 / started.elapsed().as_secs_f64();
        ingest.push(per_second);
        println!("| {milestone} | {per_second:.0} | {:.0} |", per_second * 256.0);
    }
    println!("1M / 0: {:.2}", ingest[2] / ingest[0]);

    // 2. Check-ins under attack.
    let tokens = bench.devices_with_sessions(DEVICES, "pilot");
    let server = bench.serve();
    let addrs = server.addrs;
    let base = format!("https://{}", addrs.device);
    let ca = bench.ca();
    let tokens = Arc::new(tokens);
    let attacks: [(&str, Attack); 4] = [
        ("no attack (baseline)", Attack::None),
        ("256 slow senders from 4 addresses", Attack::SlowSenders),
        ("anonymous enrollment flood, 2 threads", Attack::EnrollFlood),
        ("one device posting report batches, 2 threads", Attack::ReportFlood),
    ];
    let mut medians = Vec::new();
    println!();
    println!("| while | check-ins per second (median) | rounds | ratio to baseline |");
    println!("|---|---|---|---|");
    for (name, attack) in attacks {
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let stop = Arc::new(AtomicBool::new(false));
            let attackers = attack.start(&base, addrs.device, &ca, &tokens[0], stop.clone());
            rounds.push(round(&base, &ca, &tokens));
            stop.store(true, Ordering::Relaxed);
            for a in attackers {
                let _ = a.join();
            }
        }
        rounds.sort_by(f64::total_cmp);
        let median = rounds[ROUNDS / 2];
        medians.push(median);
        println!("| {name} | {median:.0} | {rounds:.0?} | {:.2} |", median / medians[0]);
    }
    drop(server);
}

#[derive(Clone, Copy)]
enum Attack {
    None,
    SlowSenders,
    EnrollFlood,
    ReportFlood,
}

impl Attack {
    fn start(
        self,
        base: &str,
        addr: SocketAddr,
        ca: &std::path::Path,
        token: &str,
        stop: Arc<AtomicBool>,
    ) -> Vec<std::thread::JoinHandle<()>> {
        match self {
            Attack::None => Vec::new(),
            Attack::SlowSenders => {
                let config = tls_config(ca);
                vec![std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for source in 2..6 {
                        for _ in 0..64 {
                            if let Some(mut tls) = connect_from(addr, &format!("127.0.0.{source}"), &config) {
                                let head = "POST /device/v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n{";
                                if tls.write_all(head.as_bytes()).is_ok() {
                                    held.push(tls);
                                }
                            }
                        }
                    }
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    drop(held);
                })]
            }
            Attack::EnrollFlood => (0..2)
                .map(|_| {
                    let client = ringfence_cli::http::Client::new(base, None, ca).expect("client");
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            let key = ringfence_trust::SigningKey::generate();
                            let public = key.public().to_tuf().keyval.public;
                            let groups = [ringfence_proto::GroupName::parse("pilot").unwrap()];
                            let message = ringfence_proto::device::enrollment_message(&public, &groups);
                            let body = serde_json::json!({"token": null, "public_key": public, "groups": ["pilot"],
                                "inventory": {"hostname": "x", "os": "linux", "os_version": "1", "architecture": "x",
                                "agent_version": "x", "installed": []}, "signature": hex(&key.sign(&message))});
                            let _ = client.send_json("POST", "/device/v1/enroll", &body);
                        }
                    })
                })
                .collect(),
            Attack::ReportFlood => (0..2)
                .map(|t| {
                    let client = ringfence_cli::http::Client::new(base, None, ca).expect("client").with_token(token);
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let reports: Vec<serde_json::Value> = (0..256)
                                .map(|i| serde_json::json!({"id": format!("f{t}-{n}-{i}"),
                                    "target": format!("approvals/pilot/acme/f{}", i % 16), "state": "installed", "at": i}))
                                .collect();
                            // Signed by device 0, whose session this is: the flood is of batches
                            // the server must verify and store, not ones it refuses cheaply.
                            let parsed: Vec<ringfence_proto::device::StatusReport> =
                                serde_json::from_value(serde_json::json!(reports)).expect("reports");
                            let message =
                                ringfence_proto::device::report_batch_message(&format!("{:032x}", 0), &parsed);
                            let signature = hex(&Bench::device_key(0).sign(&message));
                            let batch = serde_json::json!({"reports": reports, "signature": signature});
                            let _ = client.send_json("POST", "/device/v1/reports", &batch);
                            n += 1;
                        }
                    })
                })
                .collect(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tls_config(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

fn connect_from(to: SocketAddr, source: &str, config: &Arc<rustls::ClientConfig>) -> Option<Tls> {
    let source: std::net::IpAddr = source.parse().ok()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    let stream = rt
        .block_on(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            socket.connect(to).await
        })
        .ok()?;
    let tcp = stream.into_std().ok()?;
    tcp.set_nonblocking(false).ok()?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").ok()?;
    let conn = rustls::ClientConnection::new(config.clone(), name).ok()?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).ok()?;
    }
    Some(tls)
}

/// Check-ins per second over one bounded round.
fn round(base: &str, ca: &std::path::Path, tokens: &Arc<Vec<String>>) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + ROUND;
    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = ringfence_cli::http::Client::new(base, None, ca).expect("client");
            let (done, failed, tokens) = (done.clone(), failed.clone(), tokens.clone());
            std::thread::spawn(move || {
                let body = common::checkin_body();
                // Device 0 is the report flooder's; the well-behaved ones start at 1.
                let mut i = t + 1;
                while Instant::now() < deadline {
                    let c = client.with_token(&tokens[1 + (i % (tokens.len() - 1))]);
                    let ok = c.send_json("POST", "/device/v1/checkin", &body).map(|a| a.status == 200).unwrap_or(false);
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed)
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed)
                    };
                    i += THREADS;
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("  {failed} check-ins failed in this round");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
