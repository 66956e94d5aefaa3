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

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!(
        "| catalog | median publish (ms) | min (ms) | max (ms) | metadata rewritten per publish (bytes) | of which snapshot | files rewritten |"
    );
    println!("|---|---|---|---|---|---|---|");
    for n in [1_000usize, 10_000, 100_000] {
        runtime.block_on(bench(n));
    }
}

async fn bench(n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::with_data_dir(dir.path().to_path_buf());
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
    for (name, env) in bins {
        let mut env = Envelope::new(env.signed).expect("env");
        env.sign(&publisher);
        roles.push((name, env.to_bytes().expect("bytes")));
    }
    let state = ringfence_server::open_state(config).await.expect("state");
    state.repo.bootstrap(&root.to_bytes().expect("root bytes"), &roles, now).await.expect("bootstrap");
    let chunks = futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(content))]);
    state.repo.upload_content(chunks, Some(sha.as_str()), 1 << 20, "bench", now).await.expect("upload");

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
            },
            files: vec![UpdateFile { name: format!("new-{i}.bin"), sha256: sha.clone(), length: content.len() as u64 }],
        };
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
    times.sort_by(|a, b| a.total_cmp(b));
    rewritten.sort();
    snapshot_bytes.sort();
    println!(
        "| {n} | {:.2} | {:.2} | {:.2} | {} | {} | {files} |",
        times[SAMPLES / 2],
        times[0],
        times[SAMPLES - 1],
        rewritten[SAMPLES / 2],
        snapshot_bytes[SAMPLES / 2]
    );
}
