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

/// Publish update `id` fixing `cves`: a script that records its run in the agent's directory
/// and exits `exit`.
fn publish_script(server: &Server, id: &str, cves: &[&str], exit: i32) {
    publish_with(server, id, exit, |m| m["cves"] = json!(cves));
}

/// Publish update `id` (a script exiting `exit`), its manifest changed by `edit` first.
pub(crate) fn publish_with(server: &Server, id: &str, exit: i32, edit: impl FnOnce(&mut Value)) {
    let work = server.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let script = work.join(format!("{id}.sh"));
    // A `fail` file in the agent's directory makes any of these scripts fail there; a `brick`
    // file makes them kill the agent mid-install, as an update that bricks a device would.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ -e brick ] && exec kill -KILL $PPID\n[ -e fail ] && exit 1\n\
             echo \"$RINGFENCE_UPDATE_ID\" >> ran-{id}\nexit {exit}\n"
        ),
    )
    .unwrap();
    let mut m: Value = serde_json::from_str(include_str!("../../../../docs/examples/hello.manifest.json")).unwrap();
    m["id"] = id.into();
    m["installer"] = json!({"module": "script"});
    m["applicability"] = json!({});
    edit(&mut m);
    let manifest = work.join(format!("{id}.json"));
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    run_ok(server.cli().args(["publish", "--manifest"]).arg(&manifest).arg(&script));
    server.sign_all("publisher-acme");
}

fn report(server: &Server, args: &[&str]) -> Value {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    all.push("--json");
    serde_json::from_str(&run_ok(server.cli().args(&all))).unwrap()
}

/// The row of `file` in a compliance report, as (installed, needed, failed, no_status).
fn counts(report: &Value, file: &str) -> Option<(u64, u64, u64, u64)> {
    let row = report["rows"].as_array().unwrap().iter().find(|r| r["target"] == file)?;
    let n = |k: &str| row[k].as_u64().unwrap();
    Some((n("installed"), n("needed"), n("failed"), n("no_status")))
}

#[test]
fn reports_follow_a_patch_tuesday_from_pilot_to_production() {
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let pilot = enroll(&server, &root, "pilot-1", "pilot", &token(&server, "pilot", 1));
    let production_token = token(&server, "production", 2);
    let prod = enroll(&server, &root, "prod-1", "production", &production_token);
    let _never_seen = enroll(&server, &root, "prod-2", "production", &production_token);

    publish_script(&server, "kb-1", &["CVE-2025-59287"], 0);
    publish_script(&server, "kb-2", &["cve-2025-0001"], 1);
    for update in ["kb-1", "kb-2"] {
        assert!(run_ok(server.cli().args(["approve", update, "--group", "pilot"])).contains("is published"));
    }
    let (code, out) = pilot.check();
    assert_eq!(code, 3, "kb-2's script fails: {out}");
    check_ok(&prod);

    // Pilot: kb-1 installed on its one device, kb-2 failed.
    let pilot_report = report(&server, &["compliance", "--group", "pilot"]);
    assert_eq!(pilot_report["devices"], 1);
    assert_eq!(counts(&pilot_report, "acme/kb-1.sh"), Some((1, 0, 0, 0)));
    assert_eq!(counts(&pilot_report, "acme/kb-2.sh"), Some((0, 0, 1, 0)));
    let table = run_ok(server.cli().args(["report", "compliance", "--group", "pilot"]));
    assert!(table.lines().any(|l| l.starts_with("acme/kb-1.sh") && l.contains("kb-1")), "{table}");
    // Production has approved nothing yet: no rows, two devices.
    let production_report = report(&server, &["compliance", "--group", "production"]);
    assert_eq!(
        (production_report["devices"].as_u64(), production_report["rows"].as_array().map(Vec::len)),
        (Some(2), Some(0))
    );

    // The CVE report: fixed by kb-1, approved and installed in pilot only.
    let cve = report(&server, &["cve", "CVE-2025-59287"]);
    assert_eq!(cve["updates"], json!(["kb-1"]));
    let group = |name: &str| cve["groups"].as_array().unwrap().iter().find(|g| g["group"] == name).unwrap().clone();
    assert_eq!((group("pilot")["approved"].as_bool(), group("pilot")["installed"].as_u64()), (Some(true), Some(1)));
    assert_eq!(
        (group("production")["approved"].as_bool(), group("production")["devices"].as_u64()),
        (Some(false), Some(2))
    );
    let text = run_ok(server.cli().args(["report", "cve", "CVE-2025-59287"]));
    assert!(text.contains("not approved in: production"), "{text}");
    // The failed fix leaves pilot-1 exposed to the other CVE (ids compare upper-case).
    let cve2 = report(&server, &["cve", "CVE-2025-0001"]);
    let exposed = cve2["exposed"].as_array().unwrap();
    assert_eq!(exposed.len(), 1, "{cve2}");
    assert_eq!((exposed[0]["hostname"].as_str().is_some(), exposed[0]["state"].as_str()), (true, Some("failed")));

    // Production approves kb-1 with a deadline; its checked-in device installs it, the other
    // has no status.
    let out = signed(
        &server,
        "approve",
        "kb-1",
        "production",
        "production-approver-1",
        &["--deadline", "2030-01-01T00:00:00Z"],
    );
    assert!(out.contains("1 of 2"), "{out}");
    server.sign("approvals.production", "production-approver-2");
    check_ok(&prod);
    let production_report = report(&server, &["compliance", "--group", "production"]);
    assert_eq!(counts(&production_report, "acme/kb-1.sh"), Some((1, 0, 0, 1)));
    let row = &production_report["rows"][0];
    assert_eq!((row["action"].as_str(), row["deadline"].as_str()), (Some("install"), Some("2030-01-01T00:00:00Z")));

    // CSV from the admin API, for spreadsheets.
    let csv = server.admin().get("/api/v1/reports/compliance?group=production&format=csv").unwrap();
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let text = csv.text();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("group,target,update_id,action,deadline,installed"));
    assert_eq!(lines.next(), Some("production,acme/kb-1.sh,kb-1,install,2030-01-01T00:00:00Z,1,0,0,0,0,1"));
    for bad in ["", "?group=Nope", "?group=production&format=xml", "?group=production&limit=0"] {
        let answer = server.admin().get(&format!("/api/v1/reports/compliance{bad}")).unwrap();
        assert_eq!(answer.status, 400, "{bad}: {}", answer.text());
    }
    assert_eq!(server.admin().get("/api/v1/reports/compliance?group=nowhere").unwrap().status, 404);
    assert_eq!(server.admin().get("/api/v1/reports/cve/not-a-cve").unwrap().status, 400);

    // prod-2 enrolled and never checked in: a stale device.
    let stale = report(&server, &["stale", "--days", "1"]);
    let stale = stale.as_array().unwrap();
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert!(stale[0]["last_checkin"].is_null());
}

/// The published approval of `file` in `group`: (action, reason, deadline).
fn approval(server: &Server, group: &str, file: &str) -> Option<(String, Option<String>, Option<String>)> {
    let role = server.published(&format!("approvals.{group}"));
    let custom = role.targets.get(&format!("approvals/{group}/{file}"))?.custom.clone()?;
    let text = |k: &str| custom[k].as_str().map(str::to_owned);
    Some((text("action")?, text("reason"), text("deadline")))
}

/// A loopback HTTP listener that answers `200` to one request and hands it over whole.
fn webhook_listener(fail_first: usize) -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    // Bounded: at most 200 requests, then the thread ends.
    std::thread::spawn(move || {
        for n in 0..200 {
            let Ok((mut stream, _)) = listener.accept() else { return };
            stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                let complete = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
                    let length = head
                        .lines()
                        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    body.len() >= length
                });
                if n == 0 || complete {
                    break;
                }
            }
            let answer: &[u8] = if n < fail_first {
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
            };
            let _ = stream.write_all(answer);
            if tx.send(String::from_utf8_lossy(&request).into_owned()).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

/// The next event of kind `kind` the webhook receives (at most 20 s): the request's head, its
/// body as sent, and the event.
fn next_event(webhook: &std::sync::mpsc::Receiver<String>, kind: &str) -> (String, String, Value) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let request = webhook.recv_timeout(left).unwrap_or_else(|_| panic!("no {kind} event in 20 s"));
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        let event: Value = serde_json::from_str(body).unwrap();
        if event["event"] == kind {
            return (head.to_owned(), body.to_owned(), event);
        }
    }
}

/// Webhook events wait in the outbox: a receiver answering 503 gets the same signed body again
/// (with backoff) until it answers 2xx, and an event made while the receiver is down is
/// delivered after the server restarts.
#[test]
fn webhook_events_are_retried_until_delivered_and_survive_a_restart() {
    let (port, webhook) = webhook_listener(2);
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("webhook.secret");
    std::fs::write(&secret, "sixteen or more bytes of secret").unwrap();
    let configure = |port: u16, secret: std::path::PathBuf| {
        move |c: &mut ringfence_server::Config| {
            c.approvals.webhook_url = Some(format!("http://127.0.0.1:{port}/hook"));
            c.approvals.webhook_secret_file = Some(secret);
            c.approvals.webhook_retry_secs = 1;
        }
    };
    let server = Server::start(configure(port, secret.clone()));
    publish_with(&server, "kb-w", 0, |_| {});
    // Two 503s, then 200: three attempts of the same body, one second, then two, apart.
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let request = webhook.recv_timeout(std::time::Duration::from_secs(20)).expect("an attempt");
        let (_, body) = request.split_once("\r\n\r\n").unwrap();
        bodies.push(body.to_owned());
    }
    assert!(bodies.iter().all(|b| b == &bodies[0]), "{bodies:?}");
    let event: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!((event["event"].as_str(), event["update"].as_str()), (Some("update_published"), Some("kb-w")));
    let counts = || server.runtime.block_on(server.state.events.counts()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while counts() != (0, 1, 0) {
        assert!(std::time::Instant::now() < deadline, "{:?}", counts());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // A device that fails an update is an event too, with its reason.
    let root = server.dir.path().join("agents");
    let device = enroll(&server, &root, "w-1", "pilot", &token(&server, "pilot", 1));
    std::fs::write(device.dir.join("fail"), "").unwrap();
    assert!(server.approve("pilot", "acme/kb-w.sh").contains("is published"));
    let _ = device.check();
    let (_, _, failed) = next_event(&webhook, "device_update_failed");
    assert_eq!(failed["target"], "approvals/pilot/acme/kb-w.sh", "{failed}");
    assert!(failed["by"].as_str().unwrap().starts_with("device "), "{failed}");

    // The receiver goes away; an event made now waits; the server stops.
    drop(webhook);
    let closed = crate::common::free_port();
    let server = {
        let (keys, data) = (server.keys.clone(), server.data.clone());
        let kept = server.stop();
        Server::serve(kept, keys, data, configure(closed, secret.clone()))
    };
    publish_with(&server, "kb-x", 0, |_| {});
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (waiting, _, _) = server.runtime.block_on(server.state.events.counts()).unwrap();
    assert_eq!(waiting, 1, "kept while nobody listens");
    let kept = server.stop();
    // Back with a receiver: the waiting event arrives, signed, once.
    let (port, webhook) = webhook_listener(0);
    let keys = kept.path().join("ringfence-keys");
    let data = kept.path().join("ringfence-data");
    let server = Server::serve(kept, keys, data, configure(port, secret.clone()));
    let (head, _, event) = next_event(&webhook, "update_published");
    assert_eq!(event["update"], "kb-x");
    assert!(head.contains("X-Ringfence-Signature: sha256="), "{head}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.runtime.block_on(server.state.events.counts()).unwrap().0 != 0 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(webhook.recv_timeout(std::time::Duration::from_millis(1500)).is_err(), "delivered once");
}

#[test]
fn rules_approve_supersedence_declines_and_prerequisites_wait() {
    let (port, webhook) = webhook_listener(0);
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("webhook.secret");
    std::fs::write(&secret, "sixteen or more bytes of secret").unwrap();
    let server = Server::start(|c| {
        c.approvals.webhook_url = Some(format!("http://127.0.0.1:{port}/ringfence"));
        c.approvals.webhook_secret_file = Some(secret.clone());
    });
    let root = server.dir.path().join("agents");
    let pilot = enroll(&server, &root, "pilot-1", "pilot", &token(&server, "pilot", 1));
    let prod = enroll(&server, &root, "prod-1", "production", &token(&server, "production", 1));
    let run = |args: &[&str]| run_ok(server.cli().args(args));
    let rule: Value =
        serde_json::from_str(&run(&["rule", "add", "--group", "pilot", "--classification", "security", "--json"]))
            .unwrap();
    let pilot_rule = rule["id"].as_str().unwrap().to_owned();
    let out = run(&[
        "rule",
        "add",
        "--group",
        "production",
        "--classification",
        "security",
        "--after-group",
        "pilot",
        "--after-days",
        "2",
        "--max-failure-percent",
        "0",
        "--deadline-days",
        "7",
    ]);
    assert!(out.contains("2 day(s) after success on pilot"), "{out}");
    assert_eq!(serde_json::from_str::<Vec<Value>>(&run(&["rule", "list", "--json"])).unwrap().len(), 2);

    // Patch Tuesday: the security update is approved for pilot as it is published.
    publish_with(&server, "kb-1", 0, |m| m["classification"] = json!("security"));
    let (action, reason, _) = approval(&server, "pilot", "acme/kb-1.sh").expect("approved by the rule");
    assert_eq!((action.as_str(), reason), ("install", Some(format!("rule {pilot_rule}"))));
    assert!(approval(&server, "production", "acme/kb-1.sh").is_none());
    check_ok(&pilot);
    check_ok(&prod);
    assert!(!prod.dir.join("ran-kb-1").exists(), "production has not approved it");

    // Production's rule waits two days after pilot's success, then prepares the approval for
    // production's approvers, with its deadline.
    let now = ringfence_server::unix_now();
    let rules = |at: i64| {
        server.runtime.block_on(server.state.rules.run(&server.state.repo, &server.state.reports, at)).unwrap()
    };
    assert_eq!(rules(now), 0, "pilot's success has just been seen");
    assert_eq!(rules(now + 86_400), 0, "one day is not two");
    assert_eq!(rules(now + 2 * 86_400 + 60), 1);
    let pending = run(&["pending", "list"]);
    assert!(pending.lines().any(|l| l.starts_with("approvals.production ")), "{pending}");
    // Production's approvers were told, in a POST signed with the shared secret (checked here
    // with Python's hmac, not ours).
    let (head, body, event) = next_event(&webhook, "approval_pending");
    assert!(head.starts_with("POST /ringfence HTTP/1.1"), "{head}");
    assert_eq!(
        (event["event"].as_str(), event["group"].as_str(), event["update"].as_str()),
        (Some("approval_pending"), Some("production"), Some("kb-1"))
    );
    let signature = head.lines().find_map(|l| l.strip_prefix("X-Ringfence-Signature: sha256=")).unwrap();
    let expected = std::process::Command::new(crate::common::python())
        .args(["-c", "import hmac,hashlib,sys; print(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest())"])
        .args(["sixteen or more bytes of secret", &body])
        .output()
        .unwrap();
    assert_eq!(signature, String::from_utf8_lossy(&expected.stdout).trim());
    server.sign("approvals.production", "production-approver-1");
    server.sign("approvals.production", "production-approver-2");
    let (action, _, deadline) = approval(&server, "production", "acme/kb-1.sh").unwrap();
    assert_eq!(action, "install");
    assert!(deadline.is_some_and(|d| d.starts_with("20")), "a deadline 7 days on");
    check_ok(&prod);
    assert!(prod.dir.join("ran-kb-1").exists());

    // A new revision supersedes kb-1: approved by the same rule, installed on pilot, and then
    // kb-1 is declined in pilot (published at once: the server signs pilot's approvals).
    publish_with(&server, "kb-1.1", 0, |m| {
        m["classification"] = json!("security");
        m["supersedes"] = json!(["kb-1"]);
    });
    assert!(approval(&server, "pilot", "acme/kb-1.1.sh").is_some());
    let decline = || {
        server
            .runtime
            .block_on(server.state.rules.decline_superseded(
                &server.state.repo,
                &server.state.reports,
                ringfence_server::unix_now(),
            ))
            .unwrap()
    };
    assert_eq!(decline(), 0, "kb-1.1 is not installed anywhere yet");
    check_ok(&pilot);
    assert_eq!(decline(), 1);
    let (action, reason, _) = approval(&server, "pilot", "acme/kb-1.sh").unwrap();
    assert_eq!((action.as_str(), reason.as_deref()), ("decline", Some("superseded by kb-1.1")));
    assert_eq!(decline(), 0, "declined once");

    // An update supersedes only updates of its own publisher that exist.
    let mut m: Value = serde_json::from_str(include_str!("../../../../docs/examples/hello.manifest.json")).unwrap();
    m["id"] = json!("kb-x");
    m["supersedes"] = json!(["no-such-update"]);
    m["files"] = json!([{"name": "kb-x.sh", "sha256": "ab".repeat(32), "length": 1}]);
    let answer = server.admin().send_json("POST", "/api/v1/updates", &m).unwrap();
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(answer.text().contains("supersedes: no update no-such-update"), "{}", answer.text());

    // Prerequisites: kb-3 needs kb-2 (both approved by the rule): in one cycle kb-3 waits,
    // kb-2 installs, kb-3 follows. kb-5 needs kb-4, which no rule approves: it waits and says so.
    publish_with(&server, "kb-3", 0, |m| {
        m["classification"] = json!("security");
        m["prerequisites"] = json!(["kb-2"]);
    });
    publish_with(&server, "kb-2", 0, |m| m["classification"] = json!("security"));
    publish_with(&server, "kb-4", 0, |m| m["classification"] = json!("feature"));
    publish_with(&server, "kb-5", 0, |m| {
        m["classification"] = json!("security");
        m["prerequisites"] = json!(["kb-4"]);
    });
    check_ok(&pilot);
    assert!(pilot.dir.join("ran-kb-2").exists() && pilot.dir.join("ran-kb-3").exists());
    assert!(!pilot.dir.join("ran-kb-5").exists(), "its prerequisite is not installed");
    let device = devices(&server).into_iter().find(|d| d.groups == ["pilot"]).unwrap();
    let state =
        |file: &str| device.updates.iter().find(|u| u.target == format!("approvals/pilot/acme/{file}")).cloned();
    assert_eq!(state("kb-3.sh").map(|u| u.state.as_str().to_owned()).as_deref(), Some("installed"));
    let waiting = state("kb-5.sh").unwrap();
    assert_eq!((waiting.state.as_str(), waiting.reason.as_deref()), ("waiting", Some("waits for prerequisite kb-4")));
    check_ok(&pilot);
    assert!(!pilot.dir.join("ran-kb-5").exists());

    // Removing a rule stops it; what it approved stays.
    run(&["rule", "remove", &pilot_rule]);
    publish_with(&server, "kb-6", 0, |m| m["classification"] = json!("security"));
    assert!(approval(&server, "pilot", "acme/kb-6.sh").is_none());
    assert!(approval(&server, "pilot", "acme/kb-2.sh").is_some());
}

#[test]
fn cleanup_removes_only_what_no_approval_needs() {
    let server = Server::start(|_| {});
    let run = |args: &[&str]| run_ok(server.cli().args(args));
    publish_script(&server, "kb-a", &[], 0);
    publish_script(&server, "kb-b", &[], 0);
    for update in ["kb-a", "kb-b"] {
        run(&["approve", update, "--group", "pilot"]);
    }
    run(&["approve", "kb-a", "--group", "pilot", "--action", "decline"]);
    let sha_of = |id: &str| {
        let script = server.dir.path().join("work").join(format!("{id}.sh"));
        ringfence_trust::sha256_hex(&std::fs::read(script).unwrap())
    };
    let orphan = server.dir.path().join("orphan.bin");
    std::fs::write(&orphan, b"uploaded and forgotten").unwrap();
    run(&["upload", orphan.to_str().unwrap()]);
    let root = server.dir.path().join("agents");
    let quiet = enroll(&server, &root, "quiet-1", "pilot", &token(&server, "pilot", 1));

    // A dry run lists kb-a's file (declined where it was approved), not kb-b's (approved), not
    // the upload (a day's grace), not the device (enrolled just now); it removes nothing.
    let dry: Value =
        serde_json::from_str(&run(&["cleanup", "--dry-run", "--devices-not-seen-days", "1", "--json"])).unwrap();
    let listed: Vec<&str> = dry["content"].as_array().unwrap().iter().map(|c| c["sha256"].as_str().unwrap()).collect();
    assert_eq!(listed, [sha_of("kb-a").as_str()], "{dry}");
    assert!(dry["content"][0]["reason"].as_str().unwrap().contains("kb-a"));
    assert!(dry["devices"].as_array().unwrap().is_empty());
    assert!(crate::common::blob_file(&server, &sha_of("kb-a")).exists(), "a dry run removes nothing");
    // Two days on, the upload and the quiet device would go too.
    let later = ringfence_server::unix_now() + 2 * 86_400;
    let content = server.runtime.block_on(server.state.repo.removable_content(later)).unwrap();
    assert_eq!(content.len(), 2, "{content:?}");
    assert!(content.iter().any(|c| c.reason == "uploaded, never published"));
    let quiet_ones = server.runtime.block_on(server.state.devices.forgettable(1, later)).unwrap();
    assert_eq!(quiet_ones.len(), 1);

    // For real: kb-a's file is gone and no longer served; kb-b's stays.
    let out = run(&["cleanup"]);
    assert!(out.starts_with("removed 1 content file(s)"), "{out}");
    assert!(!crate::common::blob_file(&server, &sha_of("kb-a")).exists());
    assert!(crate::common::blob_file(&server, &sha_of("kb-b")).exists());
    let served = |id: &str| {
        let path = ringfence_proto::TargetPath::parse(&format!("acme/{id}.sh")).unwrap();
        let sha = ringfence_proto::Sha256Hex::parse(&sha_of(id)).unwrap();
        server.runtime.block_on(server.state.repo.served_content(&path, &sha)).unwrap()
    };
    assert_eq!(served("kb-a"), None, "no longer served");
    assert!(served("kb-b").is_some());

    // Forgetting the quiet device takes it out of its group's count.
    assert_eq!(report(&server, &["compliance", "--group", "pilot"])["devices"], 1);
    server.runtime.block_on(server.state.devices.forget(&quiet_ones[0].id, "test", later)).unwrap();
    assert_eq!(report(&server, &["compliance", "--group", "pilot"])["devices"], 0);
    assert!(devices(&server).is_empty());
    let (code, out) = quiet.check();
    assert_ne!(code, 0, "a forgotten device must enroll again: {out}");
}

#[test]
fn a_device_in_two_groups_follows_the_documented_precedence() {
    let server = Server::start(|_| {});
    let token = run_ok(server.cli().args(["device", "enrollment-token", "--group", "pilot", "--group", "production"]));
    let dir = server.dir.path().join("agents/both");
    std::fs::create_dir_all(&dir).unwrap();
    let agent = Agent { dir: dir.clone() };
    let root_sha = ringfence_trust::sha256_hex(&std::fs::read(server.data.join("1.root.json")).unwrap());
    let base = server.repo_url.trim_end_matches("/repo").to_owned();
    let out = run_ok(
        agent
            .command(&["enroll", "--server", &base, "--root-sha256", &root_sha, "--token", token.trim()])
            .args(["--group", "pilot", "--group", "production"])
            .arg("--ca")
            .arg(&server.ca),
    );
    assert!(out.contains("pilot, production"), "{out}");
    let app = dir.join("app.txt");
    publish_file(&server, "app-m", &app);

    // Both groups at depth 0: pilot's install beats production's uninstall.
    run_ok(server.cli().args(["approve", "app-m", "--group", "pilot"]));
    signed(&server, "approve", "app-m", "production", "production-approver-1", &["--action", "uninstall"]);
    server.sign("approvals.production", "production-approver-2");
    check_ok(&agent);
    assert!(app.exists(), "install beats uninstall");
    // Pilot withdraws: production's uninstall governs now.
    run_ok(server.cli().args(["withdraw", "app-m", "--group", "pilot"]));
    check_ok(&agent);
    assert!(!app.exists(), "production's uninstall");
}

#[test]
fn windows_hold_installs_deadlines_override_them_and_failures_back_off() {
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "pilot-1", "pilot", &token(&server, "pilot", 1));
    let run = |args: &[&str]| run_ok(server.cli().args(args));
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    // 1970-01-01 was a Thursday (3 days after a Monday).
    let today = ((ringfence_server::unix_now().div_euclid(86_400) + 3) % 7) as usize;
    let other_day = DAYS[(today + 3) % 7];

    // Pilot's approvers (the server, for pilot) set a window on another day.
    let out = run(&["group", "windows", "--group", "pilot", "--window", &format!("{other_day} 00:00-23:59 UTC")]);
    assert!(out.contains("is published"), "{out}");
    let groups = run(&["group", "list"]);
    assert!(groups.contains(&format!("{other_day} 00:00-23:59 UTC")), "{groups}");
    assert!(server.published("approvals.pilot").windows.is_some());
    for bad in ["someday 01:00-02:00 UTC", "sat 01:00 UTC", "sat 01:00-02:00 Mars/Base"] {
        let out = server.cli().args(["group", "windows", "--group", "pilot", "--window", bad]).output().unwrap();
        assert!(!out.status.success(), "{bad}");
    }

    // Outside the window: downloaded, not installed, and said once.
    publish_script(&server, "kb-w", &[], 0);
    run(&["approve", "kb-w", "--group", "pilot"]);
    check_ok(&agent);
    assert!(!agent.dir.join("ran-kb-w").exists(), "outside the window");
    let sha = ringfence_trust::sha256_hex(&std::fs::read(server.dir.path().join("work/kb-w.sh")).unwrap());
    assert!(agent.state().join("downloads").join(&sha).exists(), "downloaded meanwhile");
    let state = |file: &str| {
        let device = devices(&server).into_iter().next().unwrap();
        device.updates.into_iter().find(|u| u.target == format!("approvals/pilot/acme/{file}"))
    };
    let waiting = state("kb-w.sh").unwrap();
    assert_eq!(waiting.state.as_str(), "waiting");
    assert!(waiting.reason.unwrap_or_default().contains("maintenance window"));
    // A deadline that has passed overrides the window.
    run(&["approve", "kb-w", "--group", "pilot", "--deadline", "2020-01-01T00:00:00Z"]);
    check_ok(&agent);
    assert!(agent.dir.join("ran-kb-w").exists(), "the deadline passed");

    // A window that is open now lets installs through at once.
    run(&[
        "group",
        "windows",
        "--group",
        "pilot",
        "--window",
        &format!("{} 00:00-23:59 UTC", DAYS[today]),
        "--window",
        &format!("{other_day} 00:00-23:59 UTC"),
    ]);
    publish_script(&server, "kb-n", &[], 0);
    run(&["approve", "kb-n", "--group", "pilot"]);
    check_ok(&agent);
    assert!(agent.dir.join("ran-kb-n").exists(), "inside the window");

    // A failing install is not retried every cycle: attempt 1 of 5, then a backoff.
    run(&["group", "windows", "--group", "pilot"]);
    assert!(server.published("approvals.pilot").windows.is_none(), "no windows: any time");
    publish_script(&server, "kb-f", &[], 1);
    run(&["approve", "kb-f", "--group", "pilot"]);
    let (code, out) = agent.check();
    assert_eq!(code, 3, "{out}");
    let failed = state("kb-f.sh").unwrap();
    assert!(failed.reason.unwrap_or_default().starts_with("attempt 1 of 5"), "{out}");
    check_ok(&agent);
    let runs = std::fs::read_to_string(agent.dir.join("ran-kb-f")).unwrap();
    assert_eq!(runs.lines().count(), 1, "not tried again before its backoff");
}

/// libfaketime (Debian's `faketime`, in this machine's multiarch directory), which gives the
/// agent (and only the agent) a clock of the test's choosing.
fn libfaketime() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
}

/// One cycle of `agent` with its clock starting at `utc` (its monotonic clock left alone).
fn check_at(agent: &Agent, utc: &str) {
    let out = agent
        .command(&["check"])
        .env("LD_PRELOAD", libfaketime().unwrap())
        .env("FAKETIME", format!("@{utc}"))
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "at {utc}: {text}");
}

#[test]
fn a_window_keeps_local_time_across_a_daylight_saving_change_and_yields_to_a_deadline() {
    if libfaketime().is_none() {
        // scripts/test installs it (Debian package faketime).
        assert!(std::env::var_os("RINGFENCE_REQUIRE_FAKETIME").is_none(), "libfaketime is missing");
        eprintln!("skipped: libfaketime is missing (apt-get install faketime)");
        return;
    }
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "berlin-1", "pilot", &token(&server, "pilot", 1));
    let run = |args: &[&str]| run_ok(server.cli().args(args));
    // Sunday 2026-10-25 Berlin goes from UTC+2 back to UTC+1 at 03:00 local (01:00 UTC): the
    // window is open 00:00-03:00 UTC that day (two hours of summer time, then an hour repeated
    // and one more of winter time). The agent's clock is set for each cycle; the server's and
    // the signatures' are today's (metadata expires after that Sunday, so it is still valid).
    run(&["group", "windows", "--group", "pilot", "--window", "sun 02:00-04:00 Europe/Berlin"]);
    let ran = |update: &str| agent.dir.join(format!("ran-{update}")).exists();

    publish_script(&server, "kb-d1", &[], 0);
    run(&["approve", "kb-d1", "--group", "pilot"]);
    check_at(&agent, "2026-10-24 23:45:00");
    assert!(!ran("kb-d1"), "01:45 summer time: before the window");
    check_at(&agent, "2026-10-25 00:15:00");
    assert!(ran("kb-d1"), "02:15 summer time (01:15 had the zone's winter offset been taken): open");

    publish_script(&server, "kb-d2", &[], 0);
    run(&["approve", "kb-d2", "--group", "pilot"]);
    check_at(&agent, "2026-10-25 02:45:00");
    assert!(ran("kb-d2"), "03:45 winter time (04:45 had the summer offset been kept): open");

    // Outside the window, a deadline still ahead waits; once it passes, it installs.
    publish_script(&server, "kb-d3", &[], 0);
    run(&["approve", "kb-d3", "--group", "pilot", "--deadline", "2026-10-25T05:00:00Z"]);
    check_at(&agent, "2026-10-25 03:15:00");
    assert!(!ran("kb-d3"), "04:15 winter time: closed, and the deadline is ahead");
    check_at(&agent, "2026-10-25 05:01:00");
    assert!(ran("kb-d3"), "the deadline passed: installed outside the window");
}

#[test]
fn an_ancestors_deadline_does_not_reach_past_a_childs_windows() {
    let server = Server::start(|_| {});
    // pilot-eu under pilot (which the server approves for online), with its own approver and
    // a window on another day, signed by that approver.
    add_child_group(&server, "pilot-eu", "pilot", "eu-approver");
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let today = ((ringfence_server::unix_now().div_euclid(86_400) + 3) % 7) as usize;
    let window = format!("{} 00:00-23:59 UTC", DAYS[(today + 3) % 7]);
    let out = run_ok(
        server
            .cli()
            .args(["group", "windows", "--group", "pilot-eu", "--window", &window, "--yes", "--key"])
            .arg(server.key("eu-approver"))
            .arg("--trusted-root")
            .arg(server.keys.join("1.root.json")),
    );
    assert!(out.contains("approvals.pilot-eu version 2 is published"), "{out}");
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "eu-1", "pilot-eu", &token(&server, "pilot-eu", 1));

    // The server approves in pilot with a deadline long past: pilot-eu inherits the approval,
    // but not the power to install outside pilot-eu's window.
    publish_script(&server, "kb-d", &[], 0);
    run_ok(server.cli().args(["approve", "kb-d", "--group", "pilot", "--deadline", "2020-01-01T00:00:00Z"]));
    check_ok(&agent);
    assert!(!agent.dir.join("ran-kb-d").exists(), "an ancestor's deadline does not override the child's window");
    // pilot-eu's own approver sets the deadline: now it overrides the window.
    signed(&server, "approve", "kb-d", "pilot-eu", "eu-approver", &["--deadline", "2020-01-01T00:00:00Z"]);
    check_ok(&agent);
    assert!(agent.dir.join("ran-kb-d").exists());
}

/// The key a device shows (`ringfence-agent status`), from which its place in line comes.
fn device_key(agent: &Agent) -> String {
    let status = run_ok(&mut agent.command(&["status"]));
    status.lines().find_map(|l| l.strip_prefix("device key ")).unwrap().trim().to_owned()
}

/// `agents` in line for `update`: each with its place, lowest first.
fn in_line<'a>(agents: &'a [Agent], update: &str) -> Vec<(u32, &'a Agent)> {
    let mut places: Vec<(u32, &Agent)> =
        agents.iter().map(|a| (ringfence_trust::rollout::place(&device_key(a), update), a)).collect();
    places.sort_by_key(|(p, _)| *p);
    places
}

#[test]
fn a_signed_rollout_admits_devices_by_their_place_and_time() {
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let token = token(&server, "pilot", 4);
    // Four devices: the first and the last in line share a percent with odds of one in a million.
    let agents: Vec<Agent> = (1..=4).map(|i| enroll(&server, &root, &format!("r-{i}"), "pilot", &token)).collect();
    publish_script(&server, "kb-r", &[], 0);
    let places = in_line(&agents, "kb-r");
    let (first, second) = (places[0], places[3]);
    assert_ne!(first.0 / 100, second.0 / 100, "the first and last of four devices in one percent (one in a million)");

    // The first stage (now) admits the device with the lower place only; the rest waits for a
    // stage next year.
    let share = (first.0 / 100 + 1).to_string();
    run_ok(server.cli().args(["approve", "kb-r", "--group", "pilot"]).args([
        "--stage",
        &format!("{share}@2020-01-01T00:00:00Z"),
        "--stage",
        "100@2099-01-01T00:00:00Z",
    ]));
    for (_, agent) in [first, second] {
        check_ok(agent);
    }
    assert!(first.1.dir.join("ran-kb-r").exists(), "its stage has come");
    assert!(!second.1.dir.join("ran-kb-r").exists(), "its stage has not");
    let waiting: Vec<_> = devices(&server)
        .into_iter()
        .flat_map(|d| d.updates)
        .filter(|u| u.target == "approvals/pilot/acme/kb-r.sh" && u.state.as_str() == "waiting")
        .collect();
    assert!(!waiting.is_empty());
    assert!(waiting.iter().all(|u| u.reason.as_deref().unwrap_or("").contains("2099-01-01T00:00:00Z")), "{waiting:?}");
    // A schedule whose shares shrink is refused before anything is signed.
    let out = server
        .cli()
        .args([
            "approve",
            "kb-r",
            "--group",
            "pilot",
            "--stage",
            "50@2020-01-01T00:00:00Z",
            "--stage",
            "10@2021-01-01T00:00:00Z",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // Only an install is rolled out in stages.
    let out = server
        .cli()
        .args(["approve", "kb-r", "--group", "pilot", "--action", "uninstall", "--stage", "10@2020-01-01T00:00:00Z"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only an install"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The approvers move the last stage to now: everyone installs.
    run_ok(server.cli().args(["approve", "kb-r", "--group", "pilot", "--stage", "100@2020-01-01T00:00:00Z"]));
    check_ok(second.1);
    assert!(second.1.dir.join("ran-kb-r").exists());
}

#[test]
fn a_rollout_halts_itself_on_failures_and_resumes() {
    let (port, webhook) = webhook_listener(0);
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("webhook.secret");
    std::fs::write(&secret, "sixteen or more bytes of secret").unwrap();
    let server = Server::start(|c| {
        c.approvals.webhook_url = Some(format!("http://127.0.0.1:{port}/hook"));
        c.approvals.webhook_secret_file = Some(secret.clone());
    });
    let root = server.dir.path().join("agents");
    let token = token(&server, "pilot", 2);
    let (first, second) =
        (enroll(&server, &root, "h-1", "pilot", &token), enroll(&server, &root, "h-2", "pilot", &token));
    // The update fails where a `fail` file lies: on the first device.
    std::fs::write(first.dir.join("fail"), "").unwrap();
    publish_with(&server, "kb-h", 0, |_| {});
    let run = |args: &[&str]| run_ok(server.cli().args(args));
    run(&["rollout", "start", "kb-h", "--group", "pilot", "--max-failures", "0"]);
    run(&["approve", "kb-h", "--group", "pilot"]);
    let status = |server: &Server| -> Value {
        let all: Vec<Value> =
            serde_json::from_str(&run_ok(server.cli().args(["rollout", "status", "--json"]))).unwrap();
        all.into_iter().next().unwrap()
    };
    assert_eq!(status(&server)["state"], "running");
    let tick = || {
        server.runtime.block_on(server.state.rollouts.tick(&server.state.repo, ringfence_server::unix_now())).unwrap()
    };
    assert_eq!(tick(), 0);
    let _ = first.check();
    assert_eq!(tick(), 1, "the first device's failure halts the rollout");
    // The halt reaches the webhook, with its reason.
    let (_, _, halted_event) = next_event(&webhook, "rollout_halted");
    assert_eq!((halted_event["group"].as_str(), halted_event["update"].as_str()), (Some("pilot"), Some("kb-h")));
    let why = halted_event["reason"].as_str().unwrap();
    assert!(why.contains("1 failed") && why.ends_with("(more than 0 devices or 5 %)"), "{halted_event}");
    let halted = status(&server);
    assert_eq!((halted["state"].as_str(), halted["share"].as_u64()), (Some("halted"), Some(0)), "{halted}");
    assert!(halted["reason"].as_str().unwrap().contains("1 failed"), "{halted}");
    let table = run(&["rollout", "status"]);
    assert!(table.contains("halted") && table.contains("1 failed"), "{table}");
    // Held: the second device does not install, and says why.
    check_ok(&second);
    assert!(!second.dir.join("ran-kb-h").exists(), "held by the halted rollout");
    let waiting: Vec<_> =
        devices(&server).into_iter().flat_map(|d| d.updates).filter(|u| u.state.as_str() == "waiting").collect();
    assert!(waiting.iter().any(|u| u.reason.as_deref().unwrap_or("").contains("hold")), "{waiting:?}");
    // The operator resumes: the hold is lifted and the second device installs.
    run(&["rollout", "resume", "kb-h", "--group", "pilot"]);
    assert_eq!(status(&server)["state"], "running");
    check_ok(&second);
    assert!(second.dir.join("ran-kb-h").exists());

    // The first device waits out its backoff.
    check_ok(&first);
    assert_eq!(installed_entry(&first, "kb-h")["attempts"], 1, "not again before its backoff ends");
    // The operator asks the failed devices to try again: one attempt at once (it fails again),
    // then the backoff as before; once per retry.
    let out = run(&["rollout", "retry", "kb-h", "--group", "pilot"]);
    assert!(out.contains("retries 1"), "{out}");
    let (code, out) = first.check();
    assert_eq!(code, 3, "{out}");
    check_ok(&first);
    let entry = installed_entry(&first, "kb-h");
    assert_eq!((entry["attempts"].as_u64(), entry["operator_retries"].as_u64()), (Some(1), Some(1)), "{entry}");
    // Fixed, and retried again: it installs at once.
    std::fs::remove_file(first.dir.join("fail")).unwrap();
    check_ok(&first);
    assert!(!first.dir.join("ran-kb-h").exists(), "not before the next retry");
    let out = run(&["rollout", "retry", "kb-h", "--group", "pilot"]);
    assert!(out.contains("retries 2"), "{out}");
    check_ok(&first);
    assert!(first.dir.join("ran-kb-h").exists(), "retried at once");
    let status_now = status(&server);
    assert_eq!((status_now["retries"].as_u64(), status_now["failed"].as_u64()), (Some(2), Some(0)), "{status_now}");

    // Stopped: held at none from then on, and said so.
    let out = run(&["rollout", "stop", "kb-h", "--group", "pilot"]);
    assert!(out.contains("stopped"), "{out}");
    let stopped = status(&server);
    assert_eq!((stopped["state"].as_str(), stopped["share"].as_u64()), (Some("stopped"), Some(0)), "{stopped}");
}

/// The agent's own record of an update (its `installed.json` entry).
fn installed_entry(agent: &Agent, update: &str) -> Value {
    let all: Value = serde_json::from_slice(&std::fs::read(agent.state().join("installed.json")).unwrap()).unwrap();
    all.as_object().unwrap().values().find(|e| e["update_id"] == update).cloned().unwrap_or(Value::Null)
}

#[test]
fn a_device_stuck_past_the_timeout_halts_a_rollout() {
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "s-1", "pilot", &token(&server, "pilot", 1));
    publish_script(&server, "kb-s", &[], 0);
    run_ok(server.cli().args(["approve", "kb-s", "--group", "pilot"]));
    run_ok(server.cli().args([
        "rollout",
        "start",
        "kb-s",
        "--group",
        "pilot",
        "--max-failures",
        "0",
        "--stuck-hours",
        "1",
    ]));
    let now = ringfence_server::unix_now();
    let tick = |at: i64| server.runtime.block_on(server.state.rollouts.tick(&server.state.repo, at)).unwrap();
    assert_eq!(tick(now), 0);
    // The update bricks the device: its installer kills the agent, which never runs again.
    std::fs::write(agent.dir.join("brick"), b"").unwrap();
    let (code, out) = agent.check();
    assert_eq!(code, -1, "killed by a signal: {out}");
    // Its last word, sent before the installer ran, is all the server ever hears.
    use ringfence_store::DeviceStore;
    let device = devices(&server).into_iter().next().unwrap();
    let reports = server.runtime.block_on(server.db.device_reports(&device.id)).unwrap();
    let newest = reports.last().unwrap();
    assert_eq!(newest.state, "installing", "{reports:?}");
    assert_eq!(tick(now + 1800), 0, "half an hour on its way is not stuck");
    assert_eq!(tick(now + 2 * 3600), 1, "two hours is");
    let status: Vec<Value> = serde_json::from_str(&run_ok(server.cli().args(["rollout", "status", "--json"]))).unwrap();
    assert_eq!(status[0]["state"], "halted");
    assert!(status[0]["reason"].as_str().unwrap().contains("1 stuck"), "{}", status[0]);

    // Someone repairs the device and its agent starts again: the install it did not come back
    // from counts as a failed attempt, reported, and the installer is not run again before
    // its backoff ends (an update that takes the agent down does not run in a loop).
    std::fs::remove_file(agent.dir.join("brick")).unwrap();
    let (code, out) = agent.check();
    assert_eq!(code, 3, "{out}");
    assert!(!agent.dir.join("ran-kb-s").exists(), "not run again at once");
    let entry = installed_entry(&agent, "kb-s");
    assert_eq!((entry["state"].as_str(), entry["attempts"].as_u64()), (Some("failed"), Some(1)), "{entry}");
    let reports = server.runtime.block_on(server.db.device_reports(&device.id)).unwrap();
    let last = reports.last().unwrap();
    assert_eq!(last.state, "failed", "{reports:?}");
    assert!(last.reason.as_deref().unwrap_or_default().contains("attempt 1 of 5"), "{last:?}");
    assert!(last.reason.as_deref().unwrap_or_default().contains("interrupted"), "{last:?}");
    let (code, out) = agent.check();
    assert_eq!(code, 0, "waits out its backoff quietly: {out}");
    assert!(!agent.dir.join("ran-kb-s").exists(), "still not run again");

    // Kept while the group approves the update, however old, and while it holds the rollout
    // (a halt survives the update being approved again); archived a week after the group no
    // longer approves it and nothing holds it.
    let week = 7 * 86_400;
    tick(now + 3 * week);
    assert!(run_ok(server.cli().args(["rollout", "status"])).contains("kb-s"));
    run_ok(server.cli().args(["withdraw", "kb-s", "--group", "pilot"]));
    tick(now + 3 * week);
    tick(now + 4 * week + 1);
    assert!(run_ok(server.cli().args(["rollout", "status"])).contains("halted"), "held, kept");
    // Resumed (so holding nothing back): the stuck report came before the resume and is not
    // counted again, and the rollout goes.
    let pilot = ringfence_proto::GroupName::parse("pilot").unwrap();
    let resume = server.state.rollouts.act(&server.state.repo, &pilot, "kb-s", "resume", "test", now + 4 * week + 2);
    server.runtime.block_on(resume).unwrap();
    assert_eq!(tick(now + 4 * week + 2), 0, "not halted again on what was seen before the resume");
    let out = run_ok(server.cli().args(["rollout", "status"]));
    assert!(out.contains("no rollouts"), "{out}");
}

#[test]
fn an_installer_that_reboots_the_device_is_finished_as_a_reboot_and_cycles_do_not_overlap() {
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "r-1", "pilot", &token(&server, "pilot", 1));
    // Its publisher signed that it needs a reboot; kb-c (below) says nothing of reboots.
    publish_with(&server, "kb-r", 0, |m| m["installer"]["reboot_required"] = json!(true));
    run_ok(server.cli().args(["approve", "kb-r", "--group", "pilot"]));
    let boot = agent.dir.join("boot-id");
    let check = || {
        let out = agent.command(&["check"]).env("RINGFENCE_BOOT_ID_FILE", &boot).output().unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };

    // A cycle already running on the state directory (here: the test holds its lock) keeps a
    // second one out, and nothing is done twice.
    std::fs::write(&boot, "boot-1").unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(agent.state().join("cycle.lock"))
        .unwrap();
    lock.lock().unwrap();
    let (code, out) = check();
    assert_ne!(code, Some(0));
    assert!(out.contains("another cycle is running"), "{out}");
    drop(lock);

    // The installer takes the device down (here: kills the agent) and it comes back in
    // another boot: that is the reboot its publisher said the update needs, finished as one
    // (the health checks decide; there are none), and the installer is not run again.
    std::fs::write(agent.dir.join("brick"), b"").unwrap();
    assert_eq!(check().0, None, "killed by a signal");
    assert_eq!(installed_entry(&agent, "kb-r")["state"], "installing");
    std::fs::remove_file(agent.dir.join("brick")).unwrap();
    std::fs::write(&boot, "boot-2").unwrap();
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(installed_entry(&agent, "kb-r")["state"], "installed");
    assert!(!agent.dir.join("ran-kb-r").exists(), "not run again");
    let update = devices(&server).into_iter().next().unwrap().updates;
    let state = update.iter().find(|u| u.target == "approvals/pilot/acme/kb-r.sh").unwrap();
    assert_eq!(state.state.as_str(), "installed");

    // An update whose publisher said nothing of reboots, cut off by one (a shutdown, a power
    // loss, a crash the update caused): a failed attempt, not an install.
    publish_script(&server, "kb-c", &[], 0);
    run_ok(server.cli().args(["approve", "kb-c", "--group", "pilot"]));
    std::fs::write(agent.dir.join("brick"), b"").unwrap();
    assert_eq!(check().0, None, "killed by a signal");
    std::fs::remove_file(agent.dir.join("brick")).unwrap();
    std::fs::write(&boot, "boot-3").unwrap();
    let (code, out) = check();
    assert_eq!(code, Some(3), "{out}");
    let entry = installed_entry(&agent, "kb-c");
    assert_eq!((entry["state"].as_str(), entry["attempts"].as_u64()), (Some("failed"), Some(1)), "{entry}");
    assert!(out.contains("interrupted"), "{out}");
}

#[test]
fn a_paused_rollout_stays_held_when_the_server_stops_serving_its_holds() {
    // No job tick during the test: it would publish the holds again.
    let server = Server::start(|c| c.expiry.check_interval_secs = 3600);
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "p-1", "pilot", &token(&server, "pilot", 1));
    publish_script(&server, "kb-p", &[], 0);
    run_ok(server.cli().args(["rollout", "start", "kb-p", "--group", "pilot"]));
    run_ok(server.cli().args(["rollout", "pause", "kb-p", "--group", "pilot"]));
    run_ok(server.cli().args(["approve", "kb-p", "--group", "pilot"]));
    check_ok(&agent);
    assert!(!agent.dir.join("ran-kb-p").exists(), "held by the pause");
    // The server stops serving its signed holds (a fault, or a server that would like the
    // pause gone): the agent keeps the last holds it verified while they are fresh, says so,
    // and stays held.
    crate::common::sql(&server, "DELETE FROM rollout_holds");
    let (code, out) = agent.check();
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("no longer serves"), "{out}");
    assert!(!agent.dir.join("ran-kb-p").exists(), "still held by the last signed holds");
}

/// The first rollout's status, as `ringfence rollout status --json` prints it.
fn rollout_status(server: &Server) -> Value {
    let all: Vec<Value> = serde_json::from_str(&run_ok(server.cli().args(["rollout", "status", "--json"]))).unwrap();
    all.into_iter().next().unwrap()
}

#[test]
fn the_servers_stages_advance_on_success_after_their_soak_and_place_newcomers() {
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let token = token(&server, "pilot", 4);
    let agents: Vec<Agent> = (1..=3).map(|i| enroll(&server, &root, &format!("a-{i}"), "pilot", &token)).collect();
    // An update id for which the first and last of the three devices are in different percents
    // (places depend on the id; each id misses with odds of about 1 in 10,000).
    let id = (0..20)
        .map(|n| format!("kb-a{n}"))
        .find(|id| {
            let places = in_line(&agents, id);
            places[0].0 / 100 != places[2].0 / 100
        })
        .unwrap();
    let id = id.as_str();
    publish_script(&server, id, &[], 0);
    let places = in_line(&agents, id);
    let first = places[0];
    // The server's first stage admits the first device in line (and any sharing its percent).
    let share = first.0 / 100 + 1;
    run_ok(server.cli().args(["approve", id, "--group", "pilot"]));
    // Stages that shrink, do not end at 100 or start at 0, and shares over 100 are refused,
    // and nothing is started.
    for bad in [
        &["--stages", "50,40,100"][..],
        &["--stages", "10,50"],
        &["--stages", "0,100"],
        &["--success-percent", "101"],
        &["--soak-hours", "100000"],
    ] {
        let out = server.cli().args(["rollout", "start", id, "--group", "pilot"]).args(bad).output().unwrap();
        assert!(!out.status.success(), "{bad:?}");
    }
    assert!(run_ok(server.cli().args(["rollout", "status"])).contains("no rollouts"));
    let stages = format!("{share},100");
    let started = run_ok(server.cli().args([
        "rollout",
        "start",
        id,
        "--group",
        "pilot",
        "--stages",
        &stages,
        "--soak-hours",
        "1",
        "--success-percent",
        "100",
    ]));
    assert!(started.contains("stage 1 of 2"), "{started}");
    let now = ringfence_server::unix_now();
    let tick = |at: i64| server.runtime.block_on(server.state.rollouts.tick(&server.state.repo, at)).unwrap();
    for (_, agent) in &places {
        check_ok(agent);
    }
    let admitted = places.iter().filter(|(p, _)| *p < share * 100).count() as u64;
    for (place, agent) in &places {
        assert_eq!(
            agent.dir.join(format!("ran-{id}")).exists(),
            *place < share * 100,
            "place {place}, stage at {share} %"
        );
    }
    let status = rollout_status(&server);
    assert_eq!((status["stage"].as_u64(), status["share"].as_u64()), (Some(0), Some(u64::from(share))), "{status}");
    assert_eq!(status["stages"][0]["devices"].as_u64(), Some(admitted), "{status}");
    assert_eq!(status["stages"][0]["installed"].as_u64(), Some(admitted), "{status}");
    assert_eq!(status["stages"][1]["devices"].as_u64(), Some(3 - admitted), "{status}");
    let table = run_ok(server.cli().args(["rollout", "status"]));
    assert!(table.contains("<- held here"), "{table}");

    // Every admitted device installed, but the stage has not soaked: it holds.
    tick(now + 60);
    assert_eq!(rollout_status(&server)["stage"].as_u64(), Some(0));

    // A device joins mid-rollout: its place comes from its own key, as the server counts it.
    let newcomer = enroll(&server, &root, "a-4", "pilot", &token);
    let place = ringfence_trust::rollout::place(&device_key(&newcomer), id);
    check_ok(&newcomer);
    assert_eq!(
        newcomer.dir.join(format!("ran-{id}")).exists(),
        place < share * 100,
        "place {place}, stage at {share} %"
    );
    let status = rollout_status(&server);
    let in_first = u64::from(place < share * 100);
    assert_eq!(status["stages"][0]["devices"].as_u64(), Some(admitted + in_first), "{status}");
    assert_eq!(status["stages"][1]["devices"].as_u64(), Some(3 - admitted + 1 - in_first), "{status}");

    // Soaked and successful: the next stage (all devices) begins, and the rest install.
    tick(now + 3601);
    let status = rollout_status(&server);
    assert_eq!((status["stage"].as_u64(), status["share"].as_u64()), (Some(1), Some(100)), "{status}");
    for agent in agents.iter().chain([&newcomer]) {
        check_ok(agent);
        assert!(agent.dir.join(format!("ran-{id}")).exists());
    }
    let audit = String::from_utf8(server.admin().get("/api/v1/audit?limit=50").unwrap().ok().unwrap()).unwrap();
    assert!(audit.contains("stage 2 (100 %) begins"), "{audit}");
}

#[test]
fn a_lying_server_cannot_widen_a_rollout_move_a_stage_or_drop_a_window() {
    let server = Server::start(|_| {});
    add_child_group(&server, "production-eu", "production", "eu-approver");
    let root = server.dir.path().join("agents");
    let token_prod = token(&server, "production", 3);
    let agents: Vec<Agent> =
        (1..=3).map(|i| enroll(&server, &root, &format!("l-{i}"), "production", &token_prod)).collect();
    let eu = enroll(&server, &root, "l-eu", "production-eu", &token(&server, "production-eu", 1));
    publish_script(&server, "kb-l", &[], 0);
    let places = in_line(&agents, "kb-l");
    let (first, last) = (places[0], places[2]);
    assert_ne!(first.0 / 100, last.0 / 100, "the first and last of three devices in one percent (odds 3 in 10,000)");
    // The first device in line fails the update until this file is gone.
    std::fs::write(first.1.dir.join("fail"), "").unwrap();

    // Production's approvers sign a first stage now and the rest next century.
    let share = first.0 / 100 + 1;
    let stage = format!("{share}@2020-01-01T00:00:00Z");
    signed(
        &server,
        "approve",
        "kb-l",
        "production",
        "production-approver-1",
        &["--stage", &stage, "--stage", "100@2099-01-01T00:00:00Z"],
    );
    server.sign("approvals.production", "production-approver-2");
    // The EU group's approver sets a window on another day and approves it there.
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let today = ((ringfence_server::unix_now().div_euclid(86_400) + 3) % 7) as usize;
    let window = format!("{} 00:00-23:59 UTC", DAYS[(today + 3) % 7]);
    run_ok(
        server
            .cli()
            .args(["group", "windows", "--group", "production-eu", "--window", &window, "--yes", "--key"])
            .arg(server.key("eu-approver"))
            .arg("--trusted-root")
            .arg(server.keys.join("1.root.json")),
    );
    signed(&server, "approve", "kb-l", "production-eu", "eu-approver", &[]);

    // The server signs holds that let everyone in at once and asks every device to retry:
    // the approvers' stages still decide who installs.
    let path = "approvals/production/acme/kb-l.sh";
    let now = ringfence_server::unix_now();
    let holds = std::collections::BTreeMap::from([(path.to_owned(), 100u8)]);
    let retries = std::collections::BTreeMap::from([(path.to_owned(), 7u64)]);
    server.runtime.block_on(server.state.repo.publish_holds(holds, retries, now)).unwrap();
    for agent in agents.iter().chain([&eu]) {
        let _ = agent.check();
    }
    for (place, agent) in &places[1..] {
        assert_eq!(agent.dir.join("ran-kb-l").exists(), *place < share * 100, "place {place}, stage at {share} %");
    }
    assert!(!last.1.dir.join("ran-kb-l").exists());
    assert!(!eu.dir.join("ran-kb-l").exists(), "outside its window");
    assert_eq!(installed_entry(first.1, "kb-l")["state"], "failed");

    // A retry does not pass a hold: the first device, fixed and asked to retry while the
    // server holds the rollout at none, waits.
    std::fs::remove_file(first.1.dir.join("fail")).unwrap();
    let publish = |holds: &[(&str, u8)], retry: u64| {
        let holds = holds.iter().map(|(p, h)| ((*p).to_owned(), *h)).collect();
        let retries = std::collections::BTreeMap::from([(path.to_owned(), retry)]);
        server.runtime.block_on(server.state.repo.publish_holds(holds, retries, ringfence_server::unix_now())).unwrap();
    };
    publish(&[(path, 0)], 8);
    check_ok(first.1);
    assert!(!first.1.dir.join("ran-kb-l").exists(), "held");
    // Failing again once the hold is gone, the server's retries start its attempts afresh at
    // most three times for these bytes, however often it asks.
    std::fs::write(first.1.dir.join("fail"), "").unwrap();
    publish(&[], 8);
    let _ = first.1.check();
    for retry in 9..14 {
        publish(&[], retry);
        let _ = first.1.check();
    }
    let entry = installed_entry(first.1, "kb-l");
    assert_eq!((entry["state"].as_str(), entry["operator_retries"].as_u64()), (Some("failed"), Some(3)), "{entry}");
    // Acted on: 8 (while held), 9 and 10; not 11 to 13.
    assert_eq!(entry["retried"].as_u64(), Some(10), "{entry}");

    // The server drops the EU window and signs a passed deadline itself: refused, nothing runs.
    server.forge_role("approvals.production-eu", |t| {
        t.windows = None;
        let entry = t.targets.get_mut("approvals/production-eu/acme/kb-l.sh").unwrap();
        entry.custom.as_mut().unwrap()["deadline"] = json!("2020-01-01T00:00:00Z");
    });
    let (code, out) = eu.check();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("approvals.production-eu"), "{out}");
    assert!(!eu.dir.join("ran-kb-l").exists(), "{out}");

    // The server moves production's last stage to now (starting it early, skipping the wait):
    // refused, the last device in line still waits.
    server.forge_role("approvals.production", |t| {
        let entry = t.targets.get_mut(path).unwrap();
        entry.custom.as_mut().unwrap()["rollout"] = json!([{"percent": 100, "not_before": "2020-01-01T00:00:00Z"}]);
    });
    let (code, out) = last.1.check();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("approvals.production"), "{out}");
    assert!(!last.1.dir.join("ran-kb-l").exists(), "{out}");
}

#[test]
fn a_rollout_counts_the_devices_of_child_groups_that_follow_it_and_not_those_that_decide_themselves() {
    let server = Server::start(|_| {});
    add_child_group(&server, "production-eu", "production", "eu-approver");
    let root = server.dir.path().join("agents");
    let _parent = enroll(&server, &root, "c-1", "production", &token(&server, "production", 1));
    let _child = enroll(&server, &root, "c-2", "production-eu", &token(&server, "production-eu", 1));
    publish_script(&server, "kb-c", &[], 0);
    signed(&server, "approve", "kb-c", "production", "production-approver-1", &[]);
    server.sign("approvals.production", "production-approver-2");
    run_ok(server.cli().args(["rollout", "start", "kb-c", "--group", "production"]));
    let placed = |server: &Server| -> u64 {
        let status = rollout_status(server);
        status["stages"].as_array().unwrap().iter().map(|s| s["devices"].as_u64().unwrap()).sum()
    };
    assert_eq!(placed(&server), 2, "the child group inherits production's approval");
    // The child decides for itself: its device is not production's rollout's any more.
    signed(&server, "approve", "kb-c", "production-eu", "eu-approver", &["--action", "decline"]);
    assert_eq!(placed(&server), 1);
}
