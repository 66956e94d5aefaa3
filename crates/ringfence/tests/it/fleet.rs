//! Fleet operations with real agents: a group hierarchy signed in top-level targets,
//! approvals that install, uninstall or decline, withdrawals, and a server that tries to
//! re-parent a group.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::agents::{Agent, devices, enroll, token};
use crate::common::{Server, run_ok};

/// Add group `child` under `parent` to top-level targets, approved by a new key `approver`,
/// as the offline ceremony does; the approver then signs the group's first version.
fn add_child_group(server: &Server, child: &str, parent: &str, approver: &str) {
    let keys = &server.keys;
    run_ok(server.cli().args(["key", "generate", "--unencrypted", "--name", approver, "--dir"]).arg(keys));
    let work = server.dir.path().join("ceremony");
    std::fs::create_dir_all(&work).unwrap();
    let (current, draft) = (work.join("targets.json"), work.join("targets.next.json"));
    run_ok(server.cli().args(["fetch", "targets", "--out"]).arg(&current));
    run_ok(
        server
            .cli()
            .args(["metadata", "set-group"])
            .arg(&current)
            .arg("--out")
            .arg(&draft)
            .args(["--group", child, "--parent", parent, "--threshold", "1", "--key"])
            .arg(keys.join(format!("{approver}.pub.json"))),
    );
    run_ok(server.cli().args(["metadata", "sign"]).arg(&draft).arg("--key").arg(server.key("targets")));
    assert!(run_ok(server.cli().args(["propose", "targets"]).arg(&draft)).contains("is published"));
    assert!(server.sign_all(approver).contains(&format!("approvals.{child} version 1 is published")));
}

/// Publish update `id`: one file the `file` module places at `dest`.
fn publish_file(server: &Server, id: &str, dest: &Path) {
    let work = server.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let content = work.join(format!("{id}.txt"));
    std::fs::write(&content, format!("content of {id}\n")).unwrap();
    let mut m: Value = serde_json::from_str(include_str!("../../../../docs/examples/hello.manifest.json")).unwrap();
    m["id"] = id.into();
    m["installer"] = json!({"module": "file", "arguments": [dest.to_str().unwrap(), "0644"]});
    m["applicability"] = json!({});
    let manifest = work.join(format!("{id}.json"));
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    run_ok(server.cli().args(["publish", "--manifest"]).arg(&manifest).arg(&content));
    server.sign_all("publisher-acme");
}

/// `ringfence <command> UPDATE --group G [extra]`, signed at once with `key`.
fn signed(server: &Server, command: &str, update: &str, group: &str, key: &str, extra: &[&str]) -> String {
    run_ok(
        server
            .cli()
            .args([command, update, "--group", group])
            .args(extra)
            .args(["--yes", "--key"])
            .arg(server.key(key))
            .arg("--trusted-root")
            .arg(server.keys.join("1.root.json")),
    )
}

fn check_ok(agent: &Agent) {
    let (code, out) = agent.check();
    assert_eq!(code, 0, "{out}");
}

fn state_of(server: &Server, target: &str) -> Option<String> {
    let device = devices(server).into_iter().next().unwrap();
    device.updates.iter().find(|u| u.target == target).map(|u| u.state.as_str().to_owned())
}

#[test]
fn a_child_group_inherits_overrides_and_withdraws_and_the_server_cannot_reparent_it() {
    let server = Server::start(|_| {});
    add_child_group(&server, "production-eu", "production", "eu-approver");
    let groups: Vec<Value> = serde_json::from_str(&run_ok(server.cli().args(["group", "list", "--json"]))).unwrap();
    let eu = groups.iter().find(|g| g["name"] == "production-eu").unwrap();
    assert_eq!((eu["parent"].as_str(), eu["auto_approve"].as_bool()), (Some("production"), Some(false)));
    let table = run_ok(server.cli().args(["group", "list"]));
    assert!(table.lines().any(|l| l.starts_with("production-eu") && l.contains(" production ")), "{table}");

    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "eu-1", "production-eu", &token(&server, "production-eu", 1));
    let app: PathBuf = agent.dir.join("app.txt");
    publish_file(&server, "app-1", &app);

    // Production approves, with a deadline and a change ticket: one approver signs as they
    // approve, the second later. `pending list` says who signed and who may still.
    let deadline = "2030-01-01T00:00:00Z";
    let out = signed(
        &server,
        "approve",
        "app-1",
        "production",
        "production-approver-1",
        &["--deadline", deadline, "--reason", "CHG-1042"],
    );
    assert!(out.contains("waits for signatures: 1 of 2"), "{out}");
    let pending: Vec<Value> = serde_json::from_str(&run_ok(server.cli().args(["pending", "list", "--json"]))).unwrap();
    let production = pending.iter().find(|p| p["role"] == "approvals.production").unwrap();
    assert_eq!(production["signed_by"].as_array().unwrap().len(), 1, "{production}");
    assert_eq!(production["waiting_for"].as_array().unwrap().len(), 2, "{production}");
    assert!(run_ok(server.cli().args(["pending", "list"])).contains("1 of 2"));
    server.sign("approvals.production", "production-approver-2");
    let approval = &server.published("approvals.production").targets["approvals/production/acme/app-1.txt"];
    let custom = approval.custom.as_ref().unwrap();
    assert_eq!((custom["deadline"].as_str(), custom["reason"].as_str()), (Some(deadline), Some("CHG-1042")));

    // The child inherits production's approval.
    check_ok(&agent);
    assert_eq!(std::fs::read_to_string(&app).unwrap(), "content of app-1\n");
    assert_eq!(state_of(&server, "approvals/production/acme/app-1.txt").as_deref(), Some("installed"));

    // The child overrides it: uninstall, although its parent still says install.
    let out = signed(&server, "approve", "app-1", "production-eu", "eu-approver", &["--action", "uninstall"]);
    assert!(out.contains("approvals.production-eu version 2 is published"), "{out}");
    check_ok(&agent);
    assert!(!app.exists(), "uninstalled by the file module");
    assert_eq!(state_of(&server, "approvals/production-eu/acme/app-1.txt").as_deref(), Some("uninstalled"));

    // Withdrawn, the child inherits again.
    let out = signed(&server, "withdraw", "app-1", "production-eu", "eu-approver", &[]);
    assert!(out.contains("approvals.production-eu version 3 is published"), "{out}");
    assert!(server.published("approvals.production-eu").targets.is_empty());
    check_ok(&agent);
    assert!(app.exists(), "installed again from the parent's approval");

    // A decline in the child keeps a new update of the parent's away.
    let other = agent.dir.join("other.txt");
    publish_file(&server, "app-2", &other);
    signed(&server, "approve", "app-2", "production", "production-approver-1", &[]);
    server.sign("approvals.production", "production-approver-2");
    signed(&server, "approve", "app-2", "production-eu", "eu-approver", &["--action", "decline"]);
    check_ok(&agent);
    assert!(!other.exists(), "declined for production-eu");

    // The server replaces the child's role (the decline) with a version only it signed: the
    // agent acts on nothing rather than let the parent's install through in its place.
    server.forge_role("approvals.production-eu", |_| {});
    let (code, out) = agent.check();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("approvals.production-eu"), "{out}");
    assert!(!other.exists(), "{out}");

    // The server re-parents the group under pilot, which it approves for online, and approves
    // the declined update there: the agent refuses the forged top-level targets.
    server.forge_role("targets", |t| {
        assert!(ringfence_trust::writer::set_parent(t, "approvals.production-eu", Some("pilot")));
    });
    let (code, out) = agent.check();
    assert_ne!(code, 0, "{out}");
    assert!(!other.exists(), "{out}");
    assert!(app.exists(), "nothing installed is touched: {out}");
}
