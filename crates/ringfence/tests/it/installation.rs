//! A real installation: `init` on the server, the ceremony on an "offline" machine with
//! passphrase-encrypted keys, `import`, then every key holder signs what the server prepared.

use std::process::Command;

use crate::common::{BIN, Server, run_ok, tuf_client};

const PASSPHRASE: &str = "correct horse battery staple";

/// The ceremony's first root, from the keys `<name>.pub.json` in the working directory.
pub(crate) const NEW_ROOT: [&str; 12] = [
    "metadata",
    "new-root",
    "--out",
    "1.root.json",
    "--root-key",
    "root.pub.json",
    "--targets-key",
    "targets.pub.json",
    "--snapshot-key",
    "snapshot.pub.json",
    "--timestamp-key",
    "timestamp.pub.json",
];

fn offline(keys: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("RINGFENCE_KEY_PASSPHRASE", PASSPHRASE).current_dir(keys);
    c
}

#[test]
fn init_ceremony_import_and_first_update() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server-data");
    let keys = dir.path().join("offline");
    std::fs::create_dir_all(&keys).unwrap();
    let out = run_ok(
        Command::new(BIN)
            .args(["init", "--device-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--data-dir"])
            .arg(&data),
    );
    assert!(out.contains("timestamp:"), "{out}");
    assert!(!data.join("online-keys/auto-approver.key").exists(), "no auto-approver unless asked for");

    for name in ["root", "targets", "publisher-initech", "approver-a", "approver-b"] {
        run_ok(offline(&keys).args(["key", "generate", "--dir", ".", "--name", name]));
        let pem = std::fs::read_to_string(keys.join(format!("{name}.key"))).unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"), "{name} is not encrypted");
    }
    // Copy the online public keys to the offline machine, as an operator would.
    for name in ["snapshot", "timestamp"] {
        std::fs::copy(data.join(format!("online-keys/{name}.pub.json")), keys.join(format!("{name}.pub.json")))
            .unwrap();
    }
    run_ok(offline(&keys).args(NEW_ROOT));
    run_ok(offline(&keys).args(["metadata", "sign", "1.root.json", "--key", "root.key"]));
    run_ok(offline(&keys).args(["metadata", "new-targets", "--out", "1.targets.json"]));
    run_ok(offline(&keys).args([
        "metadata",
        "set-group",
        "1.targets.json",
        "--out",
        "1.targets.json",
        "--group",
        "production",
        "--threshold",
        "2",
        "--key",
        "approver-a.pub.json",
        "--key",
        "approver-b.pub.json",
    ]));
    run_ok(offline(&keys).args([
        "metadata",
        "set-publisher",
        "1.targets.json",
        "--out",
        "1.targets.json",
        "--publisher",
        "initech",
        "--threshold",
        "1",
        "--key",
        "publisher-initech.pub.json",
    ]));
    // A wrong passphrase signs nothing.
    let wrong = Command::new(BIN)
        .env("RINGFENCE_KEY_PASSPHRASE", "wrong")
        .current_dir(&keys)
        .args(["metadata", "sign", "1.targets.json", "--key", "targets.key"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("wrong passphrase"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    run_ok(offline(&keys).args(["metadata", "sign", "1.targets.json", "--key", "targets.key"]));

    run_ok(
        Command::new(BIN)
            .arg("import")
            .arg("--config")
            .arg(data.join("ringfence.toml"))
            .arg("--root")
            .arg(keys.join("1.root.json"))
            .arg("--targets")
            .arg(keys.join("1.targets.json")),
    );
    let server = Server::serve(dir, keys.clone(), data, |_| {});
    let sign_all = |key: &str| {
        let mut c = server.cli();
        c.env("RINGFENCE_KEY_PASSPHRASE", PASSPHRASE);
        run_ok(
            c.args(["pending", "sign-all", "--yes", "--key"])
                .arg(server.key(key))
                .arg("--trusted-root")
                .arg(keys.join("1.root.json")),
        )
    };
    // The server prepared the first versions of the delegated roles for their holders.
    let out = sign_all("publisher-initech");
    assert_eq!(out.matches("is published").count(), 257, "{out}");
    assert!(sign_all("approver-a").contains("approvals.production version 1 waits for signatures: 1 of 2"));
    assert!(sign_all("approver-b").contains("approvals.production version 1 is published"));

    // First update: published, signed by the publisher, approved by both approvers.
    let work = server.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("tps-report.pdf"), b"%PDF cover sheet").unwrap();
    let mut m: serde_json::Value =
        serde_json::from_str(include_str!("../../../../docs/examples/hello.manifest.json")).unwrap();
    m["id"] = "initech-tps-1".into();
    m["publisher"] = "initech".into();
    std::fs::write(work.join("m.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    run_ok(server.cli().args(["publish", "--manifest"]).arg(work.join("m.json")).arg(work.join("tps-report.pdf")));
    sign_all("publisher-initech");
    server.approve("production", "initech/tps-report.pdf");
    sign_all("approver-a");
    sign_all("approver-b");
    let out_dir = work.join("out");
    let (ok, answer) = tuf_client(
        &server,
        &work.join("md"),
        &[
            "download",
            "--target",
            "approvals/production/initech/tps-report.pdf",
            "--out-dir",
            out_dir.to_str().unwrap(),
        ],
    );
    assert!(ok, "{answer}");
    assert_eq!(std::fs::read(out_dir.join("tps-report.pdf")).unwrap(), b"%PDF cover sheet");
}
