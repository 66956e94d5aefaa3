//! The transparency log's parsers of untrusted input: entries, proof bundles (what an agent
//! reads from the server), add-checkpoint requests (what a witness reads from anyone), tile
//! paths (the device listener's unauthenticated route) and entry bundles (what an auditor
//! reads). None may panic; an entry that parses re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence_tlog::entry::Entry;
use ringfence_tlog::proof::ProofBundle;
use ringfence_tlog::tree::{is_tile_path, split_entry_bundle};
use ringfence_tlog::witness::AddCheckpoint;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = Entry::parse(data) {
        assert_eq!(entry.to_bytes().unwrap(), data);
    }
    let _ = ProofBundle::parse(data);
    let _ = AddCheckpoint::parse(data);
    let _ = split_entry_bundle(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = is_tile_path(text);
    }
});
