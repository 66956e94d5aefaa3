//! Ringfence's transparency log: every signature and every change that decides what devices
//! trust, on an append-only Merkle log that anyone can check.
//!
//! - [`entry`]: the log's entries, one per event, in a fixed, versioned text format.
//! - [`tree`]: the RFC 6962 / RFC 9162 Merkle tree (through `tlog_tiles`, a port of Go's
//!   `sumdb/tlog`), inclusion and consistency proofs, and the C2SP `tlog-tiles` layout: hash
//!   tiles `tile/<L>/<N>[.p/<W>]` and entry bundles `tile/entries/<N>[.p/<W>]`.
//! - [`checkpoint`]: C2SP `tlog-checkpoint` checkpoints in the `signed-note` format, signed with
//!   an ed25519 log key, and their verification.
//!
//! Only the math and the formats live here: storing the tree, sequencing entries under the
//! database lock and serving tiles are the server's.

pub mod checkpoint;
pub mod entry;
pub mod tree;

pub use tlog_tiles::Hash;
