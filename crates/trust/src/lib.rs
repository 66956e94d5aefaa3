//! The Ringfence trust core: canonical JSON, keys and signatures, TUF metadata verification
//! (the client's trusted set) and the repository writer.
//!
//! **Invariant:** this crate does no I/O and never reads the clock; callers pass `now`.

pub mod canonical;
mod canonical_ser;
pub mod client;
pub mod digest;
pub mod envelope;
pub mod expiry;
pub mod keys;
pub mod paths;
pub mod policy;
pub mod precedence;
pub mod review;
pub mod rollout;
pub mod windows;
pub mod workflow;
pub mod writer;

pub use envelope::{Envelope, EnvelopeError};
pub use keys::{KeyError, KeyId, PublicKey, SigningKey};

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
