//! The offline ceremony through the real CLI: add a group and a publisher to top-level
//! targets, let their key holders sign the roles the server prepares, then serve an update.

use crate::common::{Server, run_ok, tuf_client};

#[test]
fn a_new_group_and_publisher_go_from_ceremony_to_download() {
    let server = Server::start(|_| {});
    let keys = &server.keys;
    let work = server.dir.path().join("ceremony");
    std::fs::create_dir_all(&work).unwrap();
    for name in ["staging-approver", "publisher-globex"] {
        run_ok(server.cli().args(["key", "generate", "--unencrypted", "--name", name, "--dir"]).arg(keys));
    }
    let current = work.join("targets.json");
    run_ok(server.cli().args(["fetch", "targets", "--out"]).arg(&current));
    let draft = work.join("targets.next.json");
    run_ok(
        server
            .cli()
            .args(["metadata", "set-group"])
            .arg(&current)
            .arg("--out")
            .arg(&draft)
            .args(["--group", "staging", "--threshold", "1", "--key"])
            .arg(keys.join("staging-approver.pub.json")),
    );
    run_ok(
        server
            .cli()
            .args(["metadata", "set-publisher"])
            .arg(&draft)
            .arg("--out")
            .arg(&draft)
            .args(["--publisher", "globex", "--threshold", "1", "--key"])
            .arg(keys.join("publisher-globex.pub.json")),
    );
    // Unsigned, it is held as pending, not published.
    assert!(run_ok(server.cli().args(["propose", "targets"]).arg(&draft)).contains("targets version 2 waits"));
    run_ok(server.cli().args(["metadata", "sign"]).arg(&draft).arg("--key").arg(server.key("targets")));
    assert!(run_ok(server.cli().args(["propose", "targets"]).arg(&draft)).contains("targets version 2 is published"));

    // The server prepared version 1 of the new roles; only their key holders can sign them.
    let pending = run_ok(server.cli().args(["pending", "list"]));
    let row = |role: &str| pending.lines().any(|l| l.split_whitespace().take(2).eq([role, "1"]));
    assert!(pending.starts_with("ROLE "), "a table: {pending}");
    assert!(row("approvals.staging") && row("publisher.globex"), "{pending}");
    assert!(pending.contains("ringfence pending sign-all"), "says what to do next: {pending}");
    // Scripts get the same list as JSON.
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&run_ok(server.cli().args(["pending", "list", "--json"]))).unwrap();
    let roles: Vec<&str> = listed.iter().filter_map(|p| p["role"].as_str()).collect();
    assert!(roles.contains(&"approvals.staging") && roles.contains(&"publisher.globex"), "{listed:?}");
    let sign_all = |key: &str| server.sign_all(key);
    // A key that may sign none of them signs nothing.
    assert!(sign_all("production-approver-1").trim().is_empty());
    assert!(sign_all("staging-approver").contains("approvals.staging version 1 is published"));
    let out = sign_all("publisher-globex");
    assert!(out.contains("publisher.globex version 1 is published"), "{out}");
    assert_eq!(out.matches("is published").count(), 257, "the publisher role and its 256 bins");
    assert!(run_ok(server.cli().args(["pending", "list"])).contains("nothing is waiting"));

    // An update of the new publisher, approved for the new group, reaches a TUF client.
    let file = work.join("gadget.bin");
    std::fs::write(&file, b"globex gadget").unwrap();
    let manifest = work.join("gadget.json");
    let mut m: serde_json::Value =
        serde_json::from_str(include_str!("../../../../docs/examples/hello.manifest.json")).unwrap();
    m["id"] = "globex-gadget-1".into();
    m["publisher"] = "globex".into();
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    run_ok(server.cli().args(["publish", "--manifest"]).arg(&manifest).arg(&file));
    sign_all("publisher-globex");
    assert!(server.approve("staging", "globex/gadget.bin").contains("waits for signatures: 0 of 1"));
    sign_all("staging-approver");
    let out_dir = work.join("out");
    let (ok, answer) = tuf_client(
        &server,
        &work.join("md"),
        &["download", "--target", "approvals/staging/globex/gadget.bin", "--out-dir", out_dir.to_str().unwrap()],
    );
    assert!(ok, "{answer}");
    assert_eq!(std::fs::read(out_dir.join("gadget.bin")).unwrap(), b"globex gadget");
}
