//! Hostile and malformed input to the admin API: refused with the exact error, nothing changed.

use ringfence_proto::api::PendingSummary;
use ringfence_store::Store;
use serde_json::{Value, json};

use crate::common::Server;

fn counts(server: &Server) -> (u64, usize) {
    let store = &server.db;
    server.runtime.block_on(async { (store.count_updates().await.unwrap(), store.list_pending().await.unwrap().len()) })
}

fn manifest(name: &str, sha: &str, len: u64) -> Value {
    let mut m: Value = serde_json::from_str(include_str!("../../../../docs/examples/hello.manifest.json")).unwrap();
    m["files"] = json!([{"name": name, "sha256": sha, "length": len}]);
    m
}

#[test]
fn admin_api_refuses_bad_callers_and_bad_bodies() {
    let server = Server::start(|c| c.repository.max_upload_bytes = 1024);
    let admin = server.admin();

    // Authentication and scopes.
    assert_eq!(server.client(None).get("/api/v1/pending").unwrap().status, 401);
    assert_eq!(server.client(Some("rfat_0000")).get("/api/v1/pending").unwrap().status, 401);
    let created = admin
        .send_json("POST", "/api/v1/tokens", &json!({"name": "reader", "scopes": ["read"]}))
        .unwrap()
        .ok()
        .unwrap();
    let reader: Value = serde_json::from_slice(&created).unwrap();
    let reader = server.client(reader["token"].as_str());
    let pending: Vec<PendingSummary> =
        serde_json::from_slice(&reader.get("/api/v1/pending").unwrap().ok().unwrap()).unwrap();
    assert!(pending.is_empty());
    let answer = reader.send_json("POST", "/api/v1/approvals", &json!({})).unwrap();
    assert_eq!(answer.status, 403, "{}", answer.text());
    // Revoking a token ends its use at once; listing shows no secrets.
    let listed = admin.get("/api/v1/tokens").unwrap().ok().unwrap();
    assert!(!String::from_utf8_lossy(&listed).contains("rfat_"));
    let reader_id = serde_json::from_slice::<Value>(&created).unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(admin.send("DELETE", &format!("/api/v1/tokens/{reader_id}"), &[], "").unwrap().status, 204);
    assert_eq!(reader.get("/api/v1/pending").unwrap().status, 401);
    assert_eq!(admin.send("DELETE", "/api/v1/tokens/0123abcd", &[], "").unwrap().status, 404);

    // Uploads: over the cap is refused with 413 and nothing is stored; the client reads the
    // refusal (it asks `Expect: 100-continue`) rather than a reset while it still sends.
    let before = std::fs::read_dir(server.data.join("content")).map(|d| d.count()).unwrap_or(0);
    let big = vec![7u8; 4 << 20];
    let answer = admin.send("PUT", "/api/v1/content", &big, "application/octet-stream").unwrap();
    assert_eq!(answer.status, 413, "{}", answer.text());
    let file = server.data.join("big.bin");
    std::fs::write(&file, &big).unwrap();
    let answer = admin.put_file("/api/v1/content", &file).unwrap();
    assert_eq!(answer.status, 413, "{}", answer.text());
    std::fs::remove_file(&file).unwrap();
    let blobs = server.runtime.block_on(server.db.blob_length(&ringfence_trust::sha256_hex(&big))).unwrap();
    assert_eq!(blobs, None);
    assert_eq!(std::fs::read_dir(server.data.join("content")).map(|d| d.count()).unwrap_or(0), before);
    let ok = admin.send("PUT", "/api/v1/content", b"small", "application/octet-stream").unwrap();
    assert_eq!(ok.status, 201, "{}", ok.text());
    let sha = ringfence_trust::sha256_hex(b"small");

    let initial = counts(&server);
    let refuse = |body: Vec<u8>, needle: &str| {
        let answer = admin.send("POST", "/api/v1/updates", &body, "application/json").unwrap();
        assert_eq!(answer.status, 400, "{}", answer.text());
        assert!(answer.text().contains(needle), "expected {needle:?} in {}", answer.text());
        assert_eq!(counts(&server), initial, "a refused request changed state");
    };
    // Unknown field and wrong type: 400 naming the field.
    let mut m = manifest("ok.bin", &sha, 5);
    m["$type"] = json!("System.Windows.Data.ObjectDataProvider");
    refuse(serde_json::to_vec(&m).unwrap(), "unknown field `$type`");
    let mut m = manifest("ok.bin", &sha, 5);
    m["severity"] = json!(3);
    refuse(serde_json::to_vec(&m).unwrap(), "field `severity`");
    let mut m = manifest("ok.bin", &sha, 5);
    m["title"] = json!(["not", "a", "string"]);
    refuse(serde_json::to_vec(&m).unwrap(), "field `title`: invalid type: sequence, expected a string");
    // Serialized-object payloads: a .NET BinaryFormatter header and a SOAP envelope.
    let mut binary_formatter = vec![0x00, 0x01, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00];
    binary_formatter.extend_from_slice(b"\x0c\x02\x00\x00\x00System.Data, Version=4.0.0.0");
    refuse(binary_formatter, "invalid body");
    refuse(
        br#"<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"><SOAP-ENV:Body><ReportEventBatch/></SOAP-ENV:Body></SOAP-ENV:Envelope>"#.to_vec(),
        "invalid body",
    );
    // Deep nesting is refused before parsing.
    refuse(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(), "nested deeper");
    // Target paths: traversal and non-ASCII are refused at publish with a clear error.
    refuse(serde_json::to_vec(&manifest("../etc/passwd", &sha, 5)).unwrap(), "file name");
    refuse(serde_json::to_vec(&manifest("..", &sha, 5)).unwrap(), "must not start with '.'");
    refuse(serde_json::to_vec(&manifest("caf\u{e9}.bin", &sha, 5)).unwrap(), "target path contains");
    // A file whose content was never uploaded.
    refuse(serde_json::to_vec(&manifest("ok.bin", &"ab".repeat(32), 5)).unwrap(), "no uploaded content");

    // The same manifest, well-formed, is accepted.
    let answer = admin.send_json("POST", "/api/v1/updates", &manifest("ok.bin", &sha, 5)).unwrap();
    assert_eq!(answer.status, 201, "{}", answer.text());
    // Publishing the same path again is a conflict.
    let mut again = manifest("ok.bin", &sha, 5);
    again["id"] = json!("other-id");
    assert_eq!(admin.send_json("POST", "/api/v1/updates", &again).unwrap().status, 409);
}

#[test]
fn device_listener_has_no_admin_routes_and_refuses_bad_paths() {
    let server = Server::start(|_| {});
    let agent =
        ringfence_cli::http::Client::new(&server.repo_url.replace("/repo", ""), Some(server.token.clone()), &server.ca)
            .unwrap();
    for path in [
        "/api/v1/pending",
        "/api/v1/health",
        "/repo/metadata/..%2F..%2Fetc%2Fpasswd",
        "/repo/targets/../ringfence.db",
        "/repo/metadata/1.nonsense.json",
    ] {
        assert_eq!(agent.get(path).unwrap().status, 404, "{path}");
    }
    // Content in the store that was never published is not served, even by its hash.
    let secret = b"uploaded, never published";
    assert_eq!(server.admin().send("PUT", "/api/v1/content", secret, "application/octet-stream").unwrap().status, 201);
    let sha = ringfence_trust::sha256_hex(secret);
    assert_eq!(agent.get(&format!("/repo/targets/acme/{sha}.secret.bin")).unwrap().status, 404);
    assert_eq!(agent.get(&format!("/repo/targets/{sha}.secret.bin")).unwrap().status, 404);
    let ts = agent.get("/repo/metadata/timestamp.json").unwrap();
    assert_eq!(ts.status, 200);
    let root = agent.get("/repo/metadata/1.root.json").unwrap();
    assert_eq!(root.body, std::fs::read(server.data.join("1.root.json")).unwrap());
}

#[test]
fn serve_applies_the_root_rule_to_the_user_it_runs_as() {
    // The rule itself is unit-tested for both users (`ringfence_server::may_run_as`). Here the
    // binary applies it: as root (how CI runs) `serve` must refuse without `allow_root`, and
    // with it the same configuration gets past the check. (Run unprivileged, `serve` would
    // start and serve: the binary half then needs a root run.)
    use std::os::unix::fs::MetadataExt;
    let euid = std::fs::metadata("/proc/self").unwrap().uid();
    let dir = tempfile::tempdir().unwrap();
    crate::common::run_ok(
        std::process::Command::new(crate::common::BIN)
            .args(["quickstart", "--no-serve", "--device-addr", "127.0.0.1:1", "--admin-addr", "127.0.0.1:1", "--dir"])
            .arg(dir.path()),
    );
    let config = dir.path().join("ringfence-data/ringfence.toml");
    let serve = |allow: Option<&str>| {
        let mut c = std::process::Command::new(crate::common::BIN);
        c.args(["serve", "--config"]).arg(&config).env_remove("RINGFENCE_ALLOW_ROOT");
        if let Some(v) = allow {
            c.env("RINGFENCE_ALLOW_ROOT", v);
        }
        let out = c.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    if ringfence_server::may_run_as(euid, false).is_err() {
        let (ok, stderr) = serve(None);
        assert!(!ok);
        assert!(stderr.contains("refusing to run as root"), "{stderr}");
        // Allowed: past the check, it then fails to bind (both listeners on one port).
        let (ok, stderr) = serve(Some("1"));
        assert!(!ok, "{stderr}");
        assert!(!stderr.contains("refusing to run as root"), "{stderr}");
    }
}

#[test]
fn targets_are_served_with_ranges_strong_etags_and_immutable_caching() {
    let server = Server::start(|_| {});
    let content = b"0123456789abcdef";
    server.publish_signed("range.bin", content);
    let sha = ringfence_trust::sha256_hex(content);
    let device = ringfence_cli::http::Client::new(&server.repo_url, None, &server.ca).unwrap();
    let path = format!("/targets/acme/{sha}.range.bin");
    let full = device.get(&path).unwrap();
    assert_eq!(full.status, 200);
    assert_eq!(full.body, content);
    let etag = format!("\"{sha}\"");
    assert_eq!(full.header("etag"), Some(etag.as_str()));
    assert!(full.header("cache-control").unwrap().contains("immutable"));
    assert_eq!(full.header("accept-ranges"), Some("bytes"));

    let part = device.get_with(&path, &[("range", "bytes=2-5")]).unwrap();
    assert_eq!(part.status, 206);
    assert_eq!(part.body, b"2345");
    assert_eq!(part.header("content-range"), Some("bytes 2-5/16"));
    let tail = device.get_with(&path, &[("range", "bytes=-3")]).unwrap();
    assert_eq!(tail.body, b"def");
    let bad = device.get_with(&path, &[("range", "bytes=99-")]).unwrap();
    assert_eq!(bad.status, 416);
    assert_eq!(bad.header("content-range"), Some("bytes */16"));
    assert_eq!(device.get_with(&path, &[("if-none-match", &etag)]).unwrap().status, 304);

    // Versioned metadata is immutable; timestamp.json is revalidated.
    assert!(device.get("/metadata/1.root.json").unwrap().header("cache-control").unwrap().contains("immutable"));
    assert!(device.get("/metadata/timestamp.json").unwrap().header("cache-control").unwrap().contains("no-cache"));
    // The same bytes under another hash or name are not found.
    assert_eq!(device.get(&format!("/targets/acme/{}.range.bin", "0".repeat(64))).unwrap().status, 404);
    assert_eq!(device.get(&format!("/targets/acme/{sha}.other.bin")).unwrap().status, 404);
}

#[test]
fn admin_listings_are_paged_and_their_queries_checked() {
    let server = Server::start(|_| {});
    for name in ["a.bin", "b.bin", "c.bin"] {
        server.publish_signed(name, name.as_bytes());
    }
    let admin = server.admin();
    let get = |path: &str| -> Vec<Value> { serde_json::from_slice(&admin.get(path).unwrap().ok().unwrap()).unwrap() };
    let first = get("/api/v1/updates?limit=2");
    assert_eq!(first.len(), 2);
    let rest = get(&format!("/api/v1/updates?limit=2&after={}", first[1]["id"].as_str().unwrap()));
    assert_eq!(rest.len(), 1);
    assert_ne!(rest[0]["id"], first[0]["id"]);
    for bad in ["limit=0", "limit=1001", "limit=x", "bogus=1", "after=%00"] {
        let answer = admin.get(&format!("/api/v1/updates?{bad}")).unwrap();
        assert_eq!(answer.status, 400, "{bad}: {}", answer.text());
    }
    let newest = get("/api/v1/audit?limit=2");
    assert_eq!(newest.len(), 2);
    let older = get(&format!("/api/v1/audit?limit=2&before={}", newest[1]["seq"]));
    assert!(older[0]["seq"].as_i64() < newest[1]["seq"].as_i64());
    assert_eq!(admin.get("/api/v1/audit?before=x").unwrap().status, 400);
    assert_eq!(admin.get("/api/v1/devices?state=lost").unwrap().status, 400);
}

#[test]
fn the_audit_trail_names_who_did_what() {
    let server = Server::start(|_| {});
    let admin = server.admin();
    let created: Value = serde_json::from_slice(
        &admin
            .send_json("POST", "/api/v1/tokens", &json!({"name": "ci-publisher", "scopes": ["publish", "approve"]}))
            .unwrap()
            .ok()
            .unwrap(),
    )
    .unwrap();
    let ci = server.client(Some(created["token"].as_str().unwrap()));
    let sha = ringfence_trust::sha256_hex(b"audited");
    let answer = ci.send("PUT", "/api/v1/content", b"audited", "application/octet-stream").unwrap();
    assert_eq!(answer.status, 201, "{}", answer.text());
    assert_eq!(ci.send_json("POST", "/api/v1/updates", &manifest("audited.bin", &sha, 7)).unwrap().status, 201);
    server.sign_all("publisher-acme");
    let approval = json!({"group": "pilot", "target": "acme/audited.bin", "action": "install"});
    assert_eq!(ci.send_json("POST", "/api/v1/approvals", &approval).unwrap().status, 200);
    let trail: Vec<Value> =
        serde_json::from_slice(&admin.get("/api/v1/audit?limit=50").unwrap().ok().unwrap()).unwrap();
    let by = |action: &str| -> Vec<String> {
        trail.iter().filter(|r| r["action"] == action).map(|r| r["actor"].as_str().unwrap().to_owned()).collect()
    };
    let ci_actor = format!("ci-publisher (token {})", created["id"].as_str().unwrap());
    assert_eq!(by("upload"), std::slice::from_ref(&ci_actor));
    assert_eq!(by("publish"), std::slice::from_ref(&ci_actor));
    assert_eq!(by("approve"), [ci_actor]);
    assert!(by("sign").iter().all(|a| a.contains("(token ") && !a.contains("ci-publisher")), "{:?}", by("sign"));
    assert!(!by("sign").is_empty());
    // The first admin token is issued by `setup`; every later one by a token.
    let tokens = by("token");
    assert_eq!(tokens.last().map(String::as_str), Some("setup"), "{tokens:?}");
    assert!(tokens[..tokens.len() - 1].iter().all(|a| a.contains("(token ")), "{tokens:?}");
    assert!(tokens.len() >= 2, "{tokens:?}");
    // The same trail for people, a page at a time.
    let page = crate::common::run_ok(server.cli().args(["audit", "--limit", "2"]));
    assert!(
        page.contains("ACTOR") && page.contains("approve") && page.contains("next: ringfence audit --before"),
        "{page}"
    );
    let before = page.lines().last().unwrap().rsplit(' ').next().unwrap().to_owned();
    let older = crate::common::run_ok(server.cli().args(["audit", "--limit", "2", "--before", &before]));
    let seqs = |text: &str| -> Vec<i64> {
        text.lines().skip(1).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect()
    };
    assert!(seqs(&older).iter().all(|s| *s < before.parse::<i64>().unwrap()), "{older}");
    assert_eq!(seqs(&older).len(), 2, "{older}");
}

#[test]
fn publish_tells_people_what_happens_next_and_scripts_get_json() {
    let server = Server::start(|_| {});
    let work = server.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("note.txt"), b"for people").unwrap();
    let mut m = manifest("unused", &"0".repeat(64), 1);
    m.as_object_mut().unwrap().remove("files");
    m["id"] = json!("acme-note");
    std::fs::write(work.join("m.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let out = crate::common::run_ok(
        server.cli().args(["publish", "--manifest"]).arg(work.join("m.json")).arg(work.join("note.txt")),
    );
    assert!(out.starts_with("update acme-note (1 file(s)): acme/note.txt\n"), "{out}");
    assert!(out.contains("waits for its publisher's signature"), "{out}");
    assert!(out.contains("ringfence pending sign-all --key"), "{out}");
    assert!(!out.contains('{'), "no JSON for people: {out}");
}

#[test]
fn token_commands_print_tables_for_people_and_json_for_scripts() {
    let server = Server::start(|_| {});
    let run = |args: &[&str]| crate::common::run_ok(server.cli().args(args));
    // The secret alone on standard output, so `TOKEN=$(ringfence token create ...)` works.
    let secret = run(&["token", "create", "--name", "reporting", "--scope", "read"]);
    assert!(secret.trim().starts_with("rfat_") && secret.trim().lines().count() == 1, "{secret}");
    let table = run(&["token", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID ") && lines[0].contains("NAME") && lines[0].ends_with("STATE"), "{table}");
    // Aligned: every row's NAME starts in the header's NAME column.
    let name_at = lines[0].find("NAME").unwrap();
    assert!(lines[1..].iter().all(|l| l.get(name_at - 2..name_at) == Some("  ")), "{table}");
    assert!(lines.iter().any(|l| l.contains("reporting") && l.ends_with("active")), "{table}");

    let listed: Vec<Value> = serde_json::from_str(&run(&["token", "list", "--json"])).unwrap();
    let id = listed.iter().find(|t| t["name"] == "reporting").unwrap()["id"].as_str().unwrap().to_owned();
    assert!(run(&["token", "revoke", &id]).contains("revoked"));
    let listed: Vec<Value> = serde_json::from_str(&run(&["token", "list", "--json"])).unwrap();
    assert_eq!(listed.iter().find(|t| t["id"] == id.as_str()).unwrap()["revoked"], true);
    assert_eq!(server.client(Some(secret.trim())).get("/api/v1/updates").unwrap().status, 401);

    let devices: Vec<Value> = serde_json::from_str(&run(&["device", "list", "--json"])).unwrap();
    assert!(devices.is_empty(), "{devices:?}");
    assert_eq!(run(&["device", "list"]).trim(), "no devices");
}

/// Tokens expire (90 days unless chosen, at most 730) and are rotated without downtime: the
/// new token works at once, the old one until its grace period ends, then neither it nor a
/// console session it opened is accepted.
#[test]
fn admin_tokens_expire_and_rotate_without_downtime() {
    let server = Server::start(|_| {});
    let run = |args: &[&str]| crate::common::run_ok(server.cli().args(args));
    let now = ringfence_server::unix_now();
    let created: Value =
        serde_json::from_str(&run(&["token", "create", "--name", "ci", "--scope", "read", "--json"])).unwrap();
    let expires = created["expires_at"].as_i64().unwrap();
    assert!((expires - now - 90 * 86_400).abs() < 120, "the default lifetime is 90 days: {created}");
    let short: Value =
        serde_json::from_str(&run(&["token", "create", "--name", "short", "--scope", "read", "--days", "1", "--json"]))
            .unwrap();
    assert!((short["expires_at"].as_i64().unwrap() - now - 86_400).abs() < 120, "{short}");
    for days in ["0", "731"] {
        let out =
            server.cli().args(["token", "create", "--name", "x", "--scope", "read", "--days", days]).output().unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("expires_in_days: 1 to 730"), "{out:?}");
    }
    let table = run(&["token", "list"]);
    assert!(table.lines().next().unwrap().contains("EXPIRES"), "{table}");
    // The console's dashboard tells an administrator which tokens end within two weeks.
    let admin_session = server.runtime.block_on(server.state.console.login(&server.token, now)).unwrap().0;
    let agent = ringfence_cli::http::agent(&std::fs::read(&server.ca).unwrap()).unwrap();
    let dashboard = agent
        .get(&format!("{}/console/", server.admin_url))
        .header("cookie", &format!("{}={admin_session}", ringfence_server::console::COOKIE))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let short_id = short["id"].as_str().unwrap();
    assert!(dashboard.contains(&format!("ringfence token rotate {short_id}")), "{dashboard}");
    assert!(!dashboard.contains(&format!("ringfence token rotate {}", created["id"].as_str().unwrap())));

    // An expired token is refused, by the API and the console alike.
    let secret = short["token"].as_str().unwrap().to_owned();
    let client = server.client(Some(&secret));
    assert_eq!(client.get("/api/v1/updates").unwrap().status, 200);
    let session = server.runtime.block_on(server.state.console.login(&secret, now)).unwrap().0;
    let id = short["id"].as_str().unwrap();
    crate::common::sql(&server, &format!("UPDATE api_tokens SET expires_at = {} WHERE id = '{id}'", now - 1));
    assert_eq!(client.get("/api/v1/updates").unwrap().status, 401);
    assert!(server.runtime.block_on(server.state.console.session(&session, now)).is_err(), "its session ended");
    assert!(server.runtime.block_on(server.state.console.login(&secret, now)).is_err());
    // Nor is it rotated: an expired token is replaced by creating a new one.
    let out = server.cli().args(["token", "rotate", id]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("revoked or expired"), "{out:?}");
    assert!(run(&["token", "list"]).lines().any(|l| l.contains("short") && l.ends_with("expired")));

    // Rotation: a new secret with the same name and scopes; the old one works until the grace
    // period ends, then is refused.
    let old_secret = created["token"].as_str().unwrap().to_owned();
    let old_id = created["id"].as_str().unwrap().to_owned();
    let rotated: Value =
        serde_json::from_str(&run(&["token", "rotate", &old_id, "--grace-minutes", "30", "--json"])).unwrap();
    assert_ne!(rotated["token"], created["token"]);
    assert_eq!(rotated["scopes"], json!(["read"]));
    let new_client = server.client(rotated["token"].as_str());
    assert_eq!(new_client.get("/api/v1/updates").unwrap().status, 200);
    let old_client = server.client(Some(&old_secret));
    assert_eq!(old_client.get("/api/v1/updates").unwrap().status, 200, "within the grace period");
    let listed: Vec<Value> = serde_json::from_str(&run(&["token", "list", "--json"])).unwrap();
    let old = listed.iter().find(|t| t["id"] == old_id.as_str()).unwrap();
    let ends = old["expires_at"].as_i64().unwrap();
    assert!((ends - now - 30 * 60).abs() < 120, "the old token ends 30 minutes from now: {old}");
    assert!(listed.iter().any(|t| t["name"] == "ci" && t["id"] == rotated["id"]));
    // The grace period passes.
    crate::common::sql(&server, &format!("UPDATE api_tokens SET expires_at = {} WHERE id = '{old_id}'", now - 1));
    assert_eq!(old_client.get("/api/v1/updates").unwrap().status, 401);
    assert_eq!(new_client.get("/api/v1/updates").unwrap().status, 200);
    // A rotation never lengthens a token's life, and needs the admin scope.
    let bad = server
        .admin()
        .send_json("POST", &format!("/api/v1/tokens/{old_id}/rotate"), &json!({"grace_minutes": 99999}))
        .unwrap();
    assert_eq!(bad.status, 400);
    let refused = new_client
        .send_json("POST", &format!("/api/v1/tokens/{}/rotate", rotated["id"].as_str().unwrap()), &json!({}))
        .unwrap();
    assert_eq!(refused.status, 403);
    let audit = run(&["audit"]);
    assert!(audit.contains(&format!("rotated token {old_id} (ci)")), "{audit}");

    // Locked out (every admin token expired or revoked): the server's own machine recovers.
    let out = std::process::Command::new(crate::common::BIN)
        .args(["recover-admin-token", "--config"])
        .arg(server.data.join("ringfence.toml"))
        .args(["--days", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let recovered = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(recovered.starts_with("rfat_"));
    let admin = server.client(Some(&recovered));
    assert_eq!(admin.get("/api/v1/tokens").unwrap().status, 200, "every scope");
    assert!(run(&["audit"]).contains("local recovery"));
}

/// `/metrics` answers a token with the `read` scope in the OpenMetrics text format, which the
/// Prometheus project's own parser reads; the figures follow what happened: a device's
/// check-in and report, its state, requests by route (a scanner's paths counted as
/// `unmatched`), job runs, every role's time to expiry.
#[test]
fn metrics_are_scraped_with_a_read_token_and_read_by_the_prometheus_parser() {
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let agent = crate::agents::enroll(&server, &root, "m-1", "pilot", &crate::agents::token(&server, "pilot", 1));
    crate::agents::publish_script(&server, "kb-m");
    assert!(server.approve("pilot", "acme/kb-m.sh").contains("is published"));
    let (code, out) = agent.check();
    assert_eq!(code, 0, "{out}");
    let device = server.device_client();
    assert_eq!(device.get("/no/such/../path").unwrap().status, 404);
    assert_eq!(device.get("/wp-login.php").unwrap().status, 404);

    assert_eq!(server.client(None).get("/metrics").unwrap().status, 401);
    let created: Value = serde_json::from_slice(
        &server
            .admin()
            .send_json("POST", "/api/v1/tokens", &json!({"name": "prometheus", "scopes": ["read"]}))
            .unwrap()
            .ok()
            .unwrap(),
    )
    .unwrap();
    let scraper = server.client(created["token"].as_str());
    // The job loop's first pass runs at start, and check-ins are written behind (within a
    // second): wait (at most 10 s) until both are counted.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let samples = loop {
        let answer = scraper.get("/metrics").unwrap();
        assert_eq!(answer.status, 200);
        assert!(answer.header("content-type").unwrap().starts_with("application/openmetrics-text"));
        let mut parse = std::process::Command::new(crate::common::python())
            .arg(crate::common::interop_script("parse_metrics.py"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        parse.stdin.take().unwrap().write_all(&answer.body).unwrap();
        let out = parse.wait_with_output().unwrap();
        assert!(out.status.success(), "prometheus_client refused it: {}", String::from_utf8_lossy(&out.stderr));
        let samples: Vec<(String, std::collections::BTreeMap<String, String>, f64)> =
            serde_json::from_slice(&out.stdout).unwrap();
        let jobs_ran = samples.iter().any(|(n, l, v)| {
            n == "ringfence_job_runs_total" && l.get("job").map(String::as_str) == Some("renew") && *v >= 1.0
        });
        let seen = samples.iter().any(|(n, _, v)| n == "ringfence_devices_seen_24h" && *v >= 1.0);
        if (jobs_ran && seen) || std::time::Instant::now() > deadline {
            break samples;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.2)
    };
    assert!(value("ringfence_device_checkins_total", &[]).unwrap() >= 1.0);
    assert!(value("ringfence_reports_ingested_total", &[]).unwrap() >= 1.0);
    assert_eq!(value("ringfence_devices", &[("state", "accepted")]), Some(1.0));
    assert_eq!(value("ringfence_devices_seen_24h", &[]), Some(1.0));
    assert_eq!(value("ringfence_job_runs_total", &[("job", "renew"), ("outcome", "ok")]).map(|v| v >= 1.0), Some(true));
    let timestamp = value("ringfence_role_expiry_seconds", &[("role", "timestamp")]).unwrap();
    assert!(timestamp > 0.0, "{timestamp}");
    assert!(value("ringfence_log_entries", &[]).unwrap() > 0.0);
    let checkins = value(
        "ringfence_http_requests_total",
        &[("listener", "device"), ("route", "/device/v1/checkin"), ("status", "200")],
    );
    assert!(checkins.unwrap() >= 1.0);
    assert_eq!(
        value("ringfence_http_requests_total", &[("listener", "device"), ("route", "unmatched"), ("status", "404")]),
        Some(2.0),
        "a scanner's paths are one series"
    );
    assert!(!samples.iter().any(|(_, l, _)| l.values().any(|v| v.contains("wp-login"))));
    assert!(
        value("ringfence_http_request_duration_seconds_count", &[("listener", "admin"), ("route", "/metrics")])
            .is_some_and(|n| n >= 1.0)
    );
}

#[test]
fn publishing_an_update_again_finishes_an_interrupted_publish_and_changes_nothing_else() {
    let server = Server::start(|_| {});
    let work = server.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let publish = |id: &str, title: &str| {
        std::fs::write(work.join(format!("{id}.txt")), id.as_bytes()).unwrap();
        let mut m = manifest("unused", &"0".repeat(64), 1);
        m.as_object_mut().unwrap().remove("files");
        m["id"] = json!(id);
        m["title"] = json!(title);
        std::fs::write(work.join(format!("{id}.json")), serde_json::to_vec(&m).unwrap()).unwrap();
        server
            .cli()
            .args(["publish", "--json", "--manifest"])
            .arg(work.join(format!("{id}.json")))
            .arg(work.join(format!("{id}.txt")))
            .output()
            .unwrap()
    };
    let outcome = |out: &std::process::Output| -> Value {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };

    // The answer to a publish was lost: the same manifest again is answered with the same
    // pending version, and no new version is made.
    let first = outcome(&publish("acme-note", "Note"));
    assert_eq!(counts(&server), (1, 1));
    let again = outcome(&publish("acme-note", "Note"));
    assert_eq!(again["pending"], first["pending"], "{again}");
    assert_eq!(again["targets"], first["targets"], "{again}");
    assert_eq!(counts(&server), (1, 1), "nothing new");

    // Another manifest under a taken id is refused, and changes nothing.
    let other = publish("acme-note", "Another note");
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("already exists with another manifest"));
    assert_eq!(counts(&server), (1, 1));

    // A node died after recording an update and before signing its bin (simulated by recording
    // it directly): publishing it again puts it into its bin.
    std::fs::write(work.join("acme-torn.txt"), b"torn").unwrap();
    let sha = ringfence_trust::sha256_hex(b"torn");
    let mut m = manifest("acme-torn.txt", &sha, 4);
    m["id"] = json!("acme-torn");
    let parsed: ringfence_proto::api::UpdateManifest = serde_json::from_value(m.clone()).unwrap();
    let record = ringfence_store::UpdateRecord {
        id: "acme-torn".into(),
        publisher: "acme".into(),
        manifest: serde_json::to_string(&parsed).unwrap(),
        created_at: 0,
    };
    let file = ringfence_store::UpdateFileRecord {
        update_id: "acme-torn".into(),
        target_path: "acme/acme-torn.txt".into(),
        sha256: sha.clone(),
        length: 4,
    };
    let db = &server.db;
    server.runtime.block_on(async {
        db.insert_blob(&sha, 4, 0).await.unwrap();
        db.insert_update(&record, &[file], &[]).await.unwrap();
    });
    std::fs::write(work.join("acme-torn.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let out = server
        .cli()
        .args(["publish", "--json", "--manifest"])
        .arg(work.join("acme-torn.json"))
        .arg(work.join("acme-torn.txt"))
        .output()
        .unwrap();
    let finished = outcome(&out);
    assert_eq!(finished["targets"], json!(["acme/acme-torn.txt"]), "{finished}");
    let role = finished["pending"][0]["role"].as_str().unwrap().to_owned();
    let pending = server.runtime.block_on(db.pending(&role)).unwrap().expect("the bin waits for a signature");
    let doc: Value = serde_json::from_slice(&pending.bytes).unwrap();
    assert_eq!(doc["signed"]["targets"]["acme/acme-torn.txt"]["hashes"]["sha256"], json!(sha), "{doc}");
}

#[test]
fn errors_reach_the_terminal_with_control_characters_written_out() {
    // Error text can come from a server or a document; an escape sequence in it is shown, not run.
    let out = std::process::Command::new(crate::common::BIN)
        .env("RINGFENCE_TOKEN", "x")
        .env("RINGFENCE_CA", "/nonexistent/ca\u{1b}[2J\u{202e}.pem")
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .args(["publish", "--manifest", "/nonexistent.json", "/nonexistent.bin"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("Error: "), "{stderr}");
    assert!(stderr.contains("ca\\u{1b}[2J\\u{202e}.pem"), "{stderr}");
    assert!(!stderr.contains('\u{1b}') && !stderr.contains('\u{202e}'), "{stderr:?}");
}
