//! Ringfence's transparency log: every signature and every change that decides what devices
//! trust, on an append-only Merkle log that anyone can check.
//!
//! - [`entry`]: the log's entries, one per event, in a fixed, versioned text format.
//! - [`tree`]: the RFC 6962 / RFC 9162 Merkle tree (through `tlog_tiles`, a port of Go's
//!   `sumdb/tlog`), inclusion and consistency proofs, and the C2SP `tlog-tiles` layout: hash
//!   tiles `tile/<L>/<N>[.p/<W>]` and entry bundles `tile/entries/<N>[.p/<W>]`.
//! - [`checkpoint`]: C2SP `tlog-checkpoint` checkpoints in the `signed-note` format, signed with
//!   an ed25519 log key, and their verification.
//! - [`witness`]: C2SP `tlog-cosignature` cosignatures and the `tlog-witness` `add-checkpoint`
//!   request and decision.
//! - [`proof`]: the log's identity (published in signed metadata), the proof bundle served
//!   beside each metadata version, and the client's check of it.
//!
//! Only the math and the formats live here: storing the tree, sequencing entries under the
//! database lock and serving tiles are the server's.

pub mod checkpoint;
pub mod entry;
pub mod proof;
pub mod tree;
pub mod witness;

pub use tlog_tiles::Hash;
/// The crates underneath, for callers that store the tree themselves.
pub use {signed_note, tlog_tiles};
