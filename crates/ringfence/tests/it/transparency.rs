//! The transparency log end to end: every published version on it, tiles and checkpoints as
//! C2SP says (checked against an independent Merkle implementation), agents that refuse what
//! is not on the record or a log that does not extend what they saw.

use ringfence_tlog::entry::Entry;
use ringfence_tlog::proof::{IDENTITY_TARGET, LogIdentity};
use ringfence_tlog::tree::{TILE_HEIGHT, split_entry_bundle, tile_path};

use crate::agents::{enroll, last_report, publish_script, token};
use crate::common::{Server, free_port, run_ok, sql, sql_column, wait_for_port};

/// The log's identity as the signed top-level targets publishes it.
fn identity(server: &Server) -> LogIdentity {
    let targets = server.published("targets");
    let custom = targets.targets.get(IDENTITY_TARGET).expect("top-level targets names the log").custom.clone();
    serde_json::from_value(custom.unwrap()).unwrap()
}

/// Every entry of the log of `size`, read from its entry bundles over HTTP.
fn entries(server: &Server, size: u64) -> Vec<Vec<u8>> {
    let client = server.device_client();
    let mut out = Vec::new();
    let per_tile = 1u64 << TILE_HEIGHT;
    for n in 0..size.div_ceil(per_tile) {
        let width = (size - n * per_tile).min(per_tile) as u32;
        let answer = client.get(&format!("/log/{}", tile_path(None, n, width))).unwrap();
        assert_eq!(answer.status, 200, "{}", tile_path(None, n, width));
        assert_eq!(answer.header("cache-control"), Some("public, max-age=31536000, immutable"));
        let bundle = answer.ok().unwrap();
        out.extend(split_entry_bundle(&bundle).unwrap().into_iter().map(<[u8]>::to_vec));
    }
    out
}

#[test]
fn every_version_is_on_the_log_and_agents_check_it() {
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "pilot", "pilot", &token(&server, "pilot", 1));
    publish_script(&server, "logged-1");
    assert!(server.approve("pilot", "acme/logged-1.sh").contains("is published"));
    let (code, out) = agent.check();
    assert_eq!(code, 0, "{out}");
    assert_eq!(agent.installs("logged-1"), 1);
    let status = run_ok(&mut agent.command(&["status"]));
    let identity = identity(&server);
    assert!(status.contains(&format!("transparency log checkpoint: {}, size ", identity.origin)), "{status}");

    // The checkpoint verifies with the identity the signed metadata publishes.
    let size = server.wait_for_log();
    let answer = server.device_client().get("/log/checkpoint").unwrap();
    assert_eq!(answer.header("cache-control"), Some("public, max-age=1"));
    let note = answer.ok().unwrap();
    let checkpoint = identity.verify_checkpoint(&note).unwrap();
    assert_eq!(checkpoint.size(), size);

    // Its root, recomputed from the served entries by an independent implementation.
    let entries = entries(&server, size);
    assert_eq!(entries.len() as u64, size);
    let mut reference = ct_merkle::mem_backed_tree::MemoryBackedTree::<sha2_next::Sha256, Vec<u8>>::new();
    for e in &entries {
        reference.push(e.clone());
    }
    assert_eq!(reference.root().as_bytes().as_slice(), checkpoint.hash().0.as_slice());
    // The level-0 hash tile holds exactly the entries' leaf hashes.
    let width = size.min(256) as u32;
    let tile = server.device_client().get(&format!("/log/{}", tile_path(Some(0), 0, width))).unwrap().ok().unwrap();
    let leaves: Vec<u8> =
        entries.iter().take(width as usize).flat_map(|e| ringfence_tlog::tree::leaf_hash(e).0).collect();
    assert_eq!(tile, leaves);

    // Every metadata version the server published is an entry; so are the tokens and the device.
    let logged: std::collections::BTreeSet<Vec<u8>> = entries.into_iter().collect();
    let rows = sql_column(&server, "SELECT role || ' ' || version FROM metadata");
    assert!(rows.len() > 10, "{rows:?}");
    for row in rows {
        let (role, version) = row.split_once(' ').unwrap();
        let version: u64 = version.parse().unwrap();
        let bytes = metadata_bytes(&server, role, version);
        let entry = Entry::Metadata {
            role: role.into(),
            version,
            sha256: ringfence_trust::sha256_hex(&bytes),
            length: bytes.len() as u64,
        };
        assert!(logged.contains(&entry.to_bytes().unwrap()), "{role} version {version} is not on the log");
    }
    let kinds: Vec<String> =
        logged.iter().map(|e| String::from_utf8_lossy(e).lines().nth(1).unwrap_or_default().to_owned()).collect();
    for kind in ["metadata", "enrollment-token", "device-accepted", "admin-token"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} entry");
    }

    // An unchanged check-in asks nothing of the log: with every proof refused from now on
    // (the server forgets where versions are), the agent's next cycle still succeeds.
    sql(&server, "DELETE FROM log_metadata");
    assert_eq!(server.device_client().get("/log/proof/approvals.pilot/2/0").unwrap().status, 404);
    let (code, out) = agent.check();
    assert_eq!(code, 0, "an unchanged check-in fetched from the log: {out}");

    // Malformed log paths are refused without touching storage.
    for bad in ["/log/tile/0/1", "/log/tile/entries/000.p/0", "/log/tile/../x", "/log/proof/approvals.pilot/x/0"] {
        assert_eq!(server.device_client().get(bad).unwrap().status, 404, "{bad}");
    }
}

fn metadata_bytes(server: &Server, role: &str, version: u64) -> Vec<u8> {
    use ringfence_store::Store;
    server.runtime.block_on(server.db.metadata_version(role, version)).unwrap().unwrap().bytes
}

#[test]
fn an_approval_that_is_not_on_the_log_is_refused() {
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "pilot", "pilot", &token(&server, "pilot", 1));
    publish_script(&server, "quiet-1");
    let (code, out) = agent.check();
    assert_eq!(code, 0, "{out}");

    // A thief with every online key approves the file for pilot, but keeps it off the log.
    let approved = {
        let published = server
            .published(&format!("publisher.acme.{}", ringfence_trust::paths::bin_prefix_of("acme/quiet-1.sh", 2)));
        let entry = published.targets.get("acme/quiet-1.sh").unwrap().clone();
        let custom = ringfence_proto::tuf::ApprovalCustom {
            action: ringfence_proto::tuf::ApprovalAction::Install,
            deadline: None,
            reason: None,
            rollout: None,
            update_id: "quiet-1".into(),
            published_entry_sha256: ringfence_trust::writer::entry_digest(&entry),
        };
        let mut approved = entry;
        approved.custom = Some(serde_json::to_value(custom).unwrap());
        approved
    };
    let mut pilot = server.published("approvals.pilot");
    pilot.version += 1;
    pilot.targets.insert("approvals/pilot/acme/quiet-1.sh".into(), approved);
    server.forge_publish_unlogged(vec![("approvals.pilot".into(), pilot)], &[]);

    let (code, out) = agent.check();
    assert_ne!(code, 0, "{out}");
    assert_eq!(agent.installs("quiet-1"), 0, "nothing installed that is not on the record");
    let report = last_report(&server, "approvals.pilot");
    assert!(report.reason.as_deref().unwrap_or("").contains("not on the transparency log"), "{report:?}");
}

#[test]
fn a_log_that_does_not_extend_what_an_agent_saw_is_refused() {
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "pilot", "pilot", &token(&server, "pilot", 1));
    publish_script(&server, "first-1");
    server.approve("pilot", "acme/first-1.sh");
    let (code, out) = agent.check();
    assert_eq!(code, 0, "{out}");
    assert_eq!(agent.installs("first-1"), 1);
    // Published and signed by its publisher now; approved for pilot (online) later.
    publish_script(&server, "second-1");
    server.wait_for_log();

    let state = server.dir.path().join("audit.state");
    let (code, out) = audit(&server, &state, false);
    assert_eq!(code, 0, "{out}");

    // The stolen server rewrites its log's history (one entry slipped in at the start) and
    // shows that log from now on: a split view against what this agent trusted.
    rewrite_history(&server);
    server.wait_for_log();
    server.approve("pilot", "acme/second-1.sh");
    // The publisher's signing tool saw the old history too: it refuses to sign on the new one.
    let work = server.dir.path().join("work");
    std::fs::write(work.join("third-1.sh"), "#!/bin/sh\n").unwrap();
    let mut m: serde_json::Value =
        serde_json::from_str(include_str!("../../../../docs/examples/hello.manifest.json")).unwrap();
    m["id"] = "third-1".into();
    std::fs::write(work.join("third-1.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    run_ok(server.cli().args(["publish", "--manifest"]).arg(work.join("third-1.json")).arg(work.join("third-1.sh")));
    let bin = format!("publisher.acme.{}", ringfence_trust::paths::bin_prefix_of("acme/third-1.sh", 2));
    let (ok, out, err) = server.try_sign(Some(&bin), "publisher-acme", &[]);
    assert!(!ok, "{out}");
    assert!(err.contains("older than the trusted one") || err.contains("consistency"), "{err}");

    let (code, out) = agent.check();
    assert_ne!(code, 0, "{out}");
    assert_eq!(agent.installs("second-1"), 0);
    let report = last_report(&server, "approvals.pilot");
    let reason = report.reason.unwrap_or_default();
    assert!(reason.contains("transparency log"), "{reason}");
    assert!(
        reason.contains("consistency") || reason.contains("fork") || reason.contains("older"),
        "the agent names what is wrong: {reason}"
    );
    // The auditor, against the checkpoint it kept: the log went back or forked, with both
    // checkpoints as the evidence.
    let (code, out) = audit(&server, &state, false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("(rollback)") || out.contains("(fork)"), "{out}");
    assert!(out.contains("evidence:"), "{out}");
}

/// What a thief with the database does to show another history: the log emptied and one
/// entry slipped in first (the sequencer then logs the newest version of every role after it).
fn rewrite_history(server: &Server) {
    for table in ["log_entries", "log_hashes", "log_metadata", "log_checkpoints"] {
        sql(server, &format!("DELETE FROM {table}"));
    }
    let slipped = Entry::DeviceAccepted { id: "f00d".into(), public_key: "ab".repeat(32) }.to_bytes().unwrap();
    let literal = if server.state.config.database.url.is_some() {
        format!("decode('{}', 'hex')", hex_of(&slipped))
    } else {
        format!("X'{}'", hex_of(&slipped))
    };
    sql(server, &format!("INSERT INTO log_queue (id, entry) VALUES (-1, {literal})"));
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `ringfence witness serve` on a free loopback port, for the log `log_key`.
struct WitnessProcess {
    child: std::process::Child,
    url: String,
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_witness(dir: &std::path::Path, log_key: &str, port: u16) -> WitnessProcess {
    let child = std::process::Command::new(crate::common::BIN)
        .args(["witness", "serve", "--dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--log", log_key])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "the witness");
    WitnessProcess { child, url: format!("http://127.0.0.1:{port}/add-checkpoint") }
}

/// POST an add-checkpoint body to a witness: (status, body).
fn add_checkpoint(url: &str, body: &[u8]) -> (u16, String) {
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut answer = agent.post(url).send(body).unwrap();
    let status = answer.status().as_u16();
    (status, answer.body_mut().read_to_string().unwrap_or_default())
}

/// `ringfence audit --log …` against `server`: (exit code, stdout).
fn audit(server: &Server, state: &std::path::Path, json: bool) -> (i32, String) {
    let mut c = server.cli();
    c.args(["audit", "--log", server.repo_url.trim_end_matches("/repo"), "--trusted-root"])
        .arg(server.data.join("1.root.json"))
        .arg("--log-ca")
        .arg(&server.ca)
        .arg("--state")
        .arg(state);
    if json {
        c.arg("--json");
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn a_witness_cosigns_agents_need_its_cosignature_and_the_auditor_replays_the_log() {
    let server = Server::start(|_| {});
    let identity_file = server.data.join("online-keys/log-identity.json");
    let log: LogIdentity = serde_json::from_slice(&std::fs::read(&identity_file).unwrap()).unwrap();

    // A witness, and the server told about it (a restart on the same addresses).
    let wdir = server.dir.path().join("witness");
    let vkey = run_ok(
        std::process::Command::new(crate::common::BIN)
            .args(["witness", "init", "--name", "witness.test/w1", "--dir"])
            .arg(&wdir),
    );
    let vkey = vkey.trim().to_owned();
    let port = free_port();
    let mut witness = start_witness(&wdir, &log.key, port);
    let (device, admin) = (
        server.repo_url.trim_start_matches("https://").trim_end_matches("/repo").to_owned(),
        server.admin_url.trim_start_matches("https://").to_owned(),
    );
    let (keys, data) = (server.keys.clone(), server.data.clone());
    let dir = server.stop();
    let witness_url = witness.url.clone();
    let wkey = vkey.clone();
    let server = Server::serve(dir, keys, data, move |c| {
        c.device_listener.addr = device;
        c.admin_listener.addr = admin;
        c.log.witnesses = vec![ringfence_server::config::WitnessConfig {
            name: "witness.test/w1".into(),
            url: witness_url,
            key: wkey,
            ca: None,
        }];
    });

    // The offline targets key holders add the witness to the log's identity, quorum 1.
    let work = server.dir.path().join("ceremony");
    std::fs::create_dir_all(&work).unwrap();
    let (current, draft) = (work.join("targets.json"), work.join("targets.next.json"));
    run_ok(server.cli().args(["fetch", "targets", "--out"]).arg(&current));
    run_ok(server.cli().args(["metadata", "set-log"]).arg(&current).arg("--out").arg(&draft).args([
        "--witness",
        &vkey,
        "--quorum",
        "1",
    ]));
    run_ok(server.cli().args(["metadata", "sign"]).arg(&draft).arg("--key").arg(server.key("targets")));
    assert!(run_ok(server.cli().args(["propose", "targets"]).arg(&draft)).contains("is published"));
    assert_eq!(identity(&server).quorum, 1);

    // Agents install what is on the log and cosigned.
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "pilot", "pilot", &token(&server, "pilot", 1));
    publish_script(&server, "witnessed-1");
    run_ok(server.cli().args([
        "approve",
        "--group",
        "pilot",
        "--target",
        "acme/witnessed-1.sh",
        "--reason",
        "CHG-4711",
    ]));
    let (code, out) = agent.check();
    assert_eq!(code, 0, "{out}");
    assert_eq!(agent.installs("witnessed-1"), 1);
    let status = run_ok(&mut agent.command(&["status"]));
    assert!(status.contains("1 cosignature(s)"), "{status}");

    // The witness refuses what does not extend what it cosigned: a fork of the same size
    // signed with the log key (as a thief holding it could), a bad proof, an unknown log.
    let held = server.wait_for_log();
    let log_key = ringfence_tlog::checkpoint::LogKey::new(&log.origin, server.online_key("log.key")).unwrap();
    let fork = log_key.sign(held, ringfence_tlog::Hash([7; 32])).unwrap();
    let (status, _) = add_checkpoint(
        &witness.url,
        &ringfence_tlog::witness::AddCheckpoint { old: held, proof: vec![], note: fork }.to_bytes(),
    );
    assert_eq!(status, 409, "a fork of the size the witness holds");
    let ahead = log_key.sign(held + 5, ringfence_tlog::Hash([7; 32])).unwrap();
    let bad = ringfence_tlog::witness::AddCheckpoint {
        old: held,
        proof: vec![ringfence_tlog::Hash([1; 32])],
        note: ahead.clone(),
    };
    assert_eq!(add_checkpoint(&witness.url, &bad.to_bytes()).0, 422, "a proof that does not prove");
    let (status, body) = add_checkpoint(
        &witness.url,
        &ringfence_tlog::witness::AddCheckpoint { old: 1, proof: vec![], note: ahead }.to_bytes(),
    );
    assert_eq!((status, body.trim()), (409, held.to_string().as_str()), "a stale size is answered with the witness's");
    let stranger =
        ringfence_tlog::checkpoint::LogKey::new("other.test/log", ringfence_trust::SigningKey::generate()).unwrap();
    let unknown = ringfence_tlog::witness::AddCheckpoint {
        old: 0,
        proof: vec![],
        note: stranger.sign(1, ringfence_tlog::Hash([0; 32])).unwrap(),
    };
    assert_eq!(add_checkpoint(&witness.url, &unknown.to_bytes()).0, 404);

    // The auditor replays the whole log: every version on it, every signature verified.
    let state = server.dir.path().join("audit.state");
    let (code, out) = audit(&server, &state, false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no violation") && out.contains("1 cosignature(s)"), "{out}");
    // The approvers' reason, signed inside the approval and bound by its logged hash.
    assert!(out.contains("install approvals/pilot/acme/witnessed-1.sh (reason: CHG-4711)"), "{out}");

    // The witness goes away: nothing newer is served to agents, who install nothing new (nor
    // will a signer sign anything that is not in a cosigned checkpoint).
    publish_script(&server, "unwitnessed-1");
    drop(witness);
    server.approve("pilot", "acme/unwitnessed-1.sh");
    let (code, out) = agent.check();
    assert_ne!(code, 0, "{out}");
    assert_eq!(agent.installs("unwitnessed-1"), 0);
    // It comes back (its state kept on disk): the server asks again, and the agent goes on.
    witness = start_witness(&wdir, &log.key, port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, out) = agent.check();
        if code == 0 && agent.installs("unwitnessed-1") == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the agent did not go on: {out}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

    // A tampered database publishes a production approval below its threshold (one of two
    // approvers), logged: the auditor names it and fails.
    let one = server.offline_key("production-approver-1");
    server.forge_role_signed("approvals.production", |_| {}, &[&one]);
    server.wait_for_log();
    let (code, out) = audit(&server, &state, true);
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value =
        serde_json::from_str(out.lines().take_while(|l| !l.starts_with("Error")).collect::<Vec<_>>().join("\n").trim())
            .unwrap();
    let findings = report["findings"].as_array().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f["kind"] == "threshold" && f["detail"].as_str().unwrap().contains("approvals.production")),
        "{report}"
    );

    // Watching, the auditor posts each new finding to a webhook.
    let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_url = format!("http://{}/findings", hook.local_addr().unwrap());
    let mut watcher = server
        .cli()
        .args(["audit", "--log", server.repo_url.trim_end_matches("/repo"), "--trusted-root"])
        .arg(server.data.join("1.root.json"))
        .arg("--log-ca")
        .arg(&server.ca)
        .args(["--watch", "1", "--webhook", &hook_url, "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let posted = {
        use std::io::{Read, Write};
        hook.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut conn = loop {
            match hook.accept() {
                Ok((conn, _)) => break conn,
                Err(_) => {
                    assert!(std::time::Instant::now() < deadline, "the watching auditor posted nothing");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&request).contains("\"finding\"") {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "the webhook request ended early");
            request.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").unwrap();
        String::from_utf8_lossy(&request).into_owned()
    };
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert!(posted.starts_with("POST /findings"), "{posted}");
    assert!(posted.contains("\"severity\":\"violation\""), "{posted}");
    drop(witness);

    // A rewritten history: the witness refuses to cosign it (it does not extend what the
    // witness cosigned), so no client is ever served it.
    rewrite_history(&server);
    let _witness = start_witness(&wdir, &log.key, port);
    server.wait_for_log();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(server.device_client().get("/log/checkpoint").unwrap().status, 404);
    let cosigned =
        crate::common::sql_number(&server, "SELECT COUNT(*) FROM log_checkpoints WHERE cosigned IS NOT NULL");
    assert_eq!(cosigned, 0, "the witness cosigned a rewritten history");
}

#[test]
fn a_signer_signs_only_a_pending_version_that_is_on_the_log() {
    let server = Server::start(|_| {});
    publish_script(&server, "signed-1");
    let out = run_ok(server.cli().args(["approve", "--group", "production", "--target", "acme/signed-1.sh"]));
    assert!(out.contains("waits for signatures"), "{out}");
    let (ok, out, err) = server.try_sign(Some("approvals.production"), "production-approver-1", &[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("on the transparency log {}: entry ", identity(&server).origin)), "{out}");

    // The thief swaps the pending document for one of its own (same version, other content),
    // without a log entry: the second approver's tool refuses to sign it.
    let mut doc = server.pending_doc("approvals.production");
    let entry = doc.targets.get_mut("approvals/production/acme/signed-1.sh").unwrap();
    entry.custom.as_mut().unwrap()["reason"] = "swapped".into();
    server.put_pending_unlogged("approvals.production", doc);
    let second = server.dir.path().join("second-approver-state");
    let (ok, out, err) = server.try_sign(
        Some("approvals.production"),
        "production-approver-2",
        &["--state-dir", second.to_str().unwrap()],
    );
    assert!(!ok, "{out}");
    assert!(err.contains("not on the transparency log: not signed"), "{err}");
}
