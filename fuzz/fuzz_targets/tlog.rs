//! The transparency log's parsers of untrusted input: entries, proof bundles (what an agent
//! reads from the server), add-checkpoint requests (what a witness reads from anyone), tile
//! paths (the device listener's unauthenticated route), entry bundles (what an auditor
//! reads) and checkpoints checked against a key. None may panic; an entry that parses
//! re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence_tlog::entry::Entry;
use ringfence_tlog::proof::ProofBundle;
use ringfence_tlog::tree::{is_tile_path, split_entry_bundle};
use ringfence_tlog::witness::AddCheckpoint;

/// A verifier key of the form a log publishes, for checkpoints checked against it.
const KEY: &str = "ringfence.fuzz/log+4c1f4a2c+AdxvWs0VZ3mvVQdM7i2X0GRXvU3O8TjRtqVYtjS4uQ2d";

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = Entry::parse(data) {
        assert_eq!(entry.to_bytes().unwrap(), data);
    }
    let _ = ProofBundle::parse(data);
    let _ = AddCheckpoint::parse(data);
    let _ = ringfence_tlog::checkpoint::verify(data, KEY);
    let _ = split_entry_bundle(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = is_tile_path(text);
    }
});
