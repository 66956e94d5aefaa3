//! Backup and restore of the embedded default: `ringfence backup` while the server serves,
//! more published afterwards (devices and python-tuf trust it), the database lost, `ringfence
//! restore` from the backup: the log's tail comes back from the content store, the server
//! signs past every version clients may trust, and the agent and python-tuf go on with the
//! state they had — a new update installs. A tampered backup and a restore over an existing
//! database are refused with nothing changed.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::{free_port, run_ok};
use crate::crash::Installation;

fn enroll(install: &Installation, name: &str) -> std::path::PathBuf {
    let token = run_ok(
        install.cli().args(["device", "enrollment-token", "--group", "pilot", "--uses", "1"]).stdout(Stdio::piped()),
    );
    let dir = install.dir.path().join(name);
    crate::scale_out::enroll_in_pilot(install.device_port, &install.data, &dir, token.trim())
}

/// One agent cycle, which must succeed (`when` names it in a failure, with the server's log).
fn check(install: &Installation, agent: &Path, when: &str) -> String {
    let (code, said) = crate::scale_out::check(agent);
    if code != 0 {
        let log = std::fs::read_to_string(install.dir.path().join("server.log")).unwrap_or_default();
        panic!("{when}: {said}\nthe server's log:\n{log}");
    }
    said
}

/// Production's approver `n` signs the pending approval (with `--after-restore-version`).
fn sign_production(install: &Installation, n: u32, after_restore: Option<u64>) -> std::process::Output {
    let mut c = install.cli();
    c.args(["pending", "sign", "approvals.production", "--yes", "--key"])
        .arg(install.dir.path().join(format!("ringfence-keys/production-approver-{n}.key")))
        .arg("--trusted-root")
        .arg(install.dir.path().join("ringfence-keys/1.root.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(v) = after_restore {
        c.args(["--after-restore-version", &v.to_string()]);
    }
    c.output().unwrap()
}

/// Every file under `dir`, recursively.
pub(crate) fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { todo.push(path) } else { out.push(path) }
        }
    }
    out
}

fn trusted_version(state: &Path, role: &str) -> u64 {
    let doc: Value = serde_json::from_slice(&std::fs::read(state.join(format!("{role}.json"))).unwrap()).unwrap();
    doc["signed"]["version"].as_u64().unwrap()
}

fn restore(install: &Installation, from: &Path) -> std::process::Output {
    Command::new(crate::common::BIN)
        .args(["restore", "--config"])
        .arg(&install.config)
        .arg("--from")
        .arg(from)
        .env("RINGFENCE_ALLOW_ROOT", "1")
        .output()
        .unwrap()
}

#[test]
fn a_restored_server_moves_past_what_devices_trust_and_they_go_on() {
    if crate::common::test_postgres_database().is_some() {
        // The embedded default is what `ringfence backup` copies.
        return;
    }
    let (install, mut server) = Installation::quickstart_served();
    let agent = enroll(&install, "agent");
    let tuf_state = install.dir.path().join("tuf-state");
    std::fs::create_dir_all(&tuf_state).unwrap();
    assert!(install.publish("kb-1"));
    check(&install, &agent, "before the backup");
    assert!(agent.join("ran-kb-1").exists());

    // Backed up while it serves.
    let backup = install.dir.path().join("backup");
    let out = run_ok(
        Command::new(crate::common::BIN).args(["backup", "--config"]).arg(&install.config).arg("--to").arg(&backup),
    );
    assert!(out.contains("with their content"), "{out}");
    let manifest: Value = serde_json::from_slice(&std::fs::read(backup.join("backup.json")).unwrap()).unwrap();
    assert!(!manifest["blobs"].as_array().unwrap().is_empty(), "{manifest}");

    // After the backup: more published, production's offline approvers sign an approval, and
    // the agent and python-tuf trust all of it.
    for id in ["kb-2", "kb-3"] {
        assert!(install.publish(id));
    }
    let approved =
        install.cli().args(["approve", "kb-2", "--group", "production"]).stderr(Stdio::piped()).output().unwrap();
    if !approved.status.success() {
        let log = std::fs::read_to_string(install.dir.path().join("server.log")).unwrap_or_default();
        panic!("approve: {approved:?}\nthe server's log:\n{log}");
    }
    for approver in [1, 2] {
        let out = sign_production(&install, approver, None);
        assert!(out.status.success(), "{out:?}");
    }
    check(&install, &agent, "after the backup");
    assert!(agent.join("ran-kb-3").exists());
    let (ok, said) = install.tuf(&tuf_state, "acme/kb-3.sh");
    assert!(ok, "{said}");
    let trusted = (trusted_version(&tuf_state, "timestamp"), trusted_version(&tuf_state, "snapshot"));
    assert!(trusted.0 > manifest["roles"]["timestamp"].as_u64().unwrap(), "clients trust more than the backup holds");

    // The database is lost; the content directory (with the log's tiles) is not.
    run_ok(Command::new("kill").args(["-TERM", &server.id().to_string()]));
    server.wait().unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", install.data.join("ringfence.db").display()));
    }

    // A backup whose database was changed is refused, and nothing is placed.
    let tampered = install.dir.path().join("tampered");
    std::fs::create_dir_all(&tampered).unwrap();
    for name in ["backup.json", "ringfence.db"] {
        std::fs::copy(backup.join(name), tampered.join(name)).unwrap();
    }
    let mut db = std::fs::read(tampered.join("ringfence.db")).unwrap();
    let last = db.len() - 1;
    db[last] ^= 1;
    std::fs::write(tampered.join("ringfence.db"), db).unwrap();
    let refused = restore(&install, &tampered);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not the database the manifest describes"),
        "{refused:?}"
    );
    assert!(!install.data.join("ringfence.db").exists(), "a refused restore places nothing");

    // Entry bundles changed in the content store (a bucket is not trusted): the tail does not
    // give the signed checkpoint's root, and nothing is restored.
    let bundles = files_under(&install.data.join("content/log/tile/entries"));
    assert!(!bundles.is_empty());
    let originals: Vec<Vec<u8>> = bundles.iter().map(|b| std::fs::read(b).unwrap()).collect();
    for (path, bytes) in bundles.iter().zip(&originals) {
        let mut changed = bytes.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        std::fs::write(path, changed).unwrap();
    }
    let refused = restore(&install, &backup);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not continue the backup's log"), "{refused:?}");
    assert!(!install.data.join("ringfence.db").exists(), "a refused restore places nothing");
    for (path, bytes) in bundles.iter().zip(&originals) {
        std::fs::write(path, bytes).unwrap();
    }

    // Restored: the log's tail comes back, every role moves past what clients trust.
    let out = restore(&install, &backup);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    let put_back: u64 = said
        .split("The transparency log: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(put_back > 0, "the log's tail is put back: {said}");
    let waiting: u64 = said
        .lines()
        .find_map(|l| l.trim().strip_prefix("approvals.production version "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("production's approval waits for its approvers: {said}"));
    // Once only: a second restore finds a database there.
    let again = restore(&install, &backup);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("exists"), "{again:?}");

    // Until production's approvers sign past the floor, the restored snapshot lists an older
    // production approval than clients trust: python-tuf refuses it (no rollback).
    let mut server = install.serve();
    let (ok, said) = install.tuf(&tuf_state, "acme/kb-3.sh");
    assert!(!ok, "a snapshot listing an older approval is refused: {said}");
    // A signer's tool signs a version that skips numbers only when the signer names it.
    let refused = sign_production(&install, 1, None);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--after-restore-version"), "{refused:?}");
    for approver in [1, 2] {
        let out = sign_production(&install, approver, Some(waiting));
        assert!(out.status.success(), "{out:?}");
    }

    // The agent and python-tuf go on from what they trust: a new update installs.
    check(&install, &agent, "right after the restore");
    assert!(install.publish("kb-4"));
    let said = check(&install, &agent, "with an update published after the restore");
    assert!(agent.join("ran-kb-4").exists(), "{said}");
    let (ok, said) = install.tuf(&tuf_state, "acme/kb-4.sh");
    assert!(ok, "{said}");
    assert!(trusted_version(&tuf_state, "timestamp") > trusted.0);
    assert!(trusted_version(&tuf_state, "snapshot") > trusted.1);
    run_ok(Command::new("kill").args(["-TERM", &server.id().to_string()]));
    server.wait().unwrap();
}

/// On PostgreSQL and S3: the database dumped with `pg_dump` while the server serves, more
/// published, the database dropped and `pg_restore`d, `ringfence restore --recover-only`: the
/// log's tail comes back from the bucket, and the agent goes on.
#[test]
fn a_postgres_installation_restored_with_pg_restore_is_recovered_and_devices_go_on() {
    let (Some(database), Some(bucket)) = (crate::common::test_postgres_database(), crate::common::test_bucket()) else {
        // The second test pass (PostgreSQL and S3) runs it.
        return;
    };
    let (dir, data, keys) = crate::common::quickstart_installation(&["--database", &database, "--content", &bucket]);
    std::fs::copy(keys.join("publisher-acme.key"), data.join("online-keys/publisher-acme.key")).unwrap();
    let config = data.join("ringfence.toml");
    let install = Installation { dir, config, data, device_port: free_port(), admin_port: free_port() };
    let mut server = install.serve();
    let agent = enroll(&install, "agent");
    assert!(install.publish("kb-1"));
    check(&install, &agent, "before the dump");

    let dump = install.dir.path().join("ringfence.dump");
    run_ok(Command::new("pg_dump").args(["-Fc", "-f"]).arg(&dump).arg(&database));
    for id in ["kb-2", "kb-3"] {
        assert!(install.publish(id));
    }
    check(&install, &agent, "after the dump");
    assert!(agent.join("ran-kb-3").exists());
    run_ok(Command::new("kill").args(["-TERM", &server.id().to_string()]));
    server.wait().unwrap();

    // The database lost and restored from the dump by PostgreSQL's own tools.
    let (server_url, name) = database.rsplit_once('/').unwrap();
    let admin = format!("{server_url}/postgres");
    for statement in [format!("DROP DATABASE {name}"), format!("CREATE DATABASE {name}")] {
        run_ok(Command::new("psql").args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &admin, "-c", &statement]));
    }
    run_ok(Command::new("pg_restore").args(["--no-owner", "-d", &database]).arg(&dump));
    let out = Command::new(crate::common::BIN)
        .args(["restore", "--recover-only", "--config"])
        .arg(&install.config)
        .env("RINGFENCE_ALLOW_ROOT", "1")
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("The transparency log: 0 entries"), "the log's tail is put back: {said}");

    let mut server = install.serve();
    check(&install, &agent, "right after the recovery");
    assert!(install.publish("kb-4"));
    check(&install, &agent, "with an update published after the recovery");
    assert!(agent.join("ran-kb-4").exists());
    run_ok(Command::new("kill").args(["-TERM", &server.id().to_string()]));
    server.wait().unwrap();
}
