//! The agent's own TUF client (`ringfence-agent tuf`) against a running server, and the TUF
//! attack catalog played by an attacker who holds the server's database, disk and online keys.

use ringfence_store::Store;

use crate::common::{Server, agent_tuf, sql};

const APPROVED: &str = "approvals/production/acme/agent-test.bin";

fn approved_server(content: &[u8]) -> Server {
    let server = Server::start(|_| {});
    server.publish_signed("agent-test.bin", content);
    server.approve("production", "acme/agent-test.bin");
    server.sign("approvals.production", "production-approver-1");
    server.sign("approvals.production", "production-approver-3");
    server
}

#[test]
fn agent_tuf_client_downloads_lazily_and_does_not_refetch() {
    let content = b"the agent's first target";
    let server = approved_server(content);
    let md = server.dir.path().join("agent-md");
    let out = server.dir.path().join("agent-out");
    let (ok, err) = agent_tuf(&server, &md, &["refresh"], &[], &out);
    assert!(ok, "{err}");
    for f in ["root.json", "timestamp.json", "snapshot.json", "targets.json"] {
        assert!(md.join(f).exists(), "{f} not stored");
    }
    assert!(!md.join("approvals.production.json").exists(), "refresh loads top-level roles only");

    let (ok, err) = agent_tuf(&server, &md, &["download"], &[APPROVED], &out);
    assert!(ok, "{err}");
    let saved = out.join("approvals%2Fproduction%2Facme%2Fagent-test.bin");
    assert_eq!(std::fs::read(&saved).unwrap(), content);
    // Lazy: the production approval role was loaded, no publisher bin and no other group.
    assert!(md.join("approvals.production.json").exists());
    assert!(!md.join("approvals.pilot.json").exists());
    let bins = std::fs::read_dir(&md)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("publisher.acme."))
        .count();
    assert_eq!(bins, 0, "the approval alone carries length and hashes");

    // Already there with the right hash: not fetched again (the blob is now broken on the
    // server, so a fetch would fail).
    let sha = ringfence_trust::sha256_hex(content);
    std::fs::write(crate::common::blob_file(&server, &sha), vec![0u8; content.len()]).unwrap();
    let (ok, err) = agent_tuf(&server, &md, &["download"], &[APPROVED], &out);
    assert!(ok, "{err}");
    // A new client cannot fetch it any more: arbitrary package refused, nothing written.
    let fresh_out = server.dir.path().join("fresh-out");
    let (ok, err) = agent_tuf(&server, &server.dir.path().join("fresh-md"), &["download"], &[APPROVED], &fresh_out);
    assert!(!ok);
    assert!(err.contains("sha256 hash does not match"), "{err}");
    assert!(!fresh_out.join("approvals%2Fproduction%2Facme%2Fagent-test.bin").exists());
}

#[test]
fn agent_refuses_rollback_freeze_endless_data_and_unapproved_targets() {
    let content = b"payload";
    let server = approved_server(content);
    let md = server.dir.path().join("md");
    let out = server.dir.path().join("out");
    let (ok, err) = agent_tuf(&server, &md, &["refresh"], &[], &out);
    assert!(ok, "{err}");

    // Unapproved: published and signed by the publisher, but approved for pilot only.
    server.publish_signed("other.bin", b"other");
    server.approve("pilot", "acme/other.bin");
    let (ok, err) = agent_tuf(&server, &md, &["download"], &["approvals/production/acme/other.bin"], &out);
    assert!(!ok);
    assert!(err.contains("is not a trusted target"), "{err}");

    // Endless data: the attacker grows the blob and its recorded length.
    let sha = ringfence_trust::sha256_hex(content);
    std::fs::write(crate::common::blob_file(&server, &sha), vec![b'x'; 1 << 20]).unwrap();
    sql(&server, &format!("UPDATE blobs SET length = {} WHERE sha256 = '{sha}'", 1 << 20));
    let (ok, err) = agent_tuf(&server, &md, &["download"], &[APPROVED], &out);
    assert!(!ok);
    assert!(err.contains("endless data"), "{err}");
    assert!(std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0) == 0, "nothing written");

    // Rollback: the attacker serves an older timestamp.
    let trusted_ts = std::fs::read(md.join("timestamp.json")).unwrap();
    let newest = server.runtime.block_on(server.db.latest_metadata("timestamp")).unwrap().unwrap().version;
    sql(&server, &format!("DELETE FROM metadata WHERE role = 'timestamp' AND version > {}", newest - 3));
    let (ok, err) = agent_tuf(&server, &md, &["refresh"], &[], &out);
    assert!(!ok);
    assert!(err.contains("rollback"), "{err}");
    assert_eq!(std::fs::read(md.join("timestamp.json")).unwrap(), trusted_ts, "the newest trusted timestamp stays");
}

#[test]
fn agent_refuses_a_frozen_repository() {
    let server = Server::start(|c| {
        c.expiry.timestamp_secs = 2;
        c.expiry.check_interval_secs = 3600;
    });
    server.publish_signed("f.bin", b"f");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let md = server.dir.path().join("md");
    let (ok, err) = agent_tuf(&server, &md, &["refresh"], &[], &server.dir.path().join("out"));
    assert!(!ok);
    assert!(err.contains("timestamp expired"), "{err}");
    assert!(!md.join("snapshot.json").exists(), "nothing below a frozen timestamp is stored");
}
