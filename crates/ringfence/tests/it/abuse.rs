//! The device listener under abuse: one hostile device or anonymous client, bounded in count
//! and time, while a well-behaved device keeps working. Every assertion is on status codes and
//! stored counts, never on timings.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ringfence_proto::device::{ChallengeResponse, SessionResponse, enrollment_message, session_message};
use ringfence_store::DeviceStore;
use ringfence_trust::SigningKey;
use serde_json::{Value, json};

use crate::common::{Server, run_ok, sql_column, sql_number};

type Tls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

fn device_addr(server: &Server) -> SocketAddr {
    let base = server.repo_url.trim_start_matches("https://").trim_end_matches("/repo");
    base.parse().unwrap()
}

fn client_config(server: &Server) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&server.ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS connection to the device listener from `source` (another loopback address), or
/// `None` if the server closed it during the handshake.
fn connect_from(server: &Server, source: &str, config: &Arc<rustls::ClientConfig>) -> Option<Tls> {
    let socket = socket_from(source);
    let tcp = socket.connect(device_addr(server)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).ok()?;
    }
    Some(tls)
}

/// A blocking TCP socket bound to `source` (127.0.0.0/8 is all loopback on Linux).
fn socket_from(source: &str) -> BoundSocket {
    BoundSocket(source.parse().unwrap())
}

struct BoundSocket(std::net::IpAddr);

impl BoundSocket {
    fn connect(&self, to: SocketAddr) -> std::io::Result<std::net::TcpStream> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let source = self.0;
        let stream = rt.block_on(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            socket.connect(to).await
        })?;
        let std = stream.into_std()?;
        std.set_nonblocking(false)?;
        Ok(std)
    }
}

/// What the server answers on `tls` (status line), or `None` if it closed the connection.
fn status_line(tls: &mut Tls) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        match tls.read(&mut chunk) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("neither an answer nor a closed connection after 20 s")
            }
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.lines().next().map(str::to_owned)
}

/// A token-less enrollment of a new key sent from `source`: the status line of the answer.
fn enroll_from(server: &Server, source: &str, config: &Arc<rustls::ClientConfig>) -> Option<String> {
    let mut tls = connect_from(server, source, config)?;
    let body = enrollment(&SigningKey::generate(), None, 0).to_string();
    let request = format!(
        "POST /device/v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).unwrap();
    status_line(&mut tls)
}

fn device_client(server: &Server) -> ringfence_cli::http::Client {
    let base = server.repo_url.trim_end_matches("/repo").to_owned();
    ringfence_cli::http::Client::new(&base, None, &server.ca).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn enrollment(key: &SigningKey, token: Option<&str>, installed: usize) -> Value {
    let public = key.public().to_tuf().keyval.public;
    let groups = [ringfence_proto::GroupName::parse("pilot").unwrap()];
    let signature = hex(&key.sign(&enrollment_message(&public, &groups)));
    let inventory = json!({"hostname": "h", "os": "linux", "os_version": "12", "architecture": "x86_64",
        "agent_version": "test", "installed": (0..installed).map(|i| format!("pkg-{i:040}")).collect::<Vec<_>>()});
    json!({"token": token, "public_key": public, "groups": ["pilot"], "inventory": inventory, "signature": signature})
}

/// A well-behaved device: enrolled with a token, able to open sessions and check in.
struct GoodDevice {
    key: SigningKey,
    id: String,
    client: ringfence_cli::http::Client,
}

impl GoodDevice {
    /// A report batch signed with this device's key.
    fn signed(&self, reports: Value) -> Value {
        let parsed: Vec<ringfence_proto::device::StatusReport> = serde_json::from_value(reports.clone()).unwrap();
        let message = ringfence_proto::device::report_batch_message(&self.id, &parsed);
        json!({"reports": reports, "signature": hex(&self.key.sign(&message))})
    }

    fn enroll(server: &Server) -> GoodDevice {
        let token = run_ok(server.cli().args(["device", "enrollment-token", "--group", "pilot", "--uses", "1"]));
        let client = device_client(server);
        let key = SigningKey::generate();
        let answer = client.send_json("POST", "/device/v1/enroll", &enrollment(&key, Some(token.trim()), 0)).unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        let id = serde_json::from_slice::<Value>(&answer.body).unwrap()["device_id"].as_str().unwrap().to_owned();
        GoodDevice { key, id, client }
    }

    /// Ask for a challenge and open a session: the token, or the status of the step that
    /// failed as (challenge, session).
    fn try_session(&self) -> Result<String, (u16, u16)> {
        let answer = self.client.send_json("POST", "/device/v1/challenge", &json!({"device_id": self.id})).unwrap();
        if answer.status != 200 {
            return Err((answer.status, 0));
        }
        let challenge: ChallengeResponse = serde_json::from_slice(&answer.body).unwrap();
        let sig = hex(&self.key.sign(&session_message(&self.id, &challenge.nonce)));
        let body = json!({"device_id": self.id, "nonce": challenge.nonce, "signature": sig});
        let answer = self.client.send_json("POST", "/device/v1/session", &body).unwrap();
        if answer.status != 200 {
            return Err((200, answer.status));
        }
        Ok(serde_json::from_slice::<SessionResponse>(&answer.body).unwrap().token)
    }

    /// A fresh session token.
    fn session(&self) -> String {
        self.try_session().unwrap()
    }

    /// A check-in with `token` naming `timestamp_version`: its status.
    fn checkin_at(&self, token: &str, timestamp_version: u64) -> u16 {
        let checkin = json!({"inventory": {"hostname": "good", "os": "linux", "os_version": "12",
            "architecture": "x86_64", "agent_version": "test", "installed": []}, "timestamp_version": timestamp_version});
        self.client.with_token(token).send_json("POST", "/device/v1/checkin", &checkin).unwrap().status
    }

    fn checkin(&self, token: &str) -> u16 {
        self.checkin_at(token, 0)
    }

    /// Open a session and check in: the status of each step.
    fn session_and_checkin(&self) -> (u16, u16, u16) {
        match self.try_session() {
            Ok(token) => (200, 200, self.checkin(&token)),
            Err((challenge, session)) => (challenge, session, 0),
        }
    }
}

#[test]
fn slow_senders_hold_no_device_api_slot_and_one_source_holds_few_connections() {
    let server = Server::start(|c| {
        c.devices.max_concurrent_requests = 4;
        c.devices.max_connections_per_source = 8;
        c.devices.header_read_secs = 2;
        c.devices.body_read_secs = 2;
        c.devices.idle_secs = 3;
    });
    let good = GoodDevice::enroll(&server);
    let config = client_config(&server);
    // Slow bodies from two sources: each declares a large body and sends one byte.
    let mut slow = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3"] {
        for _ in 0..12 {
            let Some(mut tls) = connect_from(&server, source, &config) else { continue };
            let head = "POST /device/v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                        Content-Length: 60000\r\n\r\n{";
            if tls.write_all(head.as_bytes()).and_then(|()| tls.flush()).is_ok() {
                slow.push(tls);
            }
        }
    }
    // At most 8 connections per source got through the handshake and sent their request.
    assert!(slow.len() <= 16, "{} slow connections accepted", slow.len());
    assert!(slow.len() >= 8, "{} slow connections accepted", slow.len());
    // Every device-API slot stays free for the well-behaved device.
    for _ in 0..3 {
        assert_eq!(good.session_and_checkin(), (200, 200, 200));
    }
    // The slow bodies are answered 408 once their deadline passes.
    for tls in &mut slow {
        let line = status_line(tls);
        assert!(line.as_deref().is_none_or(|l| l.contains(" 408")), "{line:?}");
    }
    // Slow headers: the connection is closed once the header deadline passes.
    let mut stalled = connect_from(&server, "127.0.0.4", &config).unwrap();
    stalled.write_all(b"POST /device/v1/enroll HTTP/1.1\r\nHost: x\r\n").unwrap();
    stalled.flush().unwrap();
    assert_eq!(status_line(&mut stalled).filter(|l| !l.contains(" 408")), None);
    // An idle connection is closed too.
    let mut idle = connect_from(&server, "127.0.0.5", &config).unwrap();
    assert_eq!(status_line(&mut idle), None, "the idle connection was closed");
    assert_eq!(good.session_and_checkin(), (200, 200, 200));
    drop(slow);
    drop(server);

    // With fewer body reads allowed than slow senders: the anonymous ones are held (503 for
    // the rest), the check-ins of devices with a session are not.
    let server = Server::start(|c| {
        c.devices.max_body_reads = 4;
        c.devices.body_read_secs = 3;
    });
    let good = GoodDevice::enroll(&server);
    let token = good.session();
    let config = client_config(&server);
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut tls = connect_from(&server, "127.0.0.2", &config).unwrap();
        let head = "POST /device/v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n{";
        tls.write_all(head.as_bytes()).unwrap();
        tls.flush().unwrap();
        held.push(tls);
    }
    std::thread::sleep(Duration::from_millis(300));
    let answer = good.client.send_json("POST", "/device/v1/challenge", &json!({"device_id": good.id})).unwrap();
    assert_eq!(answer.status, 503, "anonymous body reads are all held");
    assert_eq!(good.checkin(&token), 200, "a device with a session is not held back");
    let lines: Vec<Option<String>> = held.iter_mut().map(status_line).collect();
    assert_eq!(lines.iter().filter(|l| l.as_deref().is_some_and(|l| l.contains(" 503"))).count(), 2, "{lines:?}");
}

#[test]
fn anonymous_enrollment_floods_are_bounded_and_the_fleet_keeps_enrolling() {
    let server = Server::start(|c| {
        c.devices.max_pending = 8;
        c.devices.max_pending_per_source = 3;
    });
    let client = device_client(&server);
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let answer = client.send_json("POST", "/device/v1/enroll", &enrollment(&SigningKey::generate(), None, 200));
        let answer = answer.unwrap();
        if answer.status == 429 {
            assert_eq!(answer.header("retry-after"), Some("60"));
            assert!(answer.text().contains("from this address"), "{}", answer.text());
        }
        statuses.push(answer.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 7, "{statuses:?}");
    // A pending record keeps no installed list: what the administrator needs, not more.
    let stored = sql_number(&server, "SELECT MAX(LENGTH(inventory)) FROM devices WHERE state = 'pending'");
    assert!(stored < 512, "a pending record keeps {stored} bytes of inventory");
    // Other sources fill the global bound, then everyone anonymous gets 429.
    let config = client_config(&server);
    let mut accepted_elsewhere = 0;
    for i in 0..4 {
        let source = format!("127.0.1.{}", i + 1);
        for _ in 0..3 {
            if enroll_from(&server, &source, &config).is_some_and(|l| l.contains(" 200")) {
                accepted_elsewhere += 1;
            }
        }
    }
    assert_eq!(accepted_elsewhere, 8 - 3, "the global bound of 8 pending devices holds");
    assert_eq!(sql_number(&server, "SELECT COUNT(*) FROM devices WHERE state = 'pending'"), 8);
    // Enrollment with a token is not held back by the flood.
    let good = GoodDevice::enroll(&server);
    assert_eq!(good.session_and_checkin(), (200, 200, 200));
    // Pages of the pending list.
    let page = |query: &str| -> Vec<Value> {
        serde_json::from_slice(&server.admin().get(&format!("/api/v1/devices?{query}")).unwrap().ok().unwrap()).unwrap()
    };
    let first = page("state=pending&limit=2");
    assert_eq!(first.len(), 2, "one page of two");
    let rest = page(&format!("state=pending&limit=100&after={}", first[1]["id"].as_str().unwrap()));
    assert_eq!(rest.len(), 6, "the rest after the first page");
    assert_eq!(server.admin().get("/api/v1/devices?limit=100000").unwrap().status, 400);
    // Rejecting two devices of other sources makes room globally, not for the source that
    // still holds its bound.
    let elsewhere =
        sql_column(&server, "SELECT id FROM devices WHERE state = 'pending' AND source <> '127.0.0.1' LIMIT 2");
    for id in &elsewhere {
        run_ok(server.cli().args(["device", "reject", id]));
    }
    let answer = client.send_json("POST", "/device/v1/enroll", &enrollment(&SigningKey::generate(), None, 0)).unwrap();
    assert_eq!(answer.status, 429, "this source still holds its 3");
    assert!(enroll_from(&server, "127.0.2.1", &config).is_some_and(|l| l.contains(" 200")), "room was made");
    let listed = run_ok(server.cli().args(["device", "list", "--state", "pending"]));
    assert_eq!(listed.lines().filter(|l| l.contains("  pending  ")).count(), 7, "{listed}");
}

#[test]
fn one_device_reporting_without_end_stays_bounded() {
    let server = Server::start(|c| {
        c.devices.report_history = 300;
        c.devices.max_targets_per_device = 20;
        c.devices.report_batches_per_minute = 1000;
    });
    let noisy = GoodDevice::enroll(&server);
    let good = GoodDevice::enroll(&server);
    let token = noisy.session();
    let client = noisy.client.with_token(&token);
    let rss_before = rss_kib();
    for batch in 0..40 {
        let reports: Vec<Value> = (0..256)
            .map(|i| {
                json!({"id": format!("r{batch}-{i}"), "target": format!("approvals/pilot/acme/f{}", i % 10),
                "state": "installed", "at": batch * 1000 + i})
            })
            .collect();
        let answer = client.send_json("POST", "/device/v1/reports", &noisy.signed(json!(reports))).unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        if batch % 10 == 0 {
            assert_eq!(good.session_and_checkin(), (200, 200, 200));
        }
    }
    let store = &server.db;
    let history = server.runtime.block_on(store.device_reports(&noisy.id)).unwrap();
    let stored = sql_number(&server, &format!("SELECT COUNT(*) FROM status_reports WHERE device_id = '{}'", noisy.id));
    assert_eq!(stored, 300);
    assert_eq!(history.len(), 300, "10,240 reports sent, the newest 300 kept");
    assert_eq!(history.last().unwrap().id, "r39-255");
    let states = server.runtime.block_on(store.device_update_states(&noisy.id)).unwrap();
    assert_eq!(states.len(), 10, "the newest report of each target is kept");
    assert!(states.iter().all(|s| s.id.starts_with("r39-")), "{states:?}");
    // A batch that would pass the target bound is refused whole.
    let wide: Vec<Value> = (0..30)
        .map(|i| json!({"id": format!("w{i}"), "target": format!("approvals/pilot/acme/w{i}"), "state": "installed", "at": 1}))
        .collect();
    let answer = client.send_json("POST", "/device/v1/reports", &noisy.signed(json!(wide))).unwrap();
    assert_eq!(answer.status, 400);
    assert!(answer.text().contains("at most 20 targets"), "{}", answer.text());
    assert_eq!(server.runtime.block_on(store.device_update_states(&noisy.id)).unwrap().len(), 10, "nothing kept");
    // A repeated batch (a retry after a lost answer) is stored once: the history always holds
    // at least the last whole batch.
    let again: Vec<Value> = (0..256)
        .map(|i| {
            json!({"id": format!("r39-{i}"), "target": format!("approvals/pilot/acme/f{}", i % 10),
            "state": "installed", "at": 39_000 + i})
        })
        .collect();
    let ack: Value = serde_json::from_slice(
        &client.send_json("POST", "/device/v1/reports", &noisy.signed(json!(again))).unwrap().ok().unwrap(),
    )
    .unwrap();
    assert_eq!((ack["accepted"].as_u64(), ack["duplicates"].as_u64()), (Some(0), Some(256)));
    // The well-behaved device never noticed; the server's memory did not follow the flood.
    assert_eq!(good.session_and_checkin(), (200, 200, 200));
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 200 * 1024, "the test process grew by {grown} KiB");
}

#[test]
fn challenges_per_device_are_bounded_and_expired_sessions_are_swept() {
    let server = Server::start(|c| {
        c.devices.max_challenges_per_device = 3;
        c.devices.challenge_secs = 2;
        c.devices.session_secs = 1;
        c.expiry.check_interval_secs = 1;
    });
    let good = GoodDevice::enroll(&server);
    let anonymous = device_client(&server);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let answer = anonymous.send_json("POST", "/device/v1/challenge", &json!({"device_id": good.id})).unwrap();
        statuses.push(answer.status);
    }
    assert_eq!(statuses, [200; 6], "a new challenge replaces the oldest");
    assert_eq!(sql_number(&server, "SELECT COUNT(*) FROM device_challenges"), 3, "at most 3 kept");
    // Whoever asks in the device's name cannot lock it out.
    assert_eq!(good.session_and_checkin(), (200, 200, 200));
    // A check-in with an out-of-range version is refused and does not stop the others' writes.
    assert_eq!(good.checkin_at(&good.session(), u64::MAX), 400);
    let written = format!("SELECT COUNT(*) FROM devices WHERE id = '{}' AND last_checkin IS NOT NULL", good.id);
    assert!(eventually(&server, &written, 1), "the earlier check-in was written behind");
    // Challenges and sessions expire after a second or two; the background job deletes them.
    assert!(eventually(&server, "SELECT COUNT(*) FROM device_challenges", 0), "expired challenges are deleted");
    assert!(eventually(&server, "SELECT COUNT(*) FROM device_sessions", 0), "expired sessions are deleted");
}

/// Wait (at most 20 s, polling) until `query` counts `want`; whether it did.
fn eventually(server: &Server, query: &str, want: i64) -> bool {
    for _ in 0..100 {
        if sql_number(server, query) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn enrollment_attempts_per_source_and_report_batches_per_device_are_rate_bounded() {
    let server = Server::start(|c| {
        c.devices.enrollments_per_minute = 4;
        c.devices.report_batches_per_minute = 3;
    });
    let noisy = GoodDevice::enroll(&server);
    let good = GoodDevice::enroll(&server);
    let client = device_client(&server);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let answer =
            client.send_json("POST", "/device/v1/enroll", &enrollment(&SigningKey::generate(), None, 0)).unwrap();
        if answer.status == 429 {
            assert!(answer.text().contains("enrollment attempts"), "{}", answer.text());
            assert!(answer.header("retry-after").is_some());
        }
        statuses.push(answer.status);
    }
    assert_eq!(statuses, [200, 200, 429, 429], "two of four used by the token enrollments above");
    // Another source is not held back.
    let config = client_config(&server);
    assert!(enroll_from(&server, "127.0.3.1", &config).is_some_and(|l| l.contains(" 200")));

    let batch = |device: &GoodDevice, n: usize| {
        let client = device.client.with_token(&device.session());
        let report =
            device.signed(json!([{"id": format!("x{n}"), "target": "repository", "state": "refused", "at": 1}]));
        client.send_json("POST", "/device/v1/reports", &report).unwrap()
    };
    let statuses: Vec<u16> = (0..4).map(|n| batch(&noisy, n).status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(batch(&good, 0).status, 200, "another device is not held back");
    assert_eq!(good.session_and_checkin(), (200, 200, 200));
}

#[test]
fn parallel_retries_of_one_enrollment_spend_one_token_use() {
    let server = Server::start(|_| {});
    let token = run_ok(server.cli().args(["device", "enrollment-token", "--group", "pilot", "--uses", "3"]));
    let key = SigningKey::generate();
    let body = enrollment(&key, Some(token.trim()), 0);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let client = device_client(&server);
                let body = body.clone();
                scope.spawn(move || client.send_json("POST", "/device/v1/enroll", &body).unwrap().status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.contains(&200), "{statuses:?}");
    assert_eq!(sql_number(&server, "SELECT uses FROM enrollment_tokens"), 1, "{statuses:?}");
    assert_eq!(sql_number(&server, "SELECT COUNT(*) FROM devices"), 1);
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
