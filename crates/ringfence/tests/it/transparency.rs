//! The transparency log end to end: every published version on it, tiles and checkpoints as
//! C2SP says (checked against an independent Merkle implementation), agents that refuse what
//! is not on the record or a log that does not extend what they saw.

use ringfence_tlog::entry::Entry;
use ringfence_tlog::proof::{IDENTITY_TARGET, LogIdentity};
use ringfence_tlog::tree::{TILE_HEIGHT, split_entry_bundle, tile_path};

use crate::agents::{enroll, last_report, publish_script, token};
use crate::common::{Server, run_ok, sql, sql_column};

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
    server.wait_for_log();

    // The stolen server rewrites its log's history (one entry slipped in at the start) and
    // shows that log from now on: a split view against what this agent trusted.
    for table in ["log_entries", "log_hashes", "log_metadata", "log_checkpoints"] {
        sql(&server, &format!("DELETE FROM {table}"));
    }
    let slipped = Entry::DeviceAccepted { id: "f00d".into(), public_key: "ab".repeat(32) }.to_bytes().unwrap();
    let literal = if server.state.config.database.url.is_some() {
        format!("decode('{}', 'hex')", hex_of(&slipped))
    } else {
        format!("X'{}'", hex_of(&slipped))
    };
    sql(&server, &format!("INSERT INTO log_queue (id, entry) VALUES (-1, {literal})"));
    server.wait_for_log();
    publish_script(&server, "second-1");
    server.approve("pilot", "acme/second-1.sh");

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
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
