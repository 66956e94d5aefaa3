//! One module per command family.

pub mod audit;
pub mod audit_log;
pub mod cleanup;
pub mod devices;
pub mod groups;
pub mod keys;
pub mod metadata;
pub mod pending;
pub mod reports;
pub mod repository;
pub mod rollouts;
pub mod rules;
pub mod tokens;
