//! Real agents on loopback: enrollment, approvals per group, installs, reports, and the
//! stolen-server attacks against installed devices.

use std::path::{Path, PathBuf};
use std::process::Command;

use ringfence_proto::device::{DeviceInfo, ReportState};
use serde_json::json;

use crate::common::{Server, agent_bin, run_ok, sql};

pub(crate) struct Agent {
    pub(crate) dir: PathBuf,
}

impl Agent {
    pub(crate) fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(agent_bin());
        c.args(args).arg("--state-dir").arg(self.state()).current_dir(&self.dir);
        c
    }

    /// `check`: (exit code, stdout).
    pub(crate) fn check(&self) -> (i32, String) {
        let out = self.command(&["check"]).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    /// Lines the installer script appended in this agent's directory.
    pub(crate) fn installs(&self, update: &str) -> usize {
        std::fs::read_to_string(self.dir.join(format!("installed-{update}"))).map_or(0, |s| s.lines().count())
    }
}

pub(crate) fn token(server: &Server, group: &str, uses: u64) -> String {
    let out = run_ok(server.cli().args(["device", "enrollment-token", "--group", group, "--uses", &uses.to_string()]));
    out.trim().to_owned()
}

pub(crate) fn enroll(server: &Server, root: &Path, name: &str, group: &str, token: &str) -> Agent {
    let (agent, out) = enroll_with(server, root, name, group, Some(token));
    assert!(out.contains("(accepted)"), "{out}");
    agent
}

/// An agent in `root/name` that enrolled in `group` (with `token`, or without one: then it
/// waits as a pending device), and what `enroll` printed.
pub(crate) fn enroll_with(
    server: &Server,
    root: &Path,
    name: &str,
    group: &str,
    token: Option<&str>,
) -> (Agent, String) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let agent = Agent { dir };
    let root_sha = ringfence_trust::sha256_hex(&std::fs::read(server.data.join("1.root.json")).unwrap());
    let base = server.repo_url.trim_end_matches("/repo").to_owned();
    let mut args = vec!["enroll", "--server", &base, "--root-sha256", &root_sha, "--group", group];
    if let Some(token) = token {
        args.extend(["--token", token]);
    }
    let out = run_ok(agent.command(&args).arg("--ca").arg(&server.ca));
    (agent, out)
}

/// Publish an update whose installer is a script appending a line to `installed-<id>` in the
/// agent's working directory.
pub(crate) fn publish_script(server: &Server, id: &str) {
    let work = server.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let script = work.join(format!("{id}.sh"));
    std::fs::write(&script, format!("#!/bin/sh\necho \"$RINGFENCE_UPDATE_ID $RINGFENCE_TARGET\" >> installed-{id}\n"))
        .unwrap();
    let mut m: serde_json::Value =
        serde_json::from_str(include_str!("../../../../docs/examples/hello.manifest.json")).unwrap();
    m["id"] = id.into();
    m["installer"] = json!({"module": "script"});
    m["applicability"] = json!({});
    let manifest = work.join(format!("{id}.json"));
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    run_ok(server.cli().args(["publish", "--manifest"]).arg(&manifest).arg(&script));
    server.sign_all("publisher-acme");
}

pub(crate) fn devices(server: &Server) -> Vec<DeviceInfo> {
    serde_json::from_slice(&server.admin().get("/api/v1/devices").unwrap().ok().unwrap()).unwrap()
}

#[test]
fn three_agents_in_two_groups_install_exactly_what_their_group_allows() {
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let pilot = enroll(&server, &root, "pilot-1", "pilot", &token(&server, "pilot", 1));
    let production_token = token(&server, "production", 2);
    let prod = [
        enroll(&server, &root, "prod-1", "production", &production_token),
        enroll(&server, &root, "prod-2", "production", &production_token),
    ];
    // The token is used up.
    let extra = root.join("prod-3");
    std::fs::create_dir_all(&extra).unwrap();
    let root_sha = ringfence_trust::sha256_hex(&std::fs::read(server.data.join("1.root.json")).unwrap());
    let refused = Command::new(agent_bin())
        .args([
            "enroll",
            "--server",
            server.repo_url.trim_end_matches("/repo"),
            "--root-sha256",
            &root_sha,
            "--group",
            "production",
            "--token",
            &production_token,
        ])
        .arg("--ca")
        .arg(&server.ca)
        .arg("--state-dir")
        .arg(extra.join("state"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"), "{}", String::from_utf8_lossy(&refused.stderr));

    publish_script(&server, "hello-1");
    assert!(server.approve("pilot", "acme/hello-1.sh").contains("is published"));
    assert!(server.approve("production", "acme/hello-1.sh").contains("0 of 2"));

    let (code, out) = pilot.check();
    assert_eq!(code, 0, "{out}");
    assert_eq!(pilot.installs("hello-1"), 1);
    for agent in &prod {
        let (code, out) = agent.check();
        assert_eq!(code, 0, "{out}");
        assert_eq!(agent.installs("hello-1"), 0, "production has not approved it");
    }

    server.sign("approvals.production", "production-approver-1");
    server.sign("approvals.production", "production-approver-2");
    for agent in &prod {
        let (code, out) = agent.check();
        assert_eq!(code, 0, "{out}");
        assert_eq!(agent.installs("hello-1"), 1);
    }
    // A second cycle installs nothing again and sends no report twice.
    let (code, _) = pilot.check();
    assert_eq!(code, 0);
    assert_eq!(pilot.installs("hello-1"), 1);

    let listed = devices(&server);
    assert_eq!(listed.len(), 3);
    for d in &listed {
        assert!(d.last_checkin.is_some());
        let group = d.groups.first().unwrap().clone();
        let target = format!("approvals/{group}/acme/hello-1.sh");
        let report = d.updates.iter().find(|u| u.target == target).unwrap_or_else(|| panic!("{d:?}"));
        assert_eq!(report.state, ReportState::Installed, "{d:?}");
        assert_eq!(d.updates.len(), 1, "only its own group's approval: {:?}", d.updates);
    }
    let fleet = run_ok(server.cli().args(["device", "list"]));
    assert_eq!(fleet.matches("approvals/production/acme/hello-1.sh: installed").count(), 2, "{fleet}");
    let status = run_ok(&mut prod[0].command(&["status"]));
    assert!(status.contains("acme/hello-1.sh: installed"), "{status}");

    // Revoking a device ends its session at once.
    let id = &listed.iter().find(|d| d.groups == ["pilot"]).unwrap().id;
    server
        .admin()
        .send("POST", &format!("/api/v1/devices/{id}/revoke"), b"", "application/json")
        .unwrap()
        .ok()
        .unwrap();
    let (code, out) = pilot.check();
    assert_ne!(code, 0, "{out}");
}

#[test]
fn a_stolen_server_cannot_make_installed_agents_install_anything() {
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "prod", "production", &token(&server, "production", 1));
    publish_script(&server, "good-1");
    server.approve("production", "acme/good-1.sh");
    server.sign("approvals.production", "production-approver-1");
    server.sign("approvals.production", "production-approver-3");
    assert_eq!(agent.check().0, 0);
    assert_eq!(agent.installs("good-1"), 1);

    // (3) Serve an older timestamp and snapshot: refused and reported, nothing changes.
    let newest = server
        .runtime
        .block_on(ringfence_store::Store::latest_metadata(&server.db, "timestamp"))
        .unwrap()
        .unwrap()
        .version;
    let trusted = std::fs::read(agent.state().join("metadata/timestamp.json")).unwrap();
    let newer = format!("role IN ('timestamp', 'snapshot') AND version > {}", newest - 2);
    sql(&server, &format!("CREATE TABLE hidden AS SELECT * FROM metadata WHERE {newer}"));
    sql(&server, &format!("DELETE FROM metadata WHERE {newer}"));
    let (code, out) = agent.check();
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("rollback") || out.contains("older"), "{out}");
    assert_eq!(std::fs::read(agent.state().join("metadata/timestamp.json")).unwrap(), trusted);
    let report = last_report(&server, "repository");
    assert_eq!(report.state, ReportState::Refused);
    assert!(report.reason.as_deref().unwrap_or("").contains("rollback"), "{report:?}");
    // The attacker gives up: the newest versions are served again.
    sql(&server, "INSERT INTO metadata SELECT * FROM hidden");

    // (2) Swap the blob of an approved update for other bytes of the same length.
    publish_script(&server, "good-2");
    server.approve("production", "acme/good-2.sh");
    server.sign("approvals.production", "production-approver-1");
    server.sign("approvals.production", "production-approver-2");
    let script = std::fs::read(server.dir.path().join("work/good-2.sh")).unwrap();
    let sha = ringfence_trust::sha256_hex(&script);
    let mut evil_bytes = script.clone();
    evil_bytes.iter_mut().rev().take(2).for_each(|b| *b = b'#');
    std::fs::write(crate::common::blob_file(&server, &sha), &evil_bytes).unwrap();
    let (code, out) = agent.check();
    assert_eq!(code, 3, "{out}");
    assert_eq!(agent.installs("good-2"), 0);
    let me = devices(&server).into_iter().next().unwrap();
    let report = me.updates.iter().find(|u| u.target == "approvals/production/acme/good-2.sh").unwrap();
    assert_eq!(report.state, ReportState::Failed);
    assert!(report.reason.as_deref().unwrap_or("").contains("hash"), "{report:?}");
    // (1) The attacker publishes a file and approves it for production with every online key.
    publish_script(&server, "evil-1");
    let evil = evil_entry(&server, "acme/evil-1.sh");
    server.forge_role("approvals.production", |t| {
        t.targets.insert("approvals/production/acme/evil-1.sh".into(), evil.clone());
    });
    let (code, out) = agent.check();
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("repository") || out.contains("approvals.production"), "{out}");
    assert_eq!(agent.installs("evil-1"), 0);
    assert_eq!(agent.installs("good-1"), 1, "what was installed stays");

    // (5) "Move" the device into pilot on the server and approve evil there (pilot's key is
    // online): the agent follows the groups it enrolled with, not the server's record.
    sql(&server, "UPDATE devices SET groups = 'pilot'");
    assert!(server.approve("pilot", "acme/evil-1.sh").contains("is published"));
    let (code, out) = agent.check();
    assert_eq!(code, 3, "the forged production approval is still refused: {out}");
    assert_eq!(agent.installs("evil-1"), 0);
    let me = devices(&server).into_iter().next().unwrap();
    assert!(me.updates.iter().all(|u| !u.target.starts_with("approvals/pilot/")), "{:?}", me.updates);
    assert_eq!(last_report(&server, "approvals.production").state, ReportState::Refused, "the forged role");
}

/// Before the layout rules, a publisher could be led to sign `publisher.acme` with one more
/// delegation (listed first, every path, a key the server holds); the server then filed any
/// file into that role and approvers approved it. Played here as if all of that was signed:
/// the agent refuses, because a publisher's entry counts only from its own bin.
#[test]
fn a_delegation_hidden_in_a_publisher_role_does_not_make_agents_install() {
    use ringfence_proto::tuf::{ApprovalAction, ApprovalCustom, PublishedCustom};
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "prod", "production", &token(&server, "production", 1));
    let auto = server.online_key("auto-approver.key");
    let publisher = server.offline_key("publisher-acme");

    let mut acme = server.published("publisher.acme");
    acme.version += 1;
    let (key, hidden) = server.all_paths_to_server("publisher.acme.f6c");
    let delegations = acme.delegations.as_mut().unwrap();
    delegations.keys.insert(auto.key_id().to_string(), key);
    delegations.roles.insert(0, hidden);
    let script = b"#!/bin/sh\necho evil >> installed-evil\n";
    let custom = PublishedCustom {
        update_id: "evil".into(),
        installer: serde_json::from_value(json!({"module": "script"})).unwrap(),
        applicability: Default::default(),
        prerequisites: Vec::new(),
    };
    let sha = ringfence_proto::Sha256Hex::parse(&ringfence_trust::sha256_hex(script)).unwrap();
    let entry =
        ringfence_trust::writer::target_file(script.len() as u64, &sha, Some(serde_json::to_value(custom).unwrap()));
    let mut injected = ringfence_trust::writer::targets(1, ringfence_server::unix_now() + 86_400);
    injected.targets.insert("acme/evil.sh".into(), entry.clone());
    server.forge_publish(vec![("publisher.acme".into(), acme), ("publisher.acme.f6c".into(), injected)], &[&publisher]);

    let approval = ApprovalCustom {
        action: ApprovalAction::Install,
        deadline: None,
        reason: None,
        rollout: None,
        update_id: "evil".into(),
        published_entry_sha256: ringfence_trust::writer::entry_digest(&entry),
    };
    let mut approved = entry;
    approved.custom = Some(serde_json::to_value(approval).unwrap());
    let approvers = [server.offline_key("production-approver-1"), server.offline_key("production-approver-2")];
    server.forge_role_signed(
        "approvals.production",
        |t| {
            t.targets.insert("approvals/production/acme/evil.sh".into(), approved);
        },
        &[&approvers[0], &approvers[1]],
    );
    let (code, out) = agent.check();
    assert_eq!(code, 3, "{out}");
    assert_eq!(agent.installs("evil"), 0);
    let report = last_report(&server, "approvals/production/acme/evil.sh");
    assert_eq!(report.state, ReportState::Refused);
    let reason = report.reason.unwrap_or_default();
    assert!(reason.contains(ringfence_trust::policy::rule::BINS), "{reason}");
}

/// The publisher's signed entry for `path`, as an attacker copies it into a forged approval.
fn evil_entry(server: &Server, path: &str) -> ringfence_proto::tuf::TargetFile {
    let prefix = ringfence_trust::paths::bin_prefix_of(path, 2);
    let bytes = server.admin().get(&format!("/api/v1/metadata/publisher.acme.{prefix}")).unwrap().ok().unwrap();
    let bin = ringfence_trust::Envelope::<ringfence_proto::tuf::Targets>::parse(&bytes, 1 << 24).unwrap();
    bin.signed.targets.get(path).cloned().unwrap()
}

/// Publish `file` (named `name`) with the given installer, signed by the publisher, and
/// approve it for pilot (auto-approved).
fn publish_for_pilot(server: &Server, id: &str, file: &Path, installer: serde_json::Value) {
    let work = server.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_str(include_str!("../../../../docs/examples/hello.manifest.json")).unwrap();
    m["id"] = id.into();
    m["installer"] = installer;
    m["applicability"] = json!({});
    let manifest = work.join(format!("{id}.json"));
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    run_ok(server.cli().args(["publish", "--manifest"]).arg(&manifest).arg(file));
    server.sign_all("publisher-acme");
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(server.approve("pilot", &format!("acme/{name}")).contains("is published"));
}

pub(crate) fn last_report(server: &Server, target: &str) -> ringfence_proto::device::StatusReport {
    let d = devices(server).into_iter().next().unwrap();
    d.updates.into_iter().find(|u| u.target == target).unwrap_or_else(|| panic!("no report for {target}"))
}

#[test]
fn update_modules_deb_file_rollback_and_resumed_download() {
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "pilot", "pilot", &token(&server, "pilot", 1));
    let work = server.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();

    // deb: a real package installed by dpkg into a throwaway root.
    let pkg = work.join("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("opt/rf")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        "Package: rf-test\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.invalid>\nDescription: test\n",
    )
    .unwrap();
    std::fs::write(pkg.join("opt/rf/hello.txt"), "from a deb\n").unwrap();
    let deb = work.join("rf-test_1.0_all.deb");
    run_ok(Command::new("dpkg-deb").args(["--build", "--root-owner-group"]).arg(&pkg).arg(&deb));
    let dpkg_root = agent.dir.join("dpkg-root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(dpkg_root.join(d)).unwrap();
    }
    std::fs::write(dpkg_root.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(dpkg_root.join("var/lib/dpkg/available"), "").unwrap();
    publish_for_pilot(&server, "rf-test-1.0", &deb, json!({"module": "deb"}));
    let out = agent.command(&["check"]).env("RINGFENCE_DPKG_ROOT", &dpkg_root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(std::fs::read_to_string(dpkg_root.join("opt/rf/hello.txt")).unwrap(), "from a deb\n");
    let status = std::fs::read_to_string(dpkg_root.join("var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Package: rf-test") && status.contains("install ok installed"), "{status}");

    // file, with a health check that fails: rolled back, the previous file restored.
    let conf = agent.dir.join("app.conf");
    std::fs::write(&conf, "old\n").unwrap();
    let new_conf = work.join("app.conf");
    std::fs::write(&new_conf, "new\n").unwrap();
    publish_for_pilot(
        &server,
        "app-conf-2",
        &new_conf,
        json!({"module": "file", "arguments": [conf.to_str().unwrap(), "0600"], "health_check": ["/bin/false"]}),
    );
    let (code, out) = agent.check();
    assert_eq!(code, 3, "{out}");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "old\n");
    let report = last_report(&server, "approvals/pilot/acme/app.conf");
    assert_eq!(report.state, ReportState::RolledBack, "{report:?}");
    assert!(report.reason.as_deref().unwrap_or("").starts_with("attempt 1 of 5 (next not before "), "{report:?}");
    assert_eq!(report.exit_code, Some(1));

    // Resume: a partial download left by an interrupted agent is continued, not restarted.
    // Its first bytes are wrong here, so a continued download fails the hash check (and is
    // then discarded), which a fresh download would not.
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let big_file = work.join("big.bin");
    std::fs::write(&big_file, &big).unwrap();
    let sha = ringfence_trust::sha256_hex(&big);
    std::fs::write(agent.state().join("downloads").join(format!("{sha}.partial")), vec![0xAAu8; 100_000]).unwrap();
    let module_dir = agent.state().join("modules");
    std::fs::create_dir_all(&module_dir).unwrap();
    std::fs::write(module_dir.join("noop"), "#!/bin/sh\nexit 0\n").unwrap();
    run_ok(Command::new("chmod").arg("755").arg(module_dir.join("noop")));
    publish_for_pilot(&server, "big-1", &big_file, json!({"module": "noop"}));
    let (code, out) = agent.check();
    assert_eq!(code, 3, "{out}");
    let report = last_report(&server, "approvals/pilot/acme/big.bin");
    assert_eq!(report.state, ReportState::Failed);
    assert!(report.reason.as_deref().unwrap_or("").contains("hash"), "{report:?}");
    // The bad partial is gone; the next cycle downloads afresh and installs. (A failed
    // download is tried again at once; the rolled-back app.conf waits for its backoff.)
    let (code, out) = agent.check();
    assert_eq!(code, 0, "nothing failed again: {out}");
    assert_eq!(last_report(&server, "approvals/pilot/acme/big.bin").state, ReportState::Installed);
    // A correct partial prefix is continued to the right file.
    let big2: Vec<u8> = big.iter().rev().copied().collect();
    let big2_file = work.join("big2.bin");
    std::fs::write(&big2_file, &big2).unwrap();
    let sha2 = ringfence_trust::sha256_hex(&big2);
    std::fs::write(agent.state().join("downloads").join(format!("{sha2}.partial")), &big2[..300_000]).unwrap();
    publish_for_pilot(&server, "big-2", &big2_file, json!({"module": "noop"}));
    let _ = agent.check();
    assert_eq!(last_report(&server, "approvals/pilot/acme/big2.bin").state, ReportState::Installed);
}

#[test]
fn reboot_required_updates_finish_after_the_reboot() {
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "pilot", "pilot", &token(&server, "pilot", 1));
    let boot = agent.dir.join("boot_id");
    std::fs::write(&boot, "boot-1\n").unwrap();
    let work = server.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let script = work.join("kernel.sh");
    std::fs::write(&script, "#!/bin/sh\necho staged >> kernel-staged\nexit 3\n").unwrap();
    publish_for_pilot(&server, "kernel-1", &script, json!({"module": "script", "health_check": ["/bin/true"]}));
    let check = || {
        let out = agent.command(&["check"]).env("RINGFENCE_BOOT_ID_FILE", &boot).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(last_report(&server, "approvals/pilot/acme/kernel.sh").state, ReportState::RebootRequired);
    // Same boot: still waiting, the script is not run again.
    check();
    assert_eq!(last_report(&server, "approvals/pilot/acme/kernel.sh").state, ReportState::RebootRequired);
    std::fs::write(&boot, "boot-2\n").unwrap();
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(last_report(&server, "approvals/pilot/acme/kernel.sh").state, ReportState::Installed);
    assert_eq!(std::fs::read_to_string(agent.dir.join("kernel-staged")).unwrap().lines().count(), 1);
}

#[test]
fn a_stolen_server_freezing_or_flooding_agents_is_refused_and_reported() {
    // Timestamps live 6 seconds and the server does not renew them.
    let server = Server::start(|c| {
        c.expiry.timestamp_secs = 6;
        c.expiry.check_interval_secs = 3600;
    });
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "pilot", "pilot", &token(&server, "pilot", 1));
    publish_script(&server, "ok-1");
    server.approve("pilot", "acme/ok-1.sh");
    assert_eq!(agent.check().0, 0);
    assert_eq!(agent.installs("ok-1"), 1);

    // (6) Endless data: the next approved file grows without end on the server.
    publish_script(&server, "flood-1");
    server.approve("pilot", "acme/flood-1.sh");
    let script = std::fs::read(server.dir.path().join("work/flood-1.sh")).unwrap();
    let sha = ringfence_trust::sha256_hex(&script);
    std::fs::write(crate::common::blob_file(&server, &sha), vec![b'#'; 4 << 20]).unwrap();
    sql(&server, &format!("UPDATE blobs SET length = {} WHERE sha256 = '{sha}'", 4 << 20));
    let (code, out) = agent.check();
    assert_eq!(code, 3, "{out}");
    let report = last_report(&server, "approvals/pilot/acme/flood-1.sh");
    assert_eq!(report.state, ReportState::Failed);
    assert!(report.reason.as_deref().unwrap_or("").contains("endless data"), "{report:?}");
    let partial = agent.state().join("downloads").join(format!("{sha}.partial"));
    assert!(
        std::fs::metadata(&partial).map_or(0, |m| m.len()) <= script.len() as u64 + 1,
        "never more than the metadata allows"
    );

    // (4) Freeze: the server keeps serving the same, now expired, timestamp.
    std::thread::sleep(std::time::Duration::from_secs(7));
    let (code, out) = agent.check();
    assert_eq!(code, 3, "{out}");
    let report = last_report(&server, "repository");
    assert_eq!(report.state, ReportState::Refused);
    assert!(report.reason.as_deref().unwrap_or("").contains("expired"), "{report:?}");
    assert_eq!(agent.installs("ok-1"), 1, "what was installed stays");
    assert_eq!(agent.installs("flood-1"), 0);
}

#[test]
fn a_publisher_cannot_change_how_an_approved_file_is_installed() {
    let server = Server::start(|_| {});
    publish_script(&server, "cfg-1");
    assert!(server.approve("pilot", "acme/cfg-1.sh").contains("is published"));
    // The publisher (or a server holding its key) re-signs the same bytes with a health check
    // of its choosing, which the agent would run as root.
    let path = "acme/cfg-1.sh";
    let bin = format!("publisher.acme.{}", ringfence_trust::paths::bin_prefix_of(path, 2));
    let publisher =
        ringfence_trust::SigningKey::from_pem(&std::fs::read_to_string(server.key("publisher-acme")).unwrap(), None)
            .unwrap();
    server.forge_role_signed(
        &bin,
        |t| {
            let entry = t.targets.get_mut(path).unwrap();
            let custom = entry.custom.as_mut().unwrap();
            custom["installer"]["health_check"] = json!(["/bin/sh", "-c", "touch pwned"]);
        },
        &[&publisher],
    );
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "late", "pilot", &token(&server, "pilot", 1));
    let (code, out) = agent.check();
    assert_eq!(code, 3, "{out}");
    assert_eq!(agent.installs("cfg-1"), 0);
    assert!(!agent.dir.join("pwned").exists());
    let report = last_report(&server, "approvals/pilot/acme/cfg-1.sh");
    assert_eq!(report.state, ReportState::Refused);
    assert!(report.reason.as_deref().unwrap_or("").contains("not the one the approvers approved"), "{report:?}");
}

/// A device's own words (a report's reason) reach the administrator's terminal written out: a
/// device cannot clear the screen or reorder what `ringfence device list` shows.
#[test]
fn a_devices_words_reach_the_admins_terminal_written_out() {
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let agent = enroll(&server, &root, "pilot-1", "pilot", &token(&server, "pilot", 1));
    let report = json!({
        "id": "0123456789abcdef01234567",
        "target": "approvals/pilot/acme/hello.txt",
        "state": "failed",
        "reason": "\u{1b}[2J\u{202e}forged",
        "at": 1,
    });
    std::fs::write(agent.state().join("outbox/00000000000001000000-0123456789abcdef01234567.json"), report.to_string())
        .unwrap();
    let (code, out) = agent.check();
    assert!(code == 0 || code == 3, "{out}");
    assert_eq!(
        last_report(&server, "approvals/pilot/acme/hello.txt").reason.as_deref(),
        Some("\u{1b}[2J\u{202e}forged")
    );
    let list = run_ok(server.cli().args(["device", "list"]));
    assert!(list.contains("(\\u{1b}[2J\\u{202e}forged)"), "{list}");
    assert!(!list.contains('\u{1b}') && !list.contains('\u{202e}'), "{list:?}");
    // The signed evidence of that report, checked against the device's own key, shows it the
    // same way.
    let device = devices(&server).into_iter().next().unwrap();
    let evidence = run_ok(server.cli().args([
        "device",
        "evidence",
        &device.id,
        "--target",
        "approvals/pilot/acme/hello.txt",
        "--device-key",
        &device.public_key,
    ]));
    assert!(evidence.contains("verified with the device's own key"), "{evidence}");
    assert!(evidence.contains("(\\u{1b}[2J\\u{202e}forged)"), "{evidence}");
    assert!(!evidence.contains('\u{1b}') && !evidence.contains('\u{202e}'), "{evidence:?}");
}
