//! Every wire type of Ringfence in one place: TUF 1.0 metadata, admin API bodies, the validated
//! names they carry, and the limits that bound them.
//!
//! **Invariant:** nothing here decodes by type tag. Every body is a fixed schema; schemas that
//! are ours use `deny_unknown_fields`, TUF metadata keeps unknown fields as plain JSON so that
//! signatures over them still verify.

pub mod api;
pub mod device;
pub mod limits;
pub mod names;
pub mod repo_path;
pub mod tuf;

pub use names::{GroupName, NameError, PublisherName, RoleName, Sha256Hex, TargetPath};
