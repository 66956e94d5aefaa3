//! The domain layer: the one door between the listeners and what the server keeps. Handlers
//! parse and authenticate, then call a service here; only this layer touches the store, and it
//! answers with [`Error`], which `crate::error` maps to HTTP in one place.
//!
//! - [`repo::Repository`]: the TUF repository (publish, approve, pending roles and
//!   signatures, renewal, health).
//! - [`tokens::Tokens`]: admin API tokens.
//! - [`devices::Devices`]: enrollment, sessions, check-ins, reports, the device list.
//! - [`rules::Rules`]: automatic approval rules.
//! - [`rollouts::Rollouts`]: rollouts the server may hold back, never widen.
//! - [`reports::Reports`]: compliance per group, CVE exposure, stale devices.
//! - [`audit::Audit`]: the audit trail, written in one place.
//! - [`log::Log`]: the transparency log (sequencer, tiles, checkpoints, witnesses, proofs).
//! - [`console::Console`]: the web console's sessions and dashboard counts.
//! - [`mirror`]: export bundles and their verified import into a mirror.

pub mod audit;
pub mod backup;
pub mod checkins;
pub mod cluster;
pub mod console;
pub mod devices;
pub mod error;
pub mod events;
pub mod kept;
pub mod log;
pub mod mirror;
pub mod repo;
pub mod reports;
pub mod restore;
pub mod rollouts;
pub mod rules;
pub mod sessions;
pub mod tokens;

pub use error::{Error, Result};
