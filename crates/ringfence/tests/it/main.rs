//! The one integration-test binary: real servers on loopback ports, the real `ringfence`
//! binary, python-tuf as the independent client.

// A harness, not product code: a failed step is a failed test or measurement.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod abuse;
mod admin_api;
mod agent_tuf;
mod agents;
mod backup;
mod browser;
mod ceremony;
mod common;
mod conformance;
mod console;
mod crash;
mod device_api;
mod downstream;
mod fleet;
mod freshness;
mod installation;
mod interop;
mod layering;
mod packages;
mod scale_out;
mod signer_review;
mod simulator;
mod stolen_server;
mod tough_interop;
mod transparency;
mod windows_agent;
