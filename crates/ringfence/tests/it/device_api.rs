//! Hostile and malformed input to every device endpoint: a clear 4xx, nothing changed.

use ringfence_proto::device::{
    ChallengeResponse, DeviceInfo, EnrollResponse, EnrollState, EnrollmentTokenCreated, Inventory, SessionResponse,
    enrollment_message, session_message,
};
use ringfence_store::DeviceStore;
use ringfence_trust::SigningKey;
use serde_json::{Value, json};

use crate::common::Server;

fn inventory() -> Value {
    serde_json::to_value(Inventory {
        hostname: "h".into(),
        os: "linux".into(),
        os_version: "12".into(),
        architecture: "x86_64".into(),
        agent_version: "test".into(),
        installed: vec![],
    })
    .unwrap()
}

pub(crate) struct Device {
    pub(crate) key: SigningKey,
    pub(crate) id: String,
}

fn public_hex(key: &SigningKey) -> String {
    key.public().to_tuf().keyval.public
}

pub(crate) fn signed_enrollment(key: &SigningKey, token: Option<&str>, group: &str) -> Value {
    let groups = [ringfence_proto::GroupName::parse(group).unwrap()];
    let signature = hex(&key.sign(&enrollment_message(&public_hex(key), &groups)));
    json!({"token": token, "public_key": public_hex(key), "groups": [group], "inventory": inventory(), "signature": signature})
}

fn enroll(
    server: &Server,
    device: &ringfence_cli::http::Client,
    token: Option<&str>,
    group: &str,
) -> (u16, Device, Value) {
    let key = SigningKey::generate();
    let body = signed_enrollment(&key, token, group);
    let answer = device.send_json("POST", "/device/v1/enroll", &body).unwrap();
    let value: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    let id = value["device_id"].as_str().unwrap_or_default().to_owned();
    let _ = server;
    (answer.status, Device { key, id }, value)
}

/// A report batch signed by the device's key, as the agent sends it.
pub(crate) fn signed_reports(d: &Device, reports: Value) -> Value {
    let parsed: Vec<ringfence_proto::device::StatusReport> = serde_json::from_value(reports.clone()).unwrap();
    let signature = hex(&d.key.sign(&ringfence_proto::device::report_batch_message(&d.id, &parsed)));
    json!({"reports": reports, "signature": signature})
}

pub(crate) fn open_session(device: &ringfence_cli::http::Client, d: &Device) -> String {
    let challenge: ChallengeResponse = serde_json::from_slice(
        &device.send_json("POST", "/device/v1/challenge", &json!({"device_id": d.id})).unwrap().ok().unwrap(),
    )
    .unwrap();
    let sig = hex(&d.key.sign(&session_message(&d.id, &challenge.nonce)));
    let body = json!({"device_id": d.id, "nonce": challenge.nonce, "signature": sig});
    let session: SessionResponse =
        serde_json::from_slice(&device.send_json("POST", "/device/v1/session", &body).unwrap().ok().unwrap()).unwrap();
    session.token
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn device_endpoints_refuse_bad_input_and_change_nothing() {
    let server = Server::start(|c| c.devices.session_secs = 2);
    let base = server.repo_url.trim_end_matches("/repo").to_owned();
    let device = ringfence_cli::http::Client::new(&base, None, &server.ca).unwrap();
    let store = &server.db;
    let count = || server.runtime.block_on(store.count_devices()).unwrap();

    // Enrollment: bad bodies are 400 naming the problem, bad tokens 401; nothing is stored.
    let key = SigningKey::generate();
    let good = signed_enrollment(&key, None, "pilot");
    let mut cases: Vec<(Vec<u8>, u16, &str)> = Vec::new();
    let mut unknown = good.clone();
    unknown["$type"] = json!("System.Object");
    cases.push((serde_json::to_vec(&unknown).unwrap(), 400, "unknown field `$type`"));
    let mut wrong = good.clone();
    wrong["groups"] = json!("pilot");
    cases.push((serde_json::to_vec(&wrong).unwrap(), 400, "field `groups`"));
    let mut bad_key = good.clone();
    bad_key["public_key"] = json!("zz");
    cases.push((serde_json::to_vec(&bad_key).unwrap(), 400, "public_key"));
    let mut long = good.clone();
    long["inventory"]["hostname"] = json!("h".repeat(300));
    cases.push((serde_json::to_vec(&long).unwrap(), 400, "inventory.hostname"));
    cases.push((format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(), 400, "nested deeper"));
    cases.push((vec![b' '; 100 * 1024], 413, "larger than"));
    let mut bad_token = good.clone();
    bad_token["token"] = json!("rfet_00");
    cases.push((serde_json::to_vec(&bad_token).unwrap(), 401, "authentication"));
    // Without proof of the key (another key's signature, or groups changed after signing).
    let mut stolen_key = signed_enrollment(&SigningKey::generate(), None, "pilot");
    stolen_key["public_key"] = good["public_key"].clone();
    cases.push((serde_json::to_vec(&stolen_key).unwrap(), 401, "authentication"));
    let mut regrouped = good.clone();
    regrouped["groups"] = json!(["production"]);
    cases.push((serde_json::to_vec(&regrouped).unwrap(), 401, "authentication"));
    for (body, status, needle) in cases {
        // The server may answer an oversized body and close before the client has written it
        // all (a broken pipe on the client's side): the client then tries again, a bounded
        // number of times, until it reads the answer.
        let answer = (0..5)
            .find_map(|_| device.send("POST", "/device/v1/enroll", &body, "application/json").ok())
            .expect("an answer within five attempts");
        assert_eq!(answer.status, status, "{}", answer.text());
        assert!(answer.text().contains(needle), "expected {needle:?} in {}", answer.text());
        assert_eq!(count(), 0);
    }

    // Without a token: pending, and pending devices cannot open sessions.
    let (status, pending, value) = enroll(&server, &device, None, "production");
    assert_eq!(status, 200, "{value}");
    assert_eq!(serde_json::from_value::<EnrollResponse>(value).unwrap().state, EnrollState::Pending);
    let answer = device.send_json("POST", "/device/v1/challenge", &json!({"device_id": pending.id})).unwrap();
    assert_eq!(answer.status, 401);
    // An administrator accepts it; now it can.
    server.admin().send("POST", &format!("/api/v1/devices/{}/accept", pending.id), b"", "").unwrap().ok().unwrap();
    let session = open_session(&device, &pending);
    assert!(session.starts_with("rfds_"));

    // Sessions: a replayed challenge, another device's signature, a wrong nonce.
    let token: EnrollmentTokenCreated = serde_json::from_slice(
        &server
            .admin()
            .send_json(
                "POST",
                "/api/v1/enrollment-tokens",
                &json!({"groups": ["pilot"], "expires_in_secs": 60, "max_uses": 1}),
            )
            .unwrap()
            .ok()
            .unwrap(),
    )
    .unwrap();
    // A token admits only its own groups; the refusal does not spend its one use.
    let (status, _, value) = enroll(&server, &device, Some(&token.token), "production");
    assert_eq!(status, 400, "{value}");
    assert!(value["error"].as_str().unwrap_or("").contains("does not admit group production"), "{value}");
    let (status, other, _) = enroll(&server, &device, Some(&token.token), "pilot");
    assert_eq!(status, 200);
    let challenge: ChallengeResponse = serde_json::from_slice(
        &device.send_json("POST", "/device/v1/challenge", &json!({"device_id": other.id})).unwrap().ok().unwrap(),
    )
    .unwrap();
    let forged = hex(&pending.key.sign(&session_message(&other.id, &challenge.nonce)));
    let body = json!({"device_id": other.id, "nonce": challenge.nonce, "signature": forged});
    assert_eq!(
        device.send_json("POST", "/device/v1/session", &body).unwrap().status,
        401,
        "signed by another device's key"
    );
    let sig = hex(&other.key.sign(&session_message(&other.id, &challenge.nonce)));
    let body = json!({"device_id": other.id, "nonce": challenge.nonce, "signature": sig});
    assert_eq!(device.send_json("POST", "/device/v1/session", &body).unwrap().status, 200);
    assert_eq!(device.send_json("POST", "/device/v1/session", &body).unwrap().status, 401, "replayed challenge");
    let body = json!({"device_id": pending.id, "nonce": challenge.nonce, "signature": sig});
    assert_eq!(device.send_json("POST", "/device/v1/session", &body).unwrap().status, 401, "another device's id");

    // Check-in and reports need a live session; bad batches change nothing.
    let authed = ringfence_cli::http::Client::new(&base, Some(session.clone()), &server.ca).unwrap();
    let checkin = json!({"inventory": inventory(), "timestamp_version": 0});
    assert_eq!(device.send_json("POST", "/device/v1/checkin", &checkin).unwrap().status, 401);
    let answer = authed.send_json("POST", "/device/v1/checkin", &checkin).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.body.len() < 100, "a check-in answer is tiny: {}", answer.text());
    let report = json!({"id": "r1", "target": "approvals/production/acme/x", "state": "installed", "at": 1});
    // A batch the device's key did not sign is refused whole: signed by another key, or
    // changed after signing.
    let mut forged = signed_reports(&pending, json!([report]));
    let parsed: Vec<ringfence_proto::device::StatusReport> = serde_json::from_value(json!([report])).unwrap();
    forged["signature"] =
        json!(hex(&other.key.sign(&ringfence_proto::device::report_batch_message(&pending.id, &parsed))));
    assert_eq!(authed.send_json("POST", "/device/v1/reports", &forged).unwrap().status, 403);
    let mut tampered = signed_reports(&pending, json!([report]));
    tampered["reports"][0]["state"] = json!("failed");
    assert_eq!(authed.send_json("POST", "/device/v1/reports", &tampered).unwrap().status, 403);
    assert!(server.runtime.block_on(store.device_reports(&pending.id)).unwrap().is_empty(), "nothing stored");
    let batch = signed_reports(&pending, json!([report, report]));
    let answer = authed.send_json("POST", "/device/v1/reports", &batch).unwrap();
    assert_eq!(answer.text(), r#"{"accepted":1,"duplicates":1}"#);
    let answer = authed.send_json("POST", "/device/v1/reports", &signed_reports(&pending, json!([report]))).unwrap();
    assert_eq!(answer.text(), r#"{"accepted":0,"duplicates":1}"#, "a repeated batch is stored once");
    // A production device does not speak for pilot's approvals: such reports are not kept.
    let elsewhere = json!({"id": "r9", "target": "approvals/pilot/acme/x", "state": "failed", "at": 2});
    let answer = authed.send_json("POST", "/device/v1/reports", &signed_reports(&pending, json!([elsewhere]))).unwrap();
    assert_eq!(answer.text(), r#"{"accepted":0,"duplicates":0,"ignored":1}"#);
    // The evidence: what the device signed, checked by the CLI against the device's key.
    let evidence = |key: &str| {
        server
            .cli()
            .args(["device", "evidence", &pending.id, "--target", "approvals/production/acme/x", "--device-key", key])
            .output()
            .unwrap()
    };
    let out = evidence(&public_hex(&pending.key));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("verified with the device's own key"), "{text}");
    assert!(text.contains("installed"), "{text}");
    // A key other than the device's own is not accepted as evidence.
    let out = evidence(&public_hex(&other.key));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("do not trust"), "{}", String::from_utf8_lossy(&out.stderr));
    let no_sig = "00".repeat(64);
    for bad in [
        json!({"reports": [{"id": "../x", "target": "t", "state": "installed", "at": 1}], "signature": no_sig}),
        json!({"reports": [{"id": "r2", "target": "t", "state": "pwned", "at": 1}], "signature": no_sig}),
        json!({"reports": [{"id": "r2", "target": "t", "state": "installed", "at": "now"}], "signature": no_sig}),
        json!({"reports": (0..300).map(|i| json!({"id": format!("b{i}"), "target": "t", "state": "installed", "at": 1})).collect::<Vec<_>>(), "signature": no_sig}),
        json!({"reports": [{"id": "r2", "target": "t", "state": "installed", "at": 1}]}),
        json!({"reports": [{"id": "r2", "target": "t", "state": "installed", "at": 1}], "signature": "zz"}),
    ] {
        let answer = authed.send_json("POST", "/device/v1/reports", &bad).unwrap();
        assert_eq!(answer.status, 400, "{}", answer.text());
    }
    assert_eq!(server.runtime.block_on(store.device_reports(&pending.id)).unwrap().len(), 1);

    // Revoking ends the session at once; an expired session is refused too.
    let second = open_session(&device, &other);
    let other_client = ringfence_cli::http::Client::new(&base, Some(second), &server.ca).unwrap();
    assert_eq!(other_client.send_json("POST", "/device/v1/checkin", &checkin).unwrap().status, 200);
    server.admin().send("POST", &format!("/api/v1/devices/{}/revoke", other.id), b"", "").unwrap().ok().unwrap();
    assert_eq!(other_client.send_json("POST", "/device/v1/checkin", &checkin).unwrap().status, 401);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(authed.send_json("POST", "/device/v1/checkin", &checkin).unwrap().status, 401, "expired session");

    // The repository now needs a session (devices exist), except root metadata.
    assert_eq!(device.get("/repo/metadata/timestamp.json").unwrap().status, 401);
    assert_eq!(device.get("/repo/metadata/1.root.json").unwrap().status, 200);
    let listed: Vec<DeviceInfo> =
        serde_json::from_slice(&server.admin().get("/api/v1/devices").unwrap().ok().unwrap()).unwrap();
    assert_eq!(listed.len(), 2);
}

#[test]
fn a_saturated_device_listener_answers_503_with_retry_after() {
    let server = Server::start(|c| c.devices.max_concurrent_requests = 1);
    let base = server.repo_url.trim_end_matches("/repo").to_owned();
    // Hold the only permit, as a request in flight would.
    let held = server.state.device_permits.try_acquire().unwrap();
    let device = ringfence_cli::http::Client::new(&base, None, &server.ca).unwrap();
    let answer = device.send_json("POST", "/device/v1/challenge", &json!({"device_id": "x"})).unwrap();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("retry-after"), Some("5"));
    drop(held);
    assert_eq!(device.send_json("POST", "/device/v1/challenge", &json!({"device_id": "x"})).unwrap().status, 401);
}

#[test]
fn preauthorized_keys_open_sessions_at_once_and_a_bad_batch_changes_nothing() {
    let server = Server::start(|_| {});
    let device = server.device_client();
    let store = &server.db;
    let count = || server.runtime.block_on(store.count_devices()).unwrap();
    let keys: Vec<SigningKey> = (0..4).map(|_| SigningKey::generate()).collect();
    let pubs: Vec<String> = keys.iter().map(public_hex).collect();

    // Two keys on the command line, one from a file (comments and blank lines ignored).
    let out = crate::common::run_ok(server.cli().args([
        "device",
        "preauthorize",
        "--group",
        "pilot",
        "--json",
        "--key",
        &pubs[0],
        "--key",
        &pubs[1],
    ]));
    let first: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(first.len(), 2);
    let file = server.dir.path().join("keys.txt");
    std::fs::write(&file, format!("# the lab\n\n{}\n", pubs[2].to_uppercase())).unwrap();
    let out = crate::common::run_ok(
        server.cli().args(["device", "preauthorize", "--group", "pilot", "--keys-file"]).arg(&file),
    );
    let (id2, key2) = out.trim().split_once(' ').unwrap();
    assert_eq!(key2, pubs[2], "stored in lower case");
    assert_eq!(count(), 3);

    // Each opens a session with its own key and checks in, without enrolling first.
    let ids: Vec<String> = first.iter().map(|d| d["id"].as_str().unwrap().to_owned()).chain([id2.to_owned()]).collect();
    for (d, key) in first.iter().zip(&pubs) {
        assert_eq!(&d["public_key"], key);
    }
    let devices: Vec<Device> = keys.into_iter().zip(ids).map(|(key, id)| Device { key, id }).collect();
    for d in &devices {
        let token = open_session(&device, d);
        let body = json!({"inventory": inventory(), "timestamp_version": 0});
        assert_eq!(device.with_token(&token).send_json("POST", "/device/v1/checkin", &body).unwrap().status, 200);
        let stored = server.runtime.block_on(store.device(&d.id)).unwrap().unwrap();
        assert_eq!(stored.groups, vec!["pilot".to_owned()]);
    }

    // One audit record per request, naming how many; the pilot group counts three devices.
    let audited = || crate::common::sql_number(&server, "SELECT COUNT(*) FROM audit_log WHERE action = 'preauthorize'");
    let counted = || crate::common::sql_number(&server, "SELECT devices FROM group_devices WHERE group_name = 'pilot'");
    // Queued or already integrated, read in one statement (the sequencer moves them).
    let queued = || {
        let both = "SELECT (SELECT COUNT(*) FROM log_queue) + (SELECT COUNT(*) FROM log_entries)";
        crate::common::sql_number(&server, both)
    };
    assert_eq!(audited(), 2);
    assert_eq!(counted(), 3);
    let (audits, logged) = (audited(), queued());

    // Refused batches are refused whole: a known key among new ones, a key twice, a bad key,
    // none, too many, a bad group, too many groups; the new key is not stored by any of them,
    // nor a log entry, an audit record or a group count.
    let admin = server.admin();
    let new = pubs[3].clone();
    let entry = |k: &str| json!({"public_key": k, "groups": ["pilot"]});
    let too_many: Vec<Value> = (0..5_001).map(|_| entry(&"00".repeat(32))).collect();
    let cases = [
        (
            json!({"devices": [entry(&new), entry(&pubs[0])]}),
            409,
            "devices[1].public_key: a device with this key exists",
        ),
        (
            json!({"devices": [{"public_key": new, "groups": (0..17).map(|i| format!("g{i}")).collect::<Vec<_>>()}]}),
            400,
            "devices[0].groups: at most 16",
        ),
        (json!({"devices": [entry(&new), entry(&new.to_uppercase())]}), 400, "devices[1].public_key: listed twice"),
        (json!({"devices": [entry(&new), entry("zz")]}), 400, "devices[1]"),
        (json!({"devices": []}), 400, "1 to 5000"),
        (json!({"devices": too_many}), 400, "1 to 5000"),
        (json!({"devices": [{"public_key": new, "groups": ["../x"]}]}), 400, "groups"),
        (json!({"devices": [entry(&new)], "$type": "x"}), 400, "unknown field"),
    ];
    for (body, status, says) in cases {
        let answer = admin.send_json("POST", "/api/v1/devices/preauthorize", &body).unwrap();
        assert_eq!(answer.status, status, "{}", answer.text());
        assert!(answer.text().contains(says), "{} does not say {says}", answer.text());
        assert_eq!(count(), 3);
        assert!(server.runtime.block_on(store.device_by_key(&new)).unwrap().is_none());
        assert_eq!((audited(), counted(), queued()), (audits, 3, logged), "nothing changed");
    }
    // One key alone (`POST /api/v1/devices`) is a batch of one: the same checks, the device back.
    let answer = admin.send_json("POST", "/api/v1/devices", &json!({"public_key": "zz", "groups": ["pilot"]})).unwrap();
    assert_eq!(answer.status, 400, "{}", answer.text());
    let answer = admin.send_json("POST", "/api/v1/devices", &entry(&new)).unwrap();
    assert_eq!(answer.status, 201, "{}", answer.text());
    let single: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!((single["state"].as_str(), single["public_key"].as_str()), (Some("accepted"), Some(new.as_str())));
    assert_eq!(admin.send_json("POST", "/api/v1/devices", &entry(&new)).unwrap().status, 409);
    assert_eq!((count(), counted(), audited()), (4, 4, audits + 1));
    let new = public_hex(&SigningKey::generate());
    // A token without the admin scope may not.
    let read = server.admin().send_json("POST", "/api/v1/tokens", &json!({"name": "r", "scopes": ["read"]})).unwrap();
    let read: Value = serde_json::from_slice(&read.ok().unwrap()).unwrap();
    let reader = server.client(Some(read["token"].as_str().unwrap()));
    let answer = reader.send_json("POST", "/api/v1/devices/preauthorize", &json!({"devices": [entry(&new)]})).unwrap();
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(count(), 4);
    // Only an admin may; without a token nothing is read.
    let anonymous = server.client(None);
    let answer =
        anonymous.send_json("POST", "/api/v1/devices/preauthorize", &json!({"devices": [entry(&new)]})).unwrap();
    assert_eq!(answer.status, 401);
    assert_eq!(count(), 4);
}

/// A check-in or report batch refused for its session reaches the device as `401` even with a
/// large body: the server reads and drops what is still coming before it closes the
/// connection, so the answer is not lost to a reset (an agent whose session ended must see
/// the refusal to open a new one).
#[test]
fn a_refused_session_is_answered_not_reset_however_large_the_body() {
    let server = Server::start(|_| {});
    let base = server.repo_url.trim_end_matches("/repo").to_owned();
    let body = server.dir.path().join("large.json");
    std::fs::write(&body, format!("{{\"pad\":\"{}\"}}", "x".repeat(60 * 1024))).unwrap();
    for path in ["/device/v1/checkin", "/device/v1/reports"] {
        for _ in 0..20 {
            let out = std::process::Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                .arg(&server.ca)
                .args(["-H", "Authorization: Bearer rfs_0123456789abcdef", "-H", "Content-Type: application/json"])
                .arg("--data-binary")
                .arg(format!("@{}", body.display()))
                .arg(format!("{base}{path}"))
                .output()
                .unwrap();
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert_eq!(said, "401", "{path}");
        }
    }
}
