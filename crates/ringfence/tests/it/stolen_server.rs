//! An attacker holding the server's database, disk, admin token and every online key.

use ringfence_proto::tuf::Targets;
use ringfence_trust::{Envelope, SigningKey};

use crate::common::{Server, tuf_client};

fn load_key(server: &Server, file: &str) -> SigningKey {
    let pem = std::fs::read_to_string(server.data.join("online-keys").join(file)).unwrap();
    SigningKey::from_pem(&pem, None).unwrap()
}

#[test]
fn online_keys_cannot_approve_for_production() {
    let server = Server::start(|_| {});
    server.publish_signed("tool.bin", b"legit tool");
    let md = server.dir.path().join("md");
    let out = server.dir.path().join("out");
    let out_s = out.to_str().unwrap();

    // Through the API: the approval waits for approvers; a signature by an online key under
    // an approver's key id is refused and changes nothing.
    assert!(server.approve("production", "acme/tool.bin").contains("0 of 2"));
    let pending = server.admin().get("/api/v1/pending/approvals.production").unwrap().ok().unwrap();
    let env = Envelope::<Targets>::parse(&pending, 1 << 24).unwrap();
    let auto = load_key(&server, "auto-approver.key");
    let approver_id =
        SigningKey::from_pem(&std::fs::read_to_string(server.key("production-approver-1")).unwrap(), None)
            .unwrap()
            .key_id();
    let forged = serde_json::json!({"version": env.signed.version, "signatures": [
        {"keyid": approver_id.to_string(), "sig": hex_sig(&auto, env.canonical_signed())}]});
    let answer = server.admin().send_json("POST", "/api/v1/pending/approvals.production/signatures", &forged).unwrap();
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(answer.text().contains("does not verify"), "{}", answer.text());
    let own = serde_json::json!({"version": env.signed.version, "signatures": [
        {"keyid": auto.key_id().to_string(), "sig": hex_sig(&auto, env.canonical_signed())}]});
    let answer = server.admin().send_json("POST", "/api/v1/pending/approvals.production/signatures", &own).unwrap();
    assert_eq!(answer.status, 400);
    assert!(answer.text().contains("may not sign"), "{}", answer.text());
    assert_eq!(
        server.admin().get("/api/v1/pending/approvals.production").unwrap().ok().unwrap(),
        pending,
        "refusals change nothing"
    );

    // Straight into the database: an approval role signed with every online key, with a fresh
    // snapshot and timestamp. The reference client refuses it.
    server.forge_role("approvals.production", |t| t.targets = env.signed.targets.clone());
    let (ok, answer) =
        tuf_client(&server, &md, &["download", "--target", "approvals/production/acme/tool.bin", "--out-dir", out_s]);
    assert!(!ok);
    assert_eq!(answer["error"], "UnsignedMetadataError", "{answer}");
    assert!(!out.join("tool.bin").exists());
}

#[test]
fn rolled_back_metadata_is_refused() {
    let server = Server::start(|_| {});
    let md = server.dir.path().join("md");
    server.publish_signed("a.bin", b"first");
    let (ok, answer) = tuf_client(&server, &md, &["refresh"]);
    assert!(ok, "{answer}");
    let trusted = answer["versions"]["timestamp"].as_u64().unwrap();
    assert!(trusted >= 2);
    // The attacker deletes the newer versions so that an older timestamp is served.
    crate::common::sql(&server, "DELETE FROM metadata WHERE role = 'timestamp' AND version > 1");
    let (ok, answer) = tuf_client(&server, &md, &["refresh"]);
    assert!(!ok);
    assert_eq!(answer["error"], "BadVersionNumberError", "{answer}");
}

fn hex_sig(key: &SigningKey, message: &[u8]) -> String {
    key.sign(message).iter().map(|b| format!("{b:02x}")).collect()
}
