//! Publishing one update into catalogs of 1k, 10k and 100k updates: wall time and bytes of
//! metadata re-signed and rewritten. Run with `cargo bench -p ringfence --bench publish`.
//!
//! Each catalog is a real SQLite repository whose publisher (`acme`, 256 hashed bins, key
//! online so that publishing signs at once) already lists N targets. Every sample publishes
//! one new update through `Repository::publish_update`, the code behind `POST /api/v1/updates`.

// A harness, not product code: a failed step is a failed test or measurement.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Instant;

use ringfence_cli::ceremony::{self, TopLevelKeys};
use ringfence_proto::api::{Applicability, Classification, Installer, Severity, UpdateFile, UpdateManifest};
use ringfence_proto::{PublisherName, RoleName, Sha256Hex};
use ringfence_server::Config;
use ringfence_trust::writer::{self, RoleKeySet};
use ringfence_trust::{Envelope, SigningKey};

const SAMPLES: usize = 21;
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

/// What one catalog size measured.
struct Measured {
    durable: Vec<f64>,
    in_memory: Vec<f64>,
    rewritten: usize,
    snapshot: usize,
    files: usize,
    refreshes: Vec<Refresh>,
}

/// One client's refresh to an update published after its last refresh.
struct Refresh {
    client: &'static str,
    ms: f64,
    /// Bytes of the metadata files the refresh wrote (new or changed).
    bytes: u64,
    files: usize,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let baseline = python_tuf();
    let mut rows = Vec::new();
    for n in SIZES {
        rows.push((n, runtime.block_on(bench(n))));
    }
    println!(
        "| catalog | durable publish median (ms) | min | max | metadata rewritten (bytes) | of which snapshot | files rewritten |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (n, m) in &rows {
        let (median, min, max) = stats(&m.durable);
        println!("| {n} | {median:.2} | {min:.2} | {max:.2} | {} | {} | {} |", m.rewritten, m.snapshot, m.files);
    }
    println!();
    println!(
        "| catalog | Ringfence in memory median (ms) | python-tuf Metadata API median (ms) | python-tuf / Ringfence | python-tuf bytes |"
    );
    println!("|---|---|---|---|---|");
    for (n, m) in &rows {
        let (ours, _, _) = stats(&m.in_memory);
        match baseline.iter().find(|b| b.0 == *n) {
            Some((_, theirs, bytes)) => println!("| {n} | {ours:.3} | {theirs:.3} | {:.1}× | {bytes} |", theirs / ours),
            None => println!("| {n} | {ours:.3} | (python-tuf not run) | - | - |"),
        }
    }
    println!();
    println!(
        "| catalog | client | refresh and download of the new update (ms, whole process) | metadata fetched (bytes) | files |"
    );
    println!("|---|---|---|---|---|");
    for (n, m) in &rows {
        for r in &m.refreshes {
            println!("| {n} | {} | {:.0} | {} | {} |", r.client, r.ms, r.bytes, r.files);
        }
    }
    if let Some(ms) = python_start() {
        println!("(of python-tuf's time, starting Python and importing tuf.ngclient alone: {ms:.0} ms)");
    }
}

fn python() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::var_os("RINGFENCE_PYTHON").map_or(root.join(".venv/bin/python"), Into::into)
}

/// Milliseconds to start Python and import ngclient (median of 5).
fn python_start() -> Option<f64> {
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let ok = std::process::Command::new(python()).args(["-c", "import tuf.ngclient"]).status().ok()?.success();
        if !ok {
            return None;
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Some(stats(&times).0)
}

/// The agent binary of this build (`cargo build --release -p ringfence-agent`), if built.
fn agent() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("ringfence-agent");
    path.exists().then_some(path)
}

/// Files in `dir` with their length and modification time.
fn listing(dir: &std::path::Path) -> std::collections::BTreeMap<String, (u64, std::time::SystemTime)> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(meta) = entry.metadata()
            && meta.is_file()
        {
            out.insert(entry.file_name().to_string_lossy().into_owned(), (meta.len(), meta.modified().expect("mtime")));
        }
    }
    out
}

/// Run `command` (a client refreshing into `metadata_dir`): its wall time and the metadata
/// files it wrote.
fn refresh(client: &'static str, metadata_dir: &std::path::Path, command: &mut std::process::Command) -> Refresh {
    let before = listing(metadata_dir);
    let started = Instant::now();
    let out = command.output().expect("client");
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    assert!(
        out.status.success(),
        "{client}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let changed: Vec<u64> = listing(metadata_dir)
        .into_iter()
        .filter(|(name, now)| before.get(name) != Some(now))
        .map(|(_, (len, _))| len)
        .collect();
    Refresh { client, ms, bytes: changed.iter().sum(), files: changed.len() }
}

/// Both clients, each from a metadata directory that was current before the last publish,
/// refresh and download `target` from the server at `base`.
fn client_refreshes(
    base: &str,
    ca: &std::path::Path,
    root: &std::path::Path,
    work: &std::path::Path,
    target: Option<&str>,
) -> Vec<Refresh> {
    let mut out = Vec::new();
    let py_dir = work.join("python-tuf");
    let agent_dir = work.join("agent");
    std::fs::create_dir_all(&py_dir).expect("mkdir");
    let mut py = std::process::Command::new(python());
    py.arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/tuf_client.py"))
        .args(["--metadata-url", &format!("{base}/repo/metadata/"), "--targets-url", &format!("{base}/repo/targets/")])
        .arg("--root")
        .arg(root)
        .arg("--metadata-dir")
        .arg(&py_dir)
        .arg("--ca-cert")
        .arg(ca);
    match target {
        Some(t) => py.args(["download", "--target", t, "--out-dir"]).arg(work.join("python-out")),
        None => py.arg("refresh"),
    };
    out.push(refresh("python-tuf ngclient", &py_dir, &mut py));
    if let Some(agent) = agent() {
        if target.is_none() {
            let init = std::process::Command::new(&agent)
                .arg("tuf")
                .arg("--metadata-dir")
                .arg(&agent_dir)
                .arg("init")
                .arg(root)
                .output()
                .expect("agent");
            assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
        }
        let mut a = std::process::Command::new(&agent);
        a.arg("tuf")
            .arg("--metadata-dir")
            .arg(&agent_dir)
            .arg("--ca")
            .arg(ca)
            .args([
                "--metadata-url",
                &format!("{base}/repo/metadata/"),
                "--target-base-url",
                &format!("{base}/repo/targets/"),
            ])
            .arg("--target-dir")
            .arg(work.join("agent-out"));
        match target {
            Some(t) => a.args(["--target-name", t, "download"]),
            None => a.arg("refresh"),
        };
        out.push(refresh("Ringfence agent", &agent_dir, &mut a));
    } else {
        eprintln!("the agent's refresh not measured: build it first (cargo build --release -p ringfence-agent)");
    }
    out
}

/// Median, min, max of samples.
fn stats(samples: &[f64]) -> (f64, f64, f64) {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

/// python-tuf's Metadata API doing the same edit (tests/interop/maintenance_bench.py), run
/// first in this invocation: (catalog, median ms, bytes written) per size. Empty when the
/// interop virtual environment is missing (`scripts/test` or `scripts/bench` creates it).
fn python_tuf() -> Vec<(usize, f64, u64)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var_os("RINGFENCE_PYTHON").map_or(root.join(".venv/bin/python"), Into::into);
    let sizes = SIZES.map(|n| n.to_string()).join(",");
    let out = std::process::Command::new(&python)
        .arg(root.join("tests/interop/maintenance_bench.py"))
        .args([sizes, SAMPLES.to_string()])
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => panic!("python-tuf baseline failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("python-tuf baseline not run ({}: {e})", python.display());
            return Vec::new();
        }
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("baseline line");
            (
                v["catalog"].as_u64().expect("catalog") as usize,
                v["median_ms"].as_f64().expect("median"),
                v["bytes"].as_u64().expect("bytes"),
            )
        })
        .collect()
}

async fn bench(n: usize) -> Measured {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::with_data_dir(dir.path().to_path_buf());
    config.device_listener.addr = "127.0.0.1:0".into();
    config.admin_listener.addr = "127.0.0.1:0".into();
    let online = config.online_key_dir();
    std::fs::create_dir_all(&online).expect("mkdir");
    let (timestamp, snapshot, publisher) = (SigningKey::generate(), SigningKey::generate(), SigningKey::generate());
    for (file, key) in [("timestamp.key", &timestamp), ("snapshot.key", &snapshot), ("publisher-acme.key", &publisher)]
    {
        std::fs::write(online.join(file), key.to_unencrypted_pem().expect("pem")).expect("write key");
    }
    let (root_key, targets_key) = (SigningKey::generate(), SigningKey::generate());
    let one = |k: &SigningKey| RoleKeySet::new(vec![k.public()], 1);
    let now = ringfence_server::unix_now();
    let expires = now + 365 * 86_400;
    let top = TopLevelKeys {
        root: one(&root_key),
        targets: one(&targets_key),
        snapshot: one(&snapshot),
        timestamp: one(&timestamp),
    };
    let mut root = ceremony::root(1, expires, &top).expect("root");
    root.sign(&root_key);
    let acme = PublisherName::parse("acme").expect("name");
    let mut targets = writer::targets(1, expires);
    ceremony::add_publisher(&mut targets, &acme, &one(&publisher));
    let mut targets = Envelope::new(targets).expect("targets");
    targets.sign(&targets_key);

    // The publisher role and its bins, pre-filled with n targets.
    let content = b"benchmark payload";
    let sha = Sha256Hex::parse(&ringfence_trust::sha256_hex(content)).expect("sha");
    let mut roles = vec![(RoleName::targets(), targets.to_bytes().expect("bytes"))];
    let mut bins = ceremony::publisher_roles(&acme, &one(&publisher), &[], expires).expect("roles");
    for i in 0..n {
        let path = format!("acme/existing-{i}.bin");
        let prefix = ringfence_trust::paths::bin_prefix_of(&path, ceremony::DEFAULT_BIN_PREFIX_LEN);
        let bin = acme.bin_role(&prefix);
        if let Some((_, env)) = bins.iter_mut().find(|(name, _)| *name == bin) {
            env.signed.targets.insert(path, writer::target_file(content.len() as u64, &sha, None));
        }
    }
    let mut signed_bins = std::collections::BTreeMap::new();
    for (name, env) in bins {
        let mut env = Envelope::new(env.signed).expect("env");
        env.sign(&publisher);
        let bytes = env.to_bytes().expect("bytes");
        roles.push((name.clone(), bytes));
        signed_bins.insert(name.to_string(), env);
    }
    let in_memory = in_memory(signed_bins, &publisher, &snapshot, &timestamp, expires);
    let state = ringfence_server::open_state(config).await.expect("state");
    state.repo.bootstrap(&root.to_bytes().expect("root bytes"), &roles, now).await.expect("bootstrap");
    let chunks = futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(content))]);
    state.repo.upload_content(chunks, Some(sha.as_str()), 1 << 20, "bench", now).await.expect("upload");

    // Served on loopback for the clients' refresh; each client syncs once now, so that it is
    // current before the publishes below.
    ringfence_server::tls::write_self_signed(
        &state.config.cert_file(),
        &state.config.key_file(),
        &["127.0.0.1".into()],
    )
    .expect("certificate");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(ringfence_server::serve(
        state.clone(),
        async {
            let _ = stop_rx.await;
        },
        Some(ready_tx),
    ));
    let base = format!("https://{}", ready_rx.await.expect("ready").device);
    let work = dir.path().join("clients");
    let root_file = dir.path().join("1.root.json");
    std::fs::write(&root_file, root.to_bytes().expect("root bytes")).expect("root");
    let (ca, root_path, work_dir, b) = (state.config.cert_file(), root_file.clone(), work.clone(), base.clone());
    tokio::task::spawn_blocking(move || client_refreshes(&b, &ca, &root_path, &work_dir, None))
        .await
        .expect("first sync");

    let mut times = Vec::new();
    let mut rewritten = Vec::new();
    let mut snapshot_bytes = Vec::new();
    let mut files = 0;
    for i in 0..SAMPLES {
        let manifest = UpdateManifest {
            id: format!("bench-{i}"),
            publisher: acme.clone(),
            title: "benchmark".into(),
            description: String::new(),
            product: "bench".into(),
            classification: Classification::Bugfix,
            severity: Severity::Low,
            kb: vec![],
            cves: vec![],
            release_date: "2026-11-23".into(),
            supersedes: vec![],
            prerequisites: vec![],
            applicability: Applicability::default(),
            installer: Installer {
                module: "file".into(),
                arguments: vec![],
                reboot_required: false,
                health_check: vec![],
                exit_codes: vec![],
                product_code: None,
            },
            files: vec![UpdateFile { name: format!("new-{i}.bin"), sha256: sha.clone(), length: content.len() as u64 }],
        };
        if i == SAMPLES - 1 {
            // The clients catch up before the last publish (not timed), so what they fetch
            // below is what one new update costs them.
            let (ca, root_path, work_dir, b) =
                (state.config.cert_file(), root_file.clone(), work.clone(), base.clone());
            let current = format!("acme/new-{}.bin", i - 1);
            tokio::task::spawn_blocking(move || client_refreshes(&b, &ca, &root_path, &work_dir, Some(&current)))
                .await
                .expect("sync");
        }
        let started = Instant::now();
        let outcome = state.repo.publish_update(manifest, "bench", now).await.expect("publish");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let mut bytes = 0;
        files = 0;
        for role in
            outcome.published.iter().map(|r| r.role.to_string()).chain(["snapshot".to_owned(), "timestamp".to_owned()])
        {
            let role = RoleName::parse(&role).expect("role");
            let record = state.repo.metadata(&role, None).await.expect("read").expect("record");
            if role.as_str() == "snapshot" {
                snapshot_bytes.push(record.len());
            }
            bytes += record.len();
            files += 1;
        }
        rewritten.push(bytes);
    }
    // The clients were current before the last sample: each refreshes to its update.
    let (ca, b) = (state.config.cert_file(), base.clone());
    let newest = format!("acme/new-{}.bin", SAMPLES - 1);
    let refreshes = tokio::task::spawn_blocking(move || client_refreshes(&b, &ca, &root_file, &work, Some(&newest)))
        .await
        .expect("refresh");
    let _ = stop_tx.send(());
    let _ = serving.await;

    rewritten.sort();
    snapshot_bytes.sort();
    Measured {
        refreshes,
        durable: times,
        in_memory,
        rewritten: rewritten[SAMPLES / 2],
        snapshot: snapshot_bytes[SAMPLES / 2],
        files,
    }
}

/// The edit python-tuf's baseline makes, with Ringfence's trust crate, in memory: add a target
/// to its bin, new version, re-sign and serialize; the snapshot with the bin's new version and
/// length, re-signed and serialized; the timestamp naming it. Milliseconds per sample.
fn in_memory(
    mut bins: std::collections::BTreeMap<String, Envelope<ringfence_proto::tuf::Targets>>,
    publisher: &SigningKey,
    snapshot_key: &SigningKey,
    timestamp_key: &SigningKey,
    expires: i64,
) -> Vec<f64> {
    let content = b"benchmark payload";
    let sha = Sha256Hex::parse(&ringfence_trust::sha256_hex(content)).expect("sha");
    let mut lengths: Vec<(String, u64, u64)> =
        bins.iter().map(|(name, env)| (name.clone(), 1, env.to_bytes().expect("bytes").len() as u64)).collect();
    // The roles above the bins are in the snapshot too (as in the baseline).
    lengths.extend([("targets".to_owned(), 1, 1_000), ("publisher.acme".to_owned(), 1, 1_000)]);
    let mut snapshot = Envelope::new(writer::next_snapshot(None, 1, expires, &lengths)).expect("snapshot");
    let mut timestamp_version = 1;
    let mut times = Vec::new();
    for i in 0..SAMPLES {
        let path = format!("acme/new-{i}.bin");
        let started = Instant::now();
        let prefix = ringfence_trust::paths::bin_prefix_of(&path, ceremony::DEFAULT_BIN_PREFIX_LEN);
        let name = format!("publisher.acme.{prefix}");
        let bin = bins.remove(&name).expect("bin");
        let mut signed = bin.signed;
        signed.targets.insert(path, writer::target_file(content.len() as u64, &sha, None));
        signed.version += 1;
        let version = signed.version;
        let mut bin = Envelope::new(signed).expect("bin");
        bin.sign(publisher);
        let bin_bytes = bin.to_bytes().expect("bytes");
        let next = writer::next_snapshot(
            Some(&snapshot.signed),
            snapshot.signed.version + 1,
            expires,
            &[(name.clone(), version, bin_bytes.len() as u64)],
        );
        snapshot = Envelope::new(next).expect("snapshot");
        snapshot.sign(snapshot_key);
        let snap_bytes = snapshot.to_bytes().expect("bytes");
        timestamp_version += 1;
        let mut ts = Envelope::new(writer::timestamp(timestamp_version, expires, snapshot.signed.version, &snap_bytes))
            .expect("ts");
        ts.sign(timestamp_key);
        let ts_bytes = ts.to_bytes().expect("bytes");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(!ts_bytes.is_empty());
        bins.insert(name, bin);
    }
    times
}
