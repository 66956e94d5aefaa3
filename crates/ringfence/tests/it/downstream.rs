//! An air-gapped mirror: the upstream writes export bundles (`ringfence export --bundle`), a
//! mirror set up from the upstream's root alone (`ringfence init --mirror-of`) imports them
//! (`ringfence import DIR`) and serves its own agents. Tampered content, metadata and log
//! entries, a rolled-back bundle and a bundle that skips part of the log are refused with
//! nothing changed; a mirror whose stored content is changed afterwards is refused by its
//! agents; python-tuf reads the mirror like the upstream; the mirror signs nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{BIN, free_port, run_ok};
use crate::crash::Installation;

fn bundle_cmd(install: &Installation, args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).arg("--config").arg(&install.config).env("RINGFENCE_ALLOW_ROOT", "1").output().unwrap()
}

/// `ringfence export --bundle DIR` upstream, retried while the newest metadata waits for the
/// log's next checkpoint.
fn export(upstream: &Installation, dir: &Path, extra: &[&str]) -> String {
    for _ in 0..100 {
        let mut args = vec!["export", "--bundle", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = bundle_cmd(upstream, &args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(said.contains("not on the log's checkpoint yet"), "{said}");
        let _ = std::fs::remove_dir_all(dir);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the export never found its metadata on the log");
}

/// `ringfence import DIR` on the mirror: whether it succeeded, and what it printed.
fn import(mirror: &Installation, dir: &Path) -> (bool, String) {
    let out = bundle_cmd(mirror, &["import", dir.to_str().unwrap()]);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// What the device listener of `at` answers for `path` (anyone may read: tests serve the
/// repository publicly).
fn served(at: &Installation, path: &str) -> ringfence_cli::http::Answer {
    let client = ringfence_cli::http::Client::new(
        &format!("https://127.0.0.1:{}", at.device_port),
        None,
        &at.data.join("tls/cert.pem"),
    )
    .unwrap();
    client.get(path).unwrap()
}

/// The log size an import printed, for the next export's `--since`.
fn since(said: &str) -> u64 {
    said.split("--since ").nth(1).and_then(|s| s.trim().trim_end_matches('.').parse().ok()).expect(said)
}

/// The timestamp version the mirror serves (0: none yet).
fn served_timestamp(mirror: &Installation) -> u64 {
    let answer = served(mirror, "/repo/metadata/timestamp.json");
    if answer.status == 404 {
        return 0;
    }
    let body = answer.ok().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    doc["signed"]["version"].as_u64().unwrap()
}

/// What is tampered with, how, and what the refusal must say.
type Tamper<'a> = (&'a str, Box<dyn Fn(&Path) + 'a>, &'a str);

/// A copy of bundle `from` at `to`, for tampering with.
fn copy_bundle(from: &Path, to: &Path) {
    for entry in crate::backup::files_under(from) {
        let dest = to.join(entry.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &dest).unwrap();
    }
}

/// Flip one byte of `path` in place.
fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// The SHA-256 of the script update `id` as published.
fn script_sha(upstream: &Installation, id: &str) -> String {
    ringfence_trust::sha256_hex(&std::fs::read(upstream.dir.path().join("work").join(format!("{id}.sh"))).unwrap())
}

#[test]
fn an_air_gapped_mirror_serves_what_upstream_signed_and_refuses_tampered_and_old_bundles() {
    if crate::common::test_postgres_database().is_some() {
        // Bundles do not depend on the database engine; the embedded default is enough.
        return;
    }
    let (upstream, mut upstream_server) = Installation::quickstart_served();
    assert!(upstream.publish("kb-1"));
    let bundles = upstream.dir.path().join("bundles");
    let first = bundles.join("first");
    let said = export(&upstream, &first, &[]);
    assert!(said.contains("1 content files"), "{said}");
    // Content can be limited to what a site needs: another product's ships none.
    let said = export(&upstream, &bundles.join("other-product"), &["--product", "other-product"]);
    assert!(said.contains("0 content files"), "{said}");
    let said = export(&upstream, &bundles.join("features"), &["--product", "acme-demo", "--classification", "feature"]);
    assert!(said.contains("1 content files"), "{said}");

    // The mirror knows only the upstream's root version 1.
    let mirror_dir = tempfile::tempdir().unwrap();
    let mirror_data = mirror_dir.path().join("mirror-data");
    let out = run_ok(
        Command::new(BIN)
            .args(["init", "--mirror-of"])
            .arg(upstream.data.join("1.root.json"))
            .arg("--data-dir")
            .arg(&mirror_data)
            .env("RINGFENCE_ALLOW_ROOT", "1"),
    );
    let root_sha = ringfence_trust::sha256_hex(&std::fs::read(upstream.data.join("1.root.json")).unwrap());
    assert!(out.contains(&root_sha), "{out}");
    assert!(!mirror_data.join("online-keys").exists(), "a mirror holds no online keys");
    let mirror = Installation {
        dir: mirror_dir,
        config: mirror_data.join("ringfence.toml"),
        data: mirror_data,
        device_port: free_port(),
        admin_port: free_port(),
    };
    // Downloads paced at the mirror (what a branch sets to keep its link usable).
    let mut text = std::fs::read_to_string(&mirror.config).unwrap();
    text.push_str("\n[devices]\nmax_download_bytes_per_sec = 1000000\n");
    std::fs::write(&mirror.config, text).unwrap();
    let (ok, said) = import(&mirror, &first);
    assert!(ok, "{said}");
    let log_size = since(&said);
    assert!(log_size > 0, "{said}");
    let mut mirror_server = mirror.serve();

    // The mirror's own agent, enrolled with the mirror's own token, installs what upstream
    // approved, through the mirror alone.
    let token = run_ok(
        mirror.cli().args(["device", "enrollment-token", "--group", "pilot", "--uses", "1"]).stdout(Stdio::piped()),
    );
    let agent = crate::scale_out::enroll_in_pilot(
        mirror.device_port,
        &mirror.data,
        &mirror.dir.path().join("agent"),
        token.trim(),
    );
    let (code, said) = crate::scale_out::check(&agent);
    assert_eq!(code, 0, "{said}");
    assert!(agent.join("ran-kb-1").exists(), "{said}");
    // python-tuf, which nobody here wrote, reads the mirror from the same pinned root.
    let tuf_state = mirror.dir.path().join("tuf-state");
    std::fs::create_dir_all(&tuf_state).unwrap();
    let (ok, said) = mirror.tuf(&tuf_state, "acme/kb-1.sh");
    assert!(ok, "{said}");

    // A mirror signs nothing.
    let (manifest, script) = crate::scale_out::script_update(&mirror.dir.path().join("work"), "local");
    let refused =
        mirror.cli().args(["publish", "--manifest"]).arg(&manifest).arg(&script).stderr(Stdio::piped()).output();
    let refused = refused.unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("mirror"), "{refused:?}");

    // More upstream; the next bundle carries only what changed since the mirror's log size.
    assert!(upstream.publish("kb-2"));
    let second = bundles.join("second");
    let said = export(&upstream, &second, &["--since", &log_size.to_string()]);
    assert!(said.contains("1 content files"), "only kb-2's content: {said}");
    let before = served_timestamp(&mirror);

    // Tampered bundles are refused whole, the mirror unchanged.
    let kb2 = script_sha(&upstream, "kb-2");
    let tampered: [Tamper; 5] = [
        ("content", Box::new(|b: &Path| flip(&b.join("targets").join(&kb2), 3)), "signed length and SHA-256"),
        (
            "metadata",
            Box::new(|b: &Path| {
                let file = crate::backup::files_under(&b.join("metadata"))
                    .into_iter()
                    .find(|p| p.file_name().unwrap().to_str().unwrap().ends_with(".approvals.pilot.json"))
                    .unwrap();
                let text = std::fs::read_to_string(&file).unwrap().replace("kb-2", "kb-9");
                std::fs::write(&file, text).unwrap();
            }),
            "approvals.pilot",
        ),
        ("log entry", Box::new(|b: &Path| flip(&b.join("log/entries"), 40)), "log"),
        (
            "checkpoint",
            Box::new(|b: &Path| {
                let text = std::fs::read_to_string(b.join("log/checkpoint")).unwrap();
                let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
                lines[1] = (lines[1].parse::<u64>().unwrap() + 1).to_string();
                std::fs::write(b.join("log/checkpoint"), lines.join("\n") + "\n").unwrap();
            }),
            "log/checkpoint",
        ),
        (
            "manifest",
            Box::new(|b: &Path| {
                let text = std::fs::read_to_string(b.join("bundle.json")).unwrap();
                std::fs::write(b.join("bundle.json"), text.replacen('{', "{\"$type\": \"x\",", 1)).unwrap();
            }),
            "unknown field",
        ),
    ];
    for (what, tamper, needle) in &tampered {
        let copy = bundles.join(format!("tampered-{}", what.replace(' ', "-")));
        copy_bundle(&second, &copy);
        tamper(&copy);
        let (ok, said) = import(&mirror, &copy);
        assert!(!ok, "a bundle with tampered {what} was imported: {said}");
        assert!(said.contains(needle), "tampered {what}: expected {needle:?} in {said}");
        assert_eq!(served_timestamp(&mirror), before, "a refused bundle ({what}) changed what the mirror serves");
    }
    let blobs = |m: &Installation| {
        crate::backup::files_under(&m.data.join("content")).into_iter().filter(|p| p.ends_with(&kb2)).count()
    };
    assert_eq!(blobs(&mirror), 0, "a refused bundle left content behind");
    let (ok, said) = import(&mirror, &second);
    assert!(ok, "{said}");
    assert!(served_timestamp(&mirror) > before);
    assert_eq!(blobs(&mirror), 1);
    let log_size = since(&said);

    // An old bundle, once something newer is in, is a rollback; a bundle that starts past the
    // mirror's log would leave a hole in it.
    let (ok, said) = import(&mirror, &first);
    assert!(!ok && said.contains("rollback"), "{said}");
    assert!(upstream.publish("kb-3"));
    let gap = bundles.join("gap");
    export(&upstream, &gap, &["--since", &(log_size + 1).to_string()]);
    let (ok, said) = import(&mirror, &gap);
    assert!(!ok && said.contains(&format!("export with --since {log_size}")), "{said}");

    // The mirror's stored content changed behind its back: its agent refuses it, then installs
    // the real bytes once they are back.
    let blob = crate::backup::files_under(&mirror.data.join("content"))
        .into_iter()
        .find(|p| p.ends_with(&kb2))
        .expect("kb-2's blob");
    let real = std::fs::read(&blob).unwrap();
    let mut evil = real.clone();
    evil[0] ^= 0x20;
    std::fs::write(&blob, &evil).unwrap();
    let (_, said) = crate::scale_out::check(&agent);
    assert!(!agent.join("ran-kb-2").exists(), "the agent ran content the mirror changed: {said}");
    std::fs::write(&blob, &real).unwrap();
    let (code, said) = crate::scale_out::check(&agent);
    assert_eq!(code, 0, "{said}");
    assert!(agent.join("ran-kb-2").exists(), "{said}");

    // A rollout the upstream paused reaches the mirror's devices: its signed holds travel in
    // the bundle and hold kb-4 back there too.
    let (manifest, script) = crate::scale_out::script_update(&upstream.dir.path().join("work"), "kb-4");
    run_ok(upstream.cli().args(["publish", "--manifest"]).arg(&manifest).arg(&script));
    run_ok(upstream.cli().args(["rollout", "start", "kb-4", "--group", "pilot"]));
    run_ok(upstream.cli().args(["rollout", "pause", "kb-4", "--group", "pilot"]));
    run_ok(upstream.cli().args(["approve", "kb-4", "--group", "pilot"]));
    let fourth = bundles.join("fourth");
    export(&upstream, &fourth, &["--since", &log_size.to_string()]);
    let (ok, said) = import(&mirror, &fourth);
    assert!(ok && said.contains("rollout holds, version"), "{said}");
    let holds = |i: &Installation| served(i, "/repo/rollouts.json").ok().unwrap();
    assert_eq!(holds(&mirror), holds(&upstream));
    let (code, said) = crate::scale_out::check(&agent);
    assert_eq!(code, 0, "{said}");
    assert!(agent.join("ran-kb-3").exists(), "{said}");
    assert!(!agent.join("ran-kb-4").exists(), "the upstream's pause holds at the mirror too: {said}");

    mirror_server.kill().unwrap();
    upstream_server.kill().unwrap();
    let _ = (mirror_server.wait(), upstream_server.wait());
}

/// Rows of `query` on an installation's SQLite database (committed), columns joined by tabs
/// (bytes in hex).
fn sql_rows(install: &Installation, query: &str) -> Vec<String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); rows=list(c.execute(sys.argv[2])); c.commit(); [print('\\t'.join(x.hex() if isinstance(x, bytes) else str(x) for x in r)) for r in rows]")
        .arg(install.data.join("ringfence.db"))
        .arg(query)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

fn sql_count(install: &Installation, query: &str) -> u64 {
    sql_rows(install, query)[0].parse().unwrap()
}

/// Wait (at most 60 s) until the replica serves the upstream's timestamp version.
fn wait_synced(replica: &Installation, upstream: &Installation) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if served_timestamp(replica) == served_timestamp(upstream) {
            return;
        }
        if std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(replica.dir.path().join("server.log")).unwrap_or_default();
            panic!("the replica did not sync; its log:\n{log}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A replica of `upstream` with a new `replicate` token named `name`, syncing every second,
/// served once it serves the upstream's timestamp; and the token.
fn replica_of(upstream: &Installation, name: &str) -> (Installation, std::process::Child, String) {
    let token =
        run_ok(upstream.cli().args(["token", "create", "--name", name, "--scope", "replicate"]).stdout(Stdio::piped()));
    let token_file = upstream.dir.path().join(format!("{name}.token"));
    std::fs::write(&token_file, token.trim()).unwrap();
    let replica_dir = tempfile::tempdir().unwrap();
    let replica_data = replica_dir.path().join("replica-data");
    run_ok(
        Command::new(BIN)
            .args(["init", "--mirror-of"])
            .arg(upstream.data.join("1.root.json"))
            .arg("--data-dir")
            .arg(&replica_data)
            .args(["--upstream", &format!("https://127.0.0.1:{}", upstream.device_port), "--upstream-ca"])
            .arg(upstream.data.join("tls/cert.pem"))
            .arg("--upstream-token")
            .arg(&token_file)
            .env("RINGFENCE_ALLOW_ROOT", "1"),
    );
    let config = replica_data.join("ringfence.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("sync_secs = 1\nmax_bytes_per_sec = 1000000\n");
    std::fs::write(&config, text).unwrap();
    let replica = Installation {
        dir: replica_dir,
        config,
        data: replica_data,
        device_port: free_port(),
        admin_port: free_port(),
    };
    let server = replica.serve();
    wait_synced(&replica, upstream);
    (replica, server, token)
}

/// An agent enrolled at `at` (a replica) in `group` with an enrollment token of `upstream`;
/// its directory and device id.
fn enroll_at(at: &Installation, upstream: &Installation, group: &str, name: &str) -> (PathBuf, String) {
    let enrollment = run_ok(
        upstream.cli().args(["device", "enrollment-token", "--group", group, "--uses", "1"]).stdout(Stdio::piped()),
    );
    let dir = at.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let root_sha = ringfence_trust::sha256_hex(&std::fs::read(at.data.join("1.root.json")).unwrap());
    let out = run_ok(
        Command::new(crate::common::agent_bin())
            .args(["enroll", "--server", &format!("https://127.0.0.1:{}", at.device_port)])
            .args(["--root-sha256", &root_sha, "--group", group, "--token", enrollment.trim(), "--ca"])
            .arg(at.data.join("tls/cert.pem"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .current_dir(&dir),
    );
    assert!(out.contains("(accepted)"), "{out}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state/config.json")).unwrap()).unwrap();
    (dir, config["device_id"].as_str().unwrap().to_owned())
}

#[test]
fn a_replica_syncs_enrolls_through_its_upstream_and_forwards_reports_across_an_outage() {
    if crate::common::test_postgres_database().is_some() {
        return;
    }
    let (upstream, mut upstream_server) = Installation::quickstart_served();
    assert!(upstream.publish("kb-1"));
    let (replica, mut replica_server, token) = replica_of(&upstream, "branch-1");
    // The replica's token is good for nothing on the admin listener.
    let admin_with_replica_token = ringfence_cli::http::Client::new(
        &format!("https://127.0.0.1:{}", upstream.admin_port),
        Some(token.trim().to_owned()),
        &upstream.data.join("tls/cert.pem"),
    )
    .unwrap();
    assert_eq!(admin_with_replica_token.get("/api/v1/updates").unwrap().status, 403);

    // The device enrolls at the replica with the upstream's enrollment token: the upstream
    // keeps its key; it installs through the replica alone.
    let (agent, device) = enroll_at(&replica, &upstream, "pilot", "agent");
    let (code, said) = crate::scale_out::check(&agent);
    assert_eq!(code, 0, "{said}");
    assert!(agent.join("ran-kb-1").exists(), "{said}");
    // Its signed reports reach the upstream.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while upstream.stored_reports(&device).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no report reached the upstream");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let before_outage = upstream.stored_reports(&device);

    // The link drops (the upstream is down) after kb-2 reached the replica: the device still
    // checks in at the replica and installs, its reports wait there, and arrive once the
    // upstream is back.
    assert!(upstream.publish("kb-2"));
    wait_synced(&replica, &upstream);
    upstream_server.kill().unwrap();
    let _ = upstream_server.wait();
    // The replica needs no trust: content changed in its store is refused by its agent...
    let kb2 = script_sha(&upstream, "kb-2");
    let blob = crate::backup::files_under(&replica.data.join("content"))
        .into_iter()
        .find(|p| p.ends_with(&kb2))
        .expect("kb-2 at the replica");
    let real = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, real.iter().map(|b| b ^ 0x20).collect::<Vec<u8>>()).unwrap();
    let (_, said) = crate::scale_out::check(&agent);
    assert!(!agent.join("ran-kb-2").exists(), "the agent ran content the replica changed: {said}");
    std::fs::write(&blob, &real).unwrap();
    let (code, said) = crate::scale_out::check(&agent);
    assert_eq!(code, 0, "{said}");
    assert!(agent.join("ran-kb-2").exists(), "{said}");
    // ...and a repository it rolls back (its newest timestamp taken away) is refused by every
    // TUF client that trusts the newer one: python-tuf and the agent.
    let tuf_state = replica.dir.path().join("tuf-state");
    std::fs::create_dir_all(&tuf_state).unwrap();
    let (ok, said) = replica.tuf(&tuf_state, "acme/kb-2.sh");
    assert!(ok, "{said}");
    sql_rows(
        &replica,
        "DELETE FROM metadata WHERE role = 'timestamp' AND version = (SELECT MAX(version) FROM metadata WHERE role = 'timestamp')",
    );
    let (ok, said) = replica.tuf(&tuf_state, "acme/kb-2.sh");
    assert!(!ok, "python-tuf took a rolled-back timestamp: {said}");
    assert!(said.to_lowercase().contains("version"), "{said}");
    let (code, said) = crate::scale_out::check(&agent);
    assert_ne!(code, 0, "{said}");
    assert!(said.contains("rollback"), "{said}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    upstream_server = upstream.serve();
    wait_synced(&replica, &upstream);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = upstream.stored_reports(&device);
        if now.len() > before_outage.len() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the buffered reports never arrived");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Every report the replica holds reached the upstream (each id once: they are keyed by it).
    let at_replica = replica.stored_reports(&device);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while upstream.stored_reports(&device) != at_replica {
        assert!(std::time::Instant::now() < deadline, "the upstream has not got every report the replica has");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // Upstream, compliance per site: the devices enrolled through this replica and what they
    // installed; another site counts none of them.
    let site = |name: &str| -> serde_json::Value {
        let out = run_ok(upstream.cli().args(["report", "site", name, "--json"]).stdout(Stdio::piped()));
        serde_json::from_str(&out).unwrap()
    };
    let branch = site("branch-1");
    assert_eq!(branch["devices"]["accepted"], 1, "{branch}");
    let kb2 = branch["targets"].as_array().unwrap().iter().find(|t| t["target"].as_str().unwrap().ends_with("kb-2.sh"));
    assert_eq!(kb2.unwrap()["states"]["installed"], 1, "{branch}");
    let elsewhere = site("branch-9");
    assert!(
        elsewhere["devices"].as_object().unwrap().is_empty() && elsewhere["targets"].as_array().unwrap().is_empty()
    );

    // Each batch was forwarded once and is marked so.
    assert_eq!(sql_count(&replica, "SELECT COUNT(*) FROM report_batches WHERE forwarded_at IS NULL"), 0);

    // A replica speaks only for the devices enrolled through it: another replica's token
    // learns nothing of this device and cannot forward its signed batch; an admin token with
    // every scope is refused on the replica routes.
    let other = run_ok(
        upstream.cli().args(["token", "create", "--name", "branch-2", "--scope", "replicate"]).stdout(Stdio::piped()),
    );
    let replica_client = |secret: &str| {
        ringfence_cli::http::Client::new(
            &format!("https://127.0.0.1:{}", upstream.device_port),
            Some(secret.trim().to_owned()),
            &upstream.data.join("tls/cert.pem"),
        )
        .unwrap()
    };
    let ask = serde_json::json!({ "ids": [device] });
    let answer = |secret: &str| -> serde_json::Value {
        let a = replica_client(secret).send_json("POST", "/replica/v1/devices", &ask).unwrap();
        serde_json::from_slice(&a.ok().unwrap()).unwrap()
    };
    assert_eq!(answer(&token)["devices"].as_array().unwrap().len(), 1);
    assert_eq!(answer(&other)["devices"].as_array().unwrap().len(), 0);
    let admin_token = std::fs::read_to_string(upstream.data.join("admin.token")).unwrap();
    let refused = replica_client(&admin_token).send_json("POST", "/replica/v1/devices", &ask).unwrap();
    assert_eq!(refused.status, 401);
    let batch = sql_rows(&replica, "SELECT message, signature FROM report_batches LIMIT 1");
    let (message, signature) = batch[0].split_once('\t').unwrap();
    let message = String::from_utf8(hex::decode(message).unwrap()).unwrap();
    let forward = serde_json::json!({ "batches": [{ "message": message, "signature": signature }] });
    let ack = replica_client(&other).send_json("POST", "/replica/v1/reports", &forward).unwrap().ok().unwrap();
    let ack: serde_json::Value = serde_json::from_slice(&ack).unwrap();
    assert!(ack["results"][0]["refused"].is_string(), "{ack}");

    // A pause set upstream reaches the replica's devices without a new timestamp.
    let (manifest, script) = crate::scale_out::script_update(&upstream.dir.path().join("work"), "kb-3");
    run_ok(upstream.cli().args(["publish", "--manifest"]).arg(&manifest).arg(&script));
    run_ok(upstream.cli().args(["rollout", "start", "kb-3", "--group", "pilot"]));
    run_ok(upstream.cli().args(["rollout", "pause", "kb-3", "--group", "pilot"]));
    run_ok(upstream.cli().args(["approve", "kb-3", "--group", "pilot"]));
    wait_synced(&replica, &upstream);
    let holds = |i: &Installation| served(i, "/repo/rollouts.json").body;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while holds(&replica) != holds(&upstream) {
        assert!(std::time::Instant::now() < deadline, "the upstream's holds never reached the replica");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (code, said) = crate::scale_out::check(&agent);
    assert_eq!(code, 0, "{said}");
    assert!(!agent.join("ran-kb-3").exists(), "the upstream's pause holds at the replica: {said}");

    // Revoked upstream, the device is refused at the replica too.
    run_ok(upstream.cli().args(["device", "revoke", &device]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, said) = crate::scale_out::check(&agent);
        if code != 0 {
            // (The agent says "not accepted" for a device the server no longer accepts.)
            assert!(said.contains("refused") || said.contains("not accepted"), "{said}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the revoked device still checks in at the replica");
        std::thread::sleep(std::time::Duration::from_millis(500));
        let _ = std::fs::remove_file(agent.join("state/session.json"));
    }

    replica_server.kill().unwrap();
    upstream_server.kill().unwrap();
    let _ = (replica_server.wait(), upstream_server.wait());
}

#[test]
fn a_site_approves_for_its_own_group_at_its_replica_and_reaches_no_other() {
    if crate::common::test_postgres_database().is_some() {
        return;
    }
    let (upstream, mut upstream_server) = Installation::quickstart_served();
    let keys = upstream.dir.path().join("ringfence-keys");
    let trusted_root = keys.join("1.root.json");
    // Offline, once: top-level targets delegates the site's group to the site's own approver.
    run_ok(upstream.cli().args(["key", "generate", "--unencrypted", "--name", "site-approver", "--dir"]).arg(&keys));
    let work = upstream.dir.path().join("ceremony");
    std::fs::create_dir_all(&work).unwrap();
    let (current, draft) = (work.join("targets.json"), work.join("targets.next.json"));
    run_ok(upstream.cli().args(["fetch", "targets", "--out"]).arg(&current));
    run_ok(
        upstream
            .cli()
            .args(["metadata", "set-group"])
            .arg(&current)
            .arg("--out")
            .arg(&draft)
            .args(["--group", "site-a", "--threshold", "1", "--key"])
            .arg(keys.join("site-approver.pub.json")),
    );
    run_ok(upstream.cli().args(["metadata", "sign"]).arg(&draft).arg("--key").arg(keys.join("targets.key")));
    assert!(
        run_ok(upstream.cli().args(["propose", "targets"]).arg(&draft).stdout(Stdio::piped())).contains("is published")
    );
    let sign_site = |at: &Installation| {
        run_ok(
            at.cli()
                .args(["pending", "sign-all", "--yes", "--key"])
                .arg(keys.join("site-approver.key"))
                .arg("--trusted-root")
                .arg(&trusted_root)
                .stdout(Stdio::piped()),
        )
    };
    assert!(sign_site(&upstream).contains("approvals.site-a version 1 is published"));

    let (replica, mut replica_server, _) = replica_of(&upstream, "site-a");
    let (agent, _) = enroll_at(&replica, &upstream, "site-a", "site-agent");
    assert!(upstream.publish("kb-1"));
    let approve_at_site = |group: &str| {
        replica.cli().args(["approve", "kb-1", "--group", group]).stderr(Stdio::piped()).output().unwrap()
    };
    // The site works at its replica's admin API; the upstream decides which groups it may
    // approve for: none yet.
    let refused = approve_at_site("site-a");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not approve for site-a"), "{refused:?}");
    // A group the upstream's online keys approve for is never granted (a proposal would
    // publish with no approver of the site).
    let grant = |group: &str| {
        upstream
            .cli()
            .args(["token", "replica-groups", "site-a", "--group", group])
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    let refused = grant("pilot");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("online keys"), "{refused:?}");
    assert!(grant("site-a").status.success());
    // Proposed at the site, relayed: it waits for the site's approver; the upstream's other
    // groups stay out of the site's reach.
    let proposed = approve_at_site("site-a");
    assert!(proposed.status.success(), "{proposed:?}");
    let refused = approve_at_site("pilot");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not approve for pilot"), "{refused:?}");
    // The site sees and reaches only its own groups' pending versions: production's, proposed
    // upstream, is neither listed at the replica nor readable through it.
    run_ok(upstream.cli().args(["approve", "kb-1", "--group", "production"]));
    let listed = run_ok(replica.cli().args(["pending", "list", "--json"]).stdout(Stdio::piped()));
    assert!(listed.contains("approvals.site-a") && !listed.contains("approvals.production"), "{listed}");
    let site_admin = ringfence_cli::http::Client::new(
        &format!("https://127.0.0.1:{}", replica.admin_port),
        Some(std::fs::read_to_string(replica.data.join("admin.token")).unwrap().trim().to_owned()),
        &replica.data.join("tls/cert.pem"),
    )
    .unwrap();
    assert_eq!(site_admin.get("/api/v1/pending/approvals.production").unwrap().status, 403);
    assert_eq!(site_admin.get("/api/v1/pending/targets").unwrap().status, 403);
    wait_synced(&replica, &upstream);
    let (code, said) = crate::scale_out::check(&agent);
    assert_eq!(code, 0, "{said}");
    assert!(!agent.join("ran-kb-1").exists(), "installed without the site's approver: {said}");
    // The site's approver signs at the replica (the pending version and its log proof come
    // from the upstream through it): published upstream, and the site's device installs it.
    assert!(sign_site(&replica).contains("approvals.site-a version 2 is published"));
    wait_synced(&replica, &upstream);
    let (code, said) = crate::scale_out::check(&agent);
    assert_eq!(code, 0, "{said}");
    assert!(agent.join("ran-kb-1").exists(), "{said}");

    replica_server.kill().unwrap();
    upstream_server.kill().unwrap();
    let _ = (replica_server.wait(), upstream_server.wait());
}
