//! python-tuf (the reference implementation) against a running Ringfence server.

use std::process::Command;

use crate::common::{Server, interop_script, python, run_ok, tuf_client};

#[test]
fn python_tuf_downloads_approved_targets_and_follows_a_root_rotation() {
    let server = Server::start(|_| {});
    let content = b"hello fleet\n";
    server.publish_signed("hello.txt", content);

    // pilot: approved by the server's online auto-approver key, published at once.
    assert!(server.approve("pilot", "acme/hello.txt").contains("is published"));
    // production: 2 of 3 offline approvers.
    assert!(server.approve("production", "acme/hello.txt").contains("waits for signatures: 0 of 2"));
    let md = server.dir.path().join("client-md");
    let out = server.dir.path().join("client-out");
    let out_s = out.to_str().unwrap();

    let (ok, answer) =
        tuf_client(&server, &md, &["download", "--target", "approvals/pilot/acme/hello.txt", "--out-dir", out_s]);
    assert!(ok, "{answer}");
    assert_eq!(std::fs::read(out.join("hello.txt")).unwrap(), content);

    assert!(server.sign("approvals.production", "production-approver-1").contains("1 of 2"));
    // Below threshold: not published, so the reference client does not find it.
    let (ok, answer) =
        tuf_client(&server, &md, &["download", "--target", "approvals/production/acme/hello.txt", "--out-dir", out_s]);
    assert!(!ok);
    assert_eq!(answer["error"], "TargetNotFoundError", "{answer}");

    assert!(server.sign("approvals.production", "production-approver-2").contains("is published"));
    std::fs::remove_file(out.join("hello.txt")).unwrap();
    let (ok, answer) =
        tuf_client(&server, &md, &["download", "--target", "approvals/production/acme/hello.txt", "--out-dir", out_s]);
    assert!(ok, "{answer}");
    assert_eq!(std::fs::read(out.join("hello.txt")).unwrap(), content);

    // tough, a second independent client, loads the same repository in-process.
    let root = std::fs::read(server.data.join("1.root.json")).unwrap();
    let read =
        crate::tough_interop::read_target(&server.repo_url, &server.ca, &root, "approvals/production/acme/hello.txt");
    assert_eq!(read.as_deref(), Ok(&content[..]));

    // Root rotation: version 2 with a new root key, signed by the old and the new key.
    let keys = &server.keys;
    run_ok(server.cli().args(["key", "generate", "--unencrypted", "--name", "root-2", "--dir"]).arg(keys));
    let next = keys.join("2.root.json");
    run_ok(
        server
            .cli()
            .args(["metadata", "next-root"])
            .arg(keys.join("1.root.json"))
            .arg("--out")
            .arg(&next)
            .arg("--root-key")
            .arg(keys.join("root-2.pub.json")),
    );
    // Signed by the new key only: held, not published.
    run_ok(server.cli().args(["metadata", "sign"]).arg(&next).arg("--key").arg(keys.join("root-2.key")));
    assert!(run_ok(server.cli().arg("propose").arg("root").arg(&next)).contains("waits for signatures"));
    run_ok(server.cli().args(["metadata", "sign"]).arg(&next).arg("--key").arg(server.key("root")));
    assert!(run_ok(server.cli().arg("propose").arg("root").arg(&next)).contains("root version 2 is published"));
    let (ok, answer) = tuf_client(&server, &md, &["refresh"]);
    assert!(ok, "{answer}");
    assert_eq!(answer["versions"]["root"], 2, "{answer}");
    let read = crate::tough_interop::read_target(&server.repo_url, &server.ca, &root, "approvals/pilot/acme/hello.txt");
    assert_eq!(read.as_deref(), Ok(&content[..]), "tough follows the rotation from root 1");

    // python-tuf's Metadata API verifies every file the server wrote.
    let dump = server.dir.path().join("dump");
    server.dump_metadata(&dump);
    let out =
        Command::new(python()).arg(interop_script("verify_metadata.py")).arg("--dir").arg(&dump).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn tampered_blob_and_expired_timestamp_are_refused() {
    // Timestamps that live 3 seconds, and a renewal job that does not look again soon.
    let server = Server::start(|c| {
        c.expiry.timestamp_secs = 3;
        c.expiry.check_interval_secs = 3600;
    });
    let content = b"payload-v1";
    server.publish_signed("app.bin", content);
    server.approve("pilot", "acme/app.bin");
    let md = server.dir.path().join("md");
    let out = server.dir.path().join("out");
    // Swap the stored bytes for others of the same length.
    let sha = ringfence_trust::sha256_hex(content);
    let path = crate::common::blob_file(&server, &sha);
    std::fs::write(&path, b"PAYLOAD-V2").unwrap();
    let (ok, answer) = tuf_client(
        &server,
        &md,
        &["download", "--target", "approvals/pilot/acme/app.bin", "--out-dir", out.to_str().unwrap()],
    );
    assert!(!ok);
    assert_eq!(answer["error"], "LengthOrHashMismatchError", "{answer}");
    assert!(!out.join("app.bin").exists(), "a refused file must not be written");

    // Freeze: the newest timestamp has expired and the server has not renewed it.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let (ok, answer) = tuf_client(&server, &server.dir.path().join("md2"), &["refresh"]);
    assert!(!ok);
    assert_eq!(answer["error"], "ExpiredMetadataError", "{answer}");
    // Our own trusted set refuses it too.
    let err = server.runtime.block_on(server.state.repo.self_check(ringfence_server::unix_now())).unwrap_err();
    let cause = std::error::Error::source(&err).map(|c| c.to_string()).unwrap_or_default();
    assert!(cause.contains("timestamp expired"), "{err:?}: {cause}");
}

#[test]
fn a_static_export_is_read_by_python_tuf_from_a_plain_web_server() {
    let server = Server::start(|_| {});
    let content = b"exported to a mirror\n";
    server.publish_signed("mirror.txt", content);
    assert!(server.approve("pilot", "acme/mirror.txt").contains("is published"));

    let export = server.dir.path().join("mirror");
    let out = run_ok(
        Command::new(crate::common::BIN)
            .args(["export", "--config"])
            .arg(server.data.join("ringfence.toml"))
            .arg("--static")
            .arg(&export),
    );
    assert!(out.contains("metadata files"), "{out}");
    // What the mirror holds is what the server serves, byte for byte.
    let served = server.device_client().get("/repo/metadata/timestamp.json").unwrap().ok().unwrap();
    assert_eq!(std::fs::read(export.join("repo/metadata/timestamp.json")).unwrap(), served);

    // Python's own web server, plain HTTP on loopback, and python-tuf reading through it.
    let port = crate::common::free_port();
    let mut web = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
        .arg(&export)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::common::wait_for_port(port, "the web server");
    let md = server.dir.path().join("mirror-client");
    let got = server.dir.path().join("mirror-out");
    let answer = Command::new(crate::common::python())
        .arg(crate::common::interop_script("tuf_client.py"))
        .args(["--metadata-url", &format!("http://127.0.0.1:{port}/repo/metadata/")])
        .args(["--targets-url", &format!("http://127.0.0.1:{port}/repo/targets/")])
        .arg("--root")
        .arg(server.data.join("1.root.json"))
        .arg("--metadata-dir")
        .arg(&md)
        .arg("--ca-cert")
        .arg(&server.ca)
        .args(["download", "--target", "approvals/pilot/acme/mirror.txt", "--out-dir"])
        .arg(&got)
        .output()
        .unwrap();
    let _ = web.kill();
    let _ = web.wait();
    assert!(
        answer.status.success(),
        "{}{}",
        String::from_utf8_lossy(&answer.stdout),
        String::from_utf8_lossy(&answer.stderr)
    );
    assert_eq!(std::fs::read(got.join("mirror.txt")).unwrap(), content);
}

#[test]
fn signed_text_with_control_characters_is_read_and_verified_by_python_tuf() {
    // Canonical JSON (what is signed) leaves control characters in strings raw, which no JSON
    // parser accepts; the served document escapes them, and python-tuf's signature check over
    // the canonical form of what it parsed still holds.
    let server = Server::start(|_| {});
    let work = server.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let file = work.join("notes.txt");
    std::fs::write(&file, b"release notes\n").unwrap();
    let manifest = work.join("notes.json");
    let body = serde_json::json!({
        "id": "acme-notes-1", "publisher": "acme", "title": "notes", "product": "acme-demo",
        "classification": "feature", "severity": "low", "release_date": "2026-11-26",
        "installer": {"module": "noop", "arguments": ["line one\nline two\ttabbed\u{1}end", "quote \" and \\"]}
    });
    std::fs::write(&manifest, serde_json::to_vec(&body).unwrap()).unwrap();
    run_ok(server.cli().args(["publish", "--manifest"]).arg(&manifest).arg(&file));
    server.sign_all("publisher-acme");
    assert!(server.approve("pilot", "acme/notes.txt").contains("is published"));

    let md = server.dir.path().join("client-md");
    let out = server.dir.path().join("client-out");
    let (ok, answer) =
        tuf_client(&server, &md, &["download", "--target", "acme/notes.txt", "--out-dir", out.to_str().unwrap()]);
    assert!(ok, "{answer}");
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"release notes\n");
    // The bin python-tuf stored holds the arguments as signed.
    let bin = std::fs::read_dir(&md)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("publisher.acme.") && name != "publisher.acme.json"
        })
        .expect("the publisher's bin");
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(bin).unwrap()).unwrap();
    let args = &stored["signed"]["targets"]["acme/notes.txt"]["custom"]["installer"]["arguments"];
    assert_eq!(args[0], "line one\nline two\ttabbed\u{1}end");
    assert_eq!(args[1], "quote \" and \\");
}
