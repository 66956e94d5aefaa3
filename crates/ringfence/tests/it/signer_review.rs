//! The signers' tool against an attacker who holds the server (database, disk, admin token,
//! every online key): it refuses what breaks the layout or its own trusted state, and shows
//! what it refused.

use ringfence_proto::tuf::{Root, Targets};
use ringfence_store::Store;
use ringfence_trust::policy::rule;
use ringfence_trust::{Envelope, writer};

use crate::common::{Server, sql};

/// `doc` with one more delegation, listed first: every path, to a key the server holds.
fn with_hidden_delegation(server: &Server, mut doc: Targets, name: &str) -> Targets {
    let (key, role) = server.all_paths_to_server(name);
    let delegations = doc.delegations.as_mut().unwrap();
    delegations.keys.insert(role.keyids[0].clone(), key);
    delegations.roles.insert(0, role);
    doc.version += 1;
    doc
}

#[test]
fn a_delegation_hidden_in_a_pending_role_is_refused_by_the_server_and_the_signer() {
    let server = Server::start(|_| {});
    let evil = with_hidden_delegation(&server, server.published("publisher.acme"), "publisher.acme.f6c");

    // Through the admin API: the server refuses to hold it for signers.
    let proposal: serde_json::Value =
        serde_json::from_slice(&Envelope::new(evil.clone()).unwrap().to_bytes().unwrap()).unwrap();
    let answer = server.admin().send_json("PUT", "/api/v1/pending/publisher.acme", &proposal).unwrap();
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(answer.text().contains(rule::BINS), "{}", answer.text());
    assert_eq!(server.admin().get("/api/v1/pending/publisher.acme").unwrap().status, 404, "nothing held");

    // Straight into the database: the publisher's tool shows every field of the injected
    // delegation and its position, refuses, and signs nothing.
    server.put_pending("publisher.acme", evil);
    let (ok, out, err) = server.try_sign(None, "publisher-acme", &[]);
    assert!(!ok, "{out}");
    assert!(err.contains(rule::BINS), "{err}");
    assert!(out.contains("publisher.acme, pending version 2 (REFUSED, not signed)"), "{out}");
    assert!(
        out.contains(r#"+ ["delegations","roles","publisher.acme.f6c"] = {"keyids":["#)
            && out.contains(r#""path_hash_prefixes":[""],"terminating":false,"threshold":1}"#),
        "{out}"
    );
    assert!(out.contains(r#"~ ["delegations","roles"] = ["publisher.acme.f6c","publisher.acme.00""#), "{out}");
    assert!(out.contains("entries unchanged, sha256 "), "{out}");
    let pending = server.admin().get("/api/v1/pending/publisher.acme").unwrap().ok().unwrap();
    assert!(Envelope::<Targets>::parse(&pending, 1 << 24).unwrap().signatures.is_empty(), "not signed");

    // The same trick through top-level targets ("add a group"): refused with the rule named.
    let mut targets = with_hidden_delegation(&server, server.published("targets"), "evil");
    targets.delegations.as_mut().unwrap().roles[0].paths = Some(vec!["*".into()]);
    targets.delegations.as_mut().unwrap().roles[0].path_hash_prefixes = None;
    server.put_pending("targets", targets);
    let (ok, out, err) = server.try_sign(Some("targets"), "targets", &[]);
    assert!(!ok, "{out}");
    assert!(err.contains(rule::TOP_LEVEL_DELEGATES), "{err}");
    assert!(out.contains(r#"+ ["delegations","roles","evil"] = {"keyids":["#), "{out}");
}

#[test]
fn an_older_repository_shown_as_current_is_refused() {
    let server = Server::start(|_| {});
    server.publish_signed("bad.bin", b"found bad later");
    server.publish_signed("harmless.bin", b"harmless");
    server.approve("production", "acme/bad.bin");
    server.sign("approvals.production", "production-approver-1");
    server.sign("approvals.production", "production-approver-2");
    let approved = server.published("approvals.production");
    assert!(approved.targets.contains_key("approvals/production/acme/bad.bin"));
    let store = &server.db;
    let latest = |role: &str| server.runtime.block_on(store.latest_metadata(role)).unwrap().unwrap().version;
    let (snapshot_then, timestamp_then) = (latest("snapshot"), latest("timestamp"));

    // The operators withdraw bad.bin: the next version, signed by two approvers.
    let mut withdrawn = approved.clone();
    withdrawn.version += 1;
    withdrawn.targets.clear();
    server.put_pending("approvals.production", withdrawn);
    server.sign("approvals.production", "production-approver-1");
    server.sign("approvals.production", "production-approver-2");
    assert!(server.published("approvals.production").targets.is_empty());

    // The attacker serves the older, still valid state as current and prepares "the next
    // version" from it: the old approvals plus one harmless approval.
    let withdrawn_version = approved.version + 1;
    sql(
        &server,
        &format!("DELETE FROM metadata WHERE role = 'approvals.production' AND version = {withdrawn_version}"),
    );
    sql(&server, &format!("DELETE FROM metadata WHERE role = 'snapshot' AND version > {snapshot_then}"));
    sql(&server, &format!("DELETE FROM metadata WHERE role = 'timestamp' AND version > {timestamp_then}"));
    let harmless =
        server.published(&format!("publisher.acme.{}", ringfence_trust::paths::bin_prefix_of("acme/harmless.bin", 2)));
    let mut entry = harmless.targets["acme/harmless.bin"].clone();
    let custom = ringfence_proto::tuf::ApprovalCustom {
        action: ringfence_proto::tuf::ApprovalAction::Install,
        deadline: None,
        reason: None,
        rollout: None,
        update_id: "acme-harmless.bin".into(),
        published_entry_sha256: writer::entry_digest(&entry),
    };
    entry.custom = Some(serde_json::to_value(custom).unwrap());
    let mut replayed = approved;
    replayed.version = withdrawn_version;
    replayed.targets.insert("approvals/production/acme/harmless.bin".into(), entry);
    server.put_pending("approvals.production", replayed);
    let (ok, out, err) = server.try_sign(Some("approvals.production"), "production-approver-1", &[]);
    assert!(!ok, "{out}");
    assert!(err.contains("already signed a different approvals.production version"), "{err}");
    assert!(out.contains(r#"+ ["targets","approvals/production/acme/harmless.bin"]"#), "{out}");
    let (ok, _, err) = server.try_sign(Some("approvals.production"), "production-approver-2", &[]);
    assert!(!ok && err.contains("REFUSED"), "{err}");

    // A pending version that does not follow the published one is refused too.
    let mut jump = server.published("approvals.production");
    jump.version += 5;
    server.put_pending("approvals.production", jump);
    let (ok, _, err) = server.try_sign(Some("approvals.production"), "production-approver-3", &[]);
    assert!(!ok);
    assert!(err.contains("only 3 may follow"), "{err}");
}

#[test]
fn a_root_review_shows_every_change_and_refuses_jumps_and_far_expiry() {
    let server = Server::start(|_| {});
    let bytes = server.admin().get("/api/v1/metadata/root").unwrap().ok().unwrap();
    let current = Envelope::<Root>::parse(&bytes, 1 << 20).unwrap();
    let put_root = |root: Root| {
        let bytes = Envelope::new(root).unwrap().to_bytes().unwrap();
        let record = ringfence_store::PendingRecord {
            role: "root".into(),
            version: serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["signed"]["version"]
                .as_u64()
                .unwrap(),
            bytes,
            created_at: ringfence_server::unix_now(),
        };
        server.runtime.block_on(server.db.put_pending(&record, &[])).unwrap();
    };

    // Version 2 that drops a role's entry, turns consistent snapshots off, carries a field
    // this version does not know and lives a century.
    let mut next = current.signed.clone();
    next.version += 1;
    next.consistent_snapshot = false;
    next.roles.remove("targets");
    next.unrecognized.insert("x-note".into(), serde_json::json!({"by": "server"}));
    next.expires = "2126-01-01T00:00:00Z".into();
    put_root(next.clone());
    let (ok, out, err) = server.try_sign(Some("root"), "root", &[]);
    assert!(!ok, "{out}");
    assert!(err.contains("days from now"), "{err}");
    assert!(out.contains(r#"~ ["consistent_snapshot"] = false (was true)"#), "{out}");
    assert!(out.contains(r#"- ["roles","targets"] (was {"#), "{out}");
    assert!(out.contains(r#"+ ["x-note"] = {"by":"server"}"#), "{out}");
    assert!(out.contains(r#"~ ["expires"] = "2126-01-01T00:00:00Z""#), "{out}");

    // A version jump is refused whatever it changes.
    let mut jump = current.signed.clone();
    jump.version += 3;
    put_root(jump);
    let (ok, _, err) = server.try_sign(Some("root"), "root", &[]);
    assert!(!ok);
    assert!(err.contains("only 2 may follow"), "{err}");
}
