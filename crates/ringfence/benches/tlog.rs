//! The transparency log: how fast the sequencer integrates entries on the embedded default
//! (SQLite and local disk: entries, stored hashes, checkpoint, tiles), against the same entries
//! appended to the in-memory tree alone in the same run; and, at 1,000,000 entries, the size of
//! inclusion and consistency proofs and of the bundle an agent fetches, and the time to verify
//! one. Run with `cargo bench -p ringfence --bench tlog`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

// Each bench uses a part of what the benches share.
#[allow(dead_code)]
mod common;

use std::time::Instant;

use common::Bench;
use ringfence_tlog::checkpoint::LogKey;
use ringfence_tlog::entry::Entry;
use ringfence_tlog::proof::{LogIdentity, ProofBundle, WitnessIdentity};
use ringfence_tlog::tree::Tree;
use ringfence_tlog::witness::WitnessKey;
use ringfence_trust::SigningKey;

const SAMPLES: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn entry(i: u64) -> Vec<u8> {
    Entry::DeviceAccepted { id: format!("{i:032x}"), public_key: format!("{:064x}", i.wrapping_mul(2654435761)) }
        .to_bytes()
        .unwrap()
}

fn main() {
    sequencing();
    proofs_at_a_million();
}

fn sequencing() {
    let bench = Bench::quickstart(|_| {});
    let (runtime, state) = (&bench.runtime, &bench.state);
    let now = ringfence_server::unix_now();
    // What the quickstart queued goes on the log first.
    while runtime.block_on(state.log.integrate(now)).unwrap().is_some() {}

    println!(
        "| batch (entries) | sequencer median (entries/s) | min | max | in-memory tree (entries/s) | sequencer vs tree |"
    );
    println!("|---|---|---|---|---|---|");
    let mut next = 0u64;
    for batch in [256u64, 1024, 4096] {
        let (mut sequenced, mut in_memory) = (Vec::new(), Vec::new());
        for _ in 0..SAMPLES {
            let entries: Vec<Entry> = (next..next + batch)
                .map(|i| Entry::DeviceAccepted {
                    id: format!("{i:032x}"),
                    public_key: format!("{:064x}", i.wrapping_mul(2654435761)),
                })
                .collect();
            next += batch;
            runtime.block_on(state.log.enqueue(&entries)).unwrap();
            let start = Instant::now();
            let grown = runtime.block_on(state.log.integrate(now)).unwrap();
            let took = start.elapsed().as_secs_f64();
            assert!(grown.is_some(), "the batch was integrated");
            sequenced.push(batch as f64 / took);

            let records: Vec<Vec<u8>> = entries.iter().map(|e| e.to_bytes().unwrap()).collect();
            let mut tree = Tree::new();
            let start = Instant::now();
            for r in &records {
                tree.append(r).unwrap();
            }
            in_memory.push(batch as f64 / start.elapsed().as_secs_f64());
        }
        let (min, max) =
            (sequenced.iter().copied().fold(f64::MAX, f64::min), sequenced.iter().copied().fold(0.0, f64::max));
        let (s, t) = (median(sequenced), median(in_memory));
        println!("| {batch} | {s:.0} | {min:.0} | {max:.0} | {t:.0} | {:.3}× |", s / t);
    }
    println!();
}

fn proofs_at_a_million() {
    const SIZE: u64 = 1_000_000;
    let start = Instant::now();
    let mut tree = Tree::new();
    for i in 0..SIZE {
        tree.append(&entry(i)).unwrap();
    }
    println!("built an in-memory tree of {SIZE} entries in {:.1} s", start.elapsed().as_secs_f64());

    let key = LogKey::new("bench.example/log", SigningKey::from_seed([1; 32])).unwrap();
    let mut witness = WitnessKey::new("witness.example/w1", SigningKey::from_seed([2; 32])).unwrap();
    let identity = LogIdentity {
        origin: "bench.example/log".into(),
        key: key.verifier_key(),
        witnesses: vec![WitnessIdentity { name: "witness.example/w1".into(), key: witness.verifier_key() }],
        quorum: 1,
    };
    let root = tree.root(SIZE).unwrap();
    let mut note = key.sign(SIZE, root).unwrap();
    let plain = note.clone();
    note.extend(witness.cosign(&plain, 1_800_000_000).unwrap());

    println!(
        "| trusted size → 1,000,000 | inclusion (hashes, bytes) | consistency (hashes, bytes) | together (bytes) | bundle as served (bytes) | verify median (µs) |"
    );
    println!("|---|---|---|---|---|---|");
    for old in [999_999u64, 990_000, 500_000, 1] {
        let index = 765_432u64;
        let inclusion = tree.prove_inclusion(index, SIZE).unwrap();
        let consistency = tree.prove_consistency(old, SIZE).unwrap();
        let bundle = ProofBundle {
            checkpoint: String::from_utf8(note.clone()).unwrap(),
            index,
            entry: String::from_utf8(entry(index)).unwrap(),
            inclusion: ProofBundle::encode_hashes(&inclusion),
            old_size: old,
            consistency: ProofBundle::encode_hashes(&consistency),
        };
        let served = serde_json::to_vec(&bundle).unwrap();
        let trusted = ringfence_tlog::proof::Trusted {
            size: old,
            root: tree.root(old).unwrap(),
            note: key.sign(old, tree.root(old).unwrap()).unwrap(),
        };
        let expected = Entry::parse(&entry(index)).unwrap();
        let mut times = Vec::new();
        for _ in 0..201 {
            let start = Instant::now();
            let parsed = ProofBundle::parse(&served).unwrap();
            parsed.verify(&identity, &expected, Some(&trusted)).unwrap();
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
        println!(
            "| {old} | {}, {} | {}, {} | {} | {} | {:.0} |",
            inclusion.len(),
            inclusion.len() * 32,
            consistency.len(),
            consistency.len() * 32,
            (inclusion.len() + consistency.len()) * 32,
            served.len(),
            median(times)
        );
    }
}
