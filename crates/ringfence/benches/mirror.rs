//! Feeding a mirror (docs/DOWNSTREAM.md): 1,000 updates of 16 KiB each published and approved
//! for `pilot` upstream, the first bundle exported and imported into a new mirror (each of
//! [`RUNS`] runs into a new directory and a new mirror), then 10 more updates and the
//! incremental bundle (`--since` the mirror's log size) exported and imported. Baseline in the
//! same run: copying the first bundle's files to a new directory (what the media transfer
//! itself costs). Last, one 8 MiB download from a node pacing downloads at 2 MiB/s against
//! one without a limit. Run with `cargo bench -p ringfence --bench mirror`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[allow(dead_code)]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Bench;
use ringfence_proto::api::UpdateFile;
use ringfence_server::Config;
use ringfence_server::domain::mirror::ExportOptions;

const UPDATES: usize = 1_000;
const MORE: usize = 10;
const FILE_BYTES: usize = 16 * 1024;
const RUNS: usize = 3;

fn publish(bench: &Bench, from: usize, to: usize) {
    let state = &bench.state;
    bench.runtime.block_on(async {
        for u in from..to {
            let mut content = vec![0u8; FILE_BYTES];
            content[..8].copy_from_slice(&(u as u64).to_le_bytes());
            let sha = ringfence_trust::sha256_hex(&content);
            let chunks = futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes::Bytes::from(content))]);
            let now = ringfence_server::unix_now();
            state.repo.upload_content(chunks, Some(&sha), 1 << 20, "bench", now).await.unwrap();
            let file = UpdateFile {
                name: format!("kb-{u:04}.bin"),
                sha256: ringfence_proto::Sha256Hex::parse(&sha).unwrap(),
                length: FILE_BYTES as u64,
            };
            state.repo.publish_update(common::manifest(format!("kb-{u:04}"), vec![file]), "bench", now).await.unwrap();
            assert!(common::approve_install(state, "pilot", &format!("kb-{u:04}"), now).await);
        }
        while state.log.integrate(ringfence_server::unix_now()).await.unwrap().is_some() {}
    });
}

/// Bytes and files under `dir`.
fn size_of(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let (b, f) = size_of(&path);
            bytes += b;
            files += f;
        } else {
            bytes += std::fs::metadata(&path).unwrap().len();
            files += 1;
        }
    }
    (bytes, files)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() { copy_dir(&path, &dest) } else { std::fs::copy(&path, &dest).map(|_| ()).unwrap() }
    }
}

/// A new mirror of the bench's repository in `dir`.
fn mirror(bench: &Bench, dir: &Path) -> Config {
    let mut config = Config::with_data_dir(dir.to_path_buf());
    config.mirror.enabled = true;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(bench.data.join("1.root.json"), dir.join("1.root.json")).unwrap();
    config
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let bench = Bench::publishing();
    let started = Instant::now();
    publish(&bench, 0, UPDATES);
    println!("upstream: {UPDATES} updates of {FILE_BYTES} bytes published and approved in {:?}", started.elapsed());
    let config = bench.state.config.clone();
    let work = tempfile::tempdir().unwrap();

    let (mut exports, mut imports, mut copies) = (Vec::new(), Vec::new(), Vec::new());
    let mut since = 0;
    let mut first = work.path().join("first-0");
    for run in 0..RUNS {
        let dir = work.path().join(format!("first-{run}"));
        let t = Instant::now();
        bench.runtime.block_on(ringfence_server::export_bundle(&config, &dir, &ExportOptions::default())).unwrap();
        exports.push(t.elapsed());
        let t = Instant::now();
        copy_dir(&dir, &work.path().join(format!("copy-{run}")));
        copies.push(t.elapsed());
        let mirror_config = mirror(&bench, &work.path().join(format!("mirror-{run}")));
        let t = Instant::now();
        let imported = bench.runtime.block_on(ringfence_server::import_bundle(&mirror_config, &dir)).unwrap();
        imports.push(t.elapsed());
        assert_eq!(imported.content as usize, UPDATES);
        since = imported.log_size;
        first = dir;
    }
    let (bytes, files) = size_of(&first);
    println!(
        "first bundle: {files} files, {:.1} MiB ({UPDATES} content files, {:.1} MiB of content)",
        bytes as f64 / (1 << 20) as f64,
        (UPDATES * FILE_BYTES) as f64 / (1 << 20) as f64
    );
    println!(
        "  export median {} (min {}, max {}); import median {} (min {}, max {}); copying the files (baseline) median {}",
        ms(median(exports.clone())),
        ms(*exports.iter().min().unwrap()),
        ms(*exports.iter().max().unwrap()),
        ms(median(imports.clone())),
        ms(*imports.iter().min().unwrap()),
        ms(*imports.iter().max().unwrap()),
        ms(median(copies.clone()))
    );
    println!("  import / copy: {:.1}x", median(imports.clone()).as_secs_f64() / median(copies.clone()).as_secs_f64());

    // The next bundle: 10 more updates, since the last mirror's log size.
    publish(&bench, UPDATES, UPDATES + MORE);
    let next = work.path().join("next");
    let options = ExportOptions { since, ..ExportOptions::default() };
    let t = Instant::now();
    bench.runtime.block_on(ringfence_server::export_bundle(&config, &next, &options)).unwrap();
    let export = t.elapsed();
    let last_mirror = mirror(&bench, &work.path().join(format!("mirror-{}", RUNS - 1)));
    let t = Instant::now();
    let imported = bench.runtime.block_on(ringfence_server::import_bundle(&last_mirror, &next)).unwrap();
    let import = t.elapsed();
    assert_eq!(imported.content as usize, MORE);
    let (bytes, files) = size_of(&next);
    println!(
        "next bundle ({MORE} more updates): {files} files, {:.1} MiB; export {}, import {}; {} log entries",
        bytes as f64 / (1 << 20) as f64,
        ms(export),
        ms(import),
        imported.log_entries
    );

    // Pacing: one 8 MiB download from a node that sends each download at most 2 MiB/s, against
    // a node without a limit, in the same run.
    let big = vec![7u8; BIG];
    let sha = ringfence_trust::sha256_hex(&big);
    let now = ringfence_server::unix_now();
    bench.runtime.block_on(async {
        let chunks = futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes::Bytes::from(big))]);
        bench.state.repo.upload_content(chunks, Some(&sha), (BIG as u64) * 2, "bench", now).await.unwrap();
        let file = UpdateFile {
            name: "big.bin".into(),
            sha256: ringfence_proto::Sha256Hex::parse(&sha).unwrap(),
            length: BIG as u64,
        };
        bench.state.repo.publish_update(common::manifest("big".into(), vec![file]), "bench", now).await.unwrap();
    });
    let (_, unlimited) = bench.another_node(|_| {});
    let (_, paced) = bench.another_node(|c| c.devices.max_download_bytes_per_sec = PACE);
    let fetch = |port: u16| {
        let client = ringfence_cli::http::Client::new(&format!("https://127.0.0.1:{port}"), None, &bench.ca()).unwrap();
        let t = Instant::now();
        let answer = client.get(&format!("/repo/targets/acme/{sha}.big.bin")).unwrap();
        assert_eq!(answer.body.len(), BIG, "status {}", answer.status);
        t.elapsed()
    };
    let free: Vec<Duration> = (0..RUNS).map(|_| fetch(unlimited.addrs.device.port())).collect();
    let slow: Vec<Duration> = (0..RUNS).map(|_| fetch(paced.addrs.device.port())).collect();
    println!(
        "an 8 MiB download: no limit median {}, at most {} MiB/s median {} ({:.2} MiB/s)",
        ms(median(free)),
        PACE >> 20,
        ms(median(slow.clone())),
        BIG as f64 / (1 << 20) as f64 / median(slow).as_secs_f64()
    );
}

/// The pacing measurement's download and limit.
const BIG: usize = 8 << 20;
const PACE: u64 = 2 << 20;
