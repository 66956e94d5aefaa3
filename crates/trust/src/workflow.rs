//! The TUF client workflow (specification section 5) as a sans-IO state machine.
//!
//! [`Refresh`] says which file it needs next ([`Refresh::need`]); the caller fetches at most
//! `max_length` bytes and hands the answer back ([`Refresh::supply`]). [`TargetSearch`] then
//! walks the delegations for one target path, asking only for the roles on that path. Nothing
//! here does I/O or reads the clock, so every step can be driven and attacked from a test.

use std::collections::BTreeSet;

use ringfence_proto::limits::{
    MAX_DELEGATIONS, MAX_METADATA_BYTES, MAX_ROOT_BYTES, MAX_ROOT_ROTATIONS, MAX_TIMESTAMP_BYTES,
};
use ringfence_proto::tuf::TargetFile;

use crate::client::{ClientError, TrustedSet};

/// A metadata file to fetch, relative to the metadata base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// Role name as stored locally (`root`, `timestamp`, `targets`, a delegated role).
    pub role: String,
    /// File name to fetch: `N.root.json`, `timestamp.json`, `N.snapshot.json`, ...
    pub file: String,
    /// Never read more than this.
    pub max_length: u64,
}

/// What the fetch of a [`Need`] produced.
#[derive(Debug)]
pub enum Fetched {
    Bytes(Vec<u8>),
    /// The server has no such file (HTTP 404).
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Root { walked: u64 },
    Timestamp,
    Snapshot,
    Targets,
    Done,
}

/// Errors of the workflow beyond those of the trusted set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0} is missing on the server")]
    Missing(String),
    #[error("nothing more is needed")]
    Finished,
    #[error("delegation search visited more than {MAX_DELEGATIONS} roles")]
    TooManyDelegations,
}

/// One refresh of the top-level metadata (specification 5.3 to 5.6).
#[derive(Debug)]
pub struct Refresh {
    set: TrustedSet,
    phase: Phase,
    cached: Cached,
}

/// Metadata the client stored after an earlier refresh. It is loaded once the root chain is
/// walked (so it is checked with the newest root), never trusted blindly: a cached file that
/// does not verify is ignored, one that verifies but is stale serves as the rollback reference.
#[derive(Debug, Default)]
pub struct Cached {
    pub timestamp: Option<Vec<u8>>,
    pub snapshot: Option<Vec<u8>>,
    /// Used only when the snapshot names exactly its version.
    pub targets: Option<Vec<u8>>,
}

fn versioned(consistent: bool, version: u64, role: &str) -> String {
    if consistent { format!("{version}.{role}.json") } else { format!("{role}.json") }
}

impl Refresh {
    /// Start from a trusted set holding the trusted root and, if the caller has them, the
    /// cached timestamp and snapshot (loaded as rollback references).
    pub fn new(set: TrustedSet, cached: Cached) -> Self {
        Self { set, phase: Phase::Root { walked: 0 }, cached }
    }

    fn root_chain_done(&mut self) {
        if let Some(ts) = self.cached.timestamp.take() {
            // Refused or expired cached metadata only loses its use as a reference.
            let _ = self.set.update_timestamp(&ts);
        }
        if let Some(snap) = self.cached.snapshot.take() {
            let _ = self.set.update_snapshot(&snap, true);
        }
        self.phase = Phase::Timestamp;
    }

    /// The next file to fetch, or `None` when the refresh is complete.
    pub fn need(&self) -> Option<Need> {
        let root = &self.set.root().signed;
        match &self.phase {
            Phase::Root { .. } => Some(Need {
                role: "root".into(),
                file: format!("{}.root.json", root.version + 1),
                max_length: MAX_ROOT_BYTES,
            }),
            Phase::Timestamp => {
                Some(Need { role: "timestamp".into(), file: "timestamp.json".into(), max_length: MAX_TIMESTAMP_BYTES })
            }
            Phase::Snapshot => {
                let meta = self.set.timestamp()?.signed.meta.get("snapshot.json")?;
                Some(Need {
                    role: "snapshot".into(),
                    file: versioned(root.consistent_snapshot, meta.version, "snapshot"),
                    max_length: meta.length.unwrap_or(MAX_METADATA_BYTES),
                })
            }
            Phase::Targets => {
                let meta = self.set.snapshot()?.signed.meta.get("targets.json")?;
                Some(Need {
                    role: "targets".into(),
                    file: versioned(root.consistent_snapshot, meta.version, "targets"),
                    max_length: meta.length.unwrap_or(MAX_METADATA_BYTES),
                })
            }
            Phase::Done => None,
        }
    }

    /// Hand over what the fetch of [`Refresh::need`] produced. Returns whether the bytes were
    /// accepted as new trusted metadata (so the caller should store them under the role's
    /// name); a refusal leaves the trusted set as it was.
    pub fn supply(&mut self, fetched: Fetched) -> Result<bool, WorkflowError> {
        match (&self.phase, fetched) {
            (Phase::Root { .. }, Fetched::NotFound) => {
                self.root_chain_done();
                Ok(false)
            }
            (Phase::Root { walked }, Fetched::Bytes(bytes)) => {
                let walked = walked + 1;
                self.set.update_root(&bytes)?;
                if walked >= MAX_ROOT_ROTATIONS {
                    self.root_chain_done();
                } else {
                    self.phase = Phase::Root { walked };
                }
                Ok(true)
            }
            (Phase::Timestamp, Fetched::Bytes(bytes)) => {
                let new = self.set.update_timestamp(&bytes)?;
                // Same version as the cached one: the cached snapshot (and targets) may be current.
                self.phase = if !new && self.snapshot_is_current() { self.targets_phase() } else { Phase::Snapshot };
                Ok(new)
            }
            (Phase::Snapshot, Fetched::Bytes(bytes)) => {
                self.set.update_snapshot(&bytes, false)?;
                self.phase = self.targets_phase();
                Ok(true)
            }
            (Phase::Targets, Fetched::Bytes(bytes)) => {
                self.set.update_targets(&bytes)?;
                self.phase = Phase::Done;
                Ok(true)
            }
            (Phase::Done, _) => Err(WorkflowError::Finished),
            (phase, Fetched::NotFound) => Err(WorkflowError::Missing(format!("{phase:?}").to_lowercase())),
        }
    }

    /// Done at once if the cached targets is the version the snapshot names, else fetch it.
    fn targets_phase(&mut self) -> Phase {
        match self.cached.targets.take() {
            Some(bytes) if self.set.update_targets(&bytes).is_ok() => Phase::Done,
            _ => Phase::Targets,
        }
    }

    fn snapshot_is_current(&self) -> bool {
        let (Some(ts), Some(snap)) = (self.set.timestamp(), self.set.snapshot()) else { return false };
        ts.signed.meta.get("snapshot.json").is_some_and(|m| m.version == snap.signed.version)
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub fn trusted(&self) -> &TrustedSet {
        &self.set
    }

    /// The trusted set after a complete refresh.
    pub fn finish(self) -> Result<TrustedSet, WorkflowError> {
        if self.phase != Phase::Done {
            return Err(WorkflowError::Missing("the rest of the refresh".into()));
        }
        Ok(self.set)
    }
}

/// What the delegation search needs or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchStep {
    /// Load this delegated role (its delegator is already trusted), then call `next` again.
    Need {
        need: Need,
        delegator: String,
    },
    Found(TargetFile),
    NotFound,
}

/// Pre-order depth-first search of the delegations for one target path (specification
/// 5.6.7): roles in listed order, a terminating role ends the search below its parent,
/// each role visited once, at most [`MAX_DELEGATIONS`] roles.
#[derive(Debug)]
pub struct TargetSearch {
    path: String,
    stack: Vec<(String, String)>,
    visited: BTreeSet<String>,
}

impl TargetSearch {
    pub fn new(path: &str) -> Self {
        Self { path: path.into(), stack: vec![("targets".into(), "root".into())], visited: BTreeSet::new() }
    }

    pub fn next(&mut self, set: &TrustedSet) -> Result<SearchStep, WorkflowError> {
        while let Some((role, delegator)) = self.stack.pop() {
            if self.visited.contains(&role) {
                continue;
            }
            if self.visited.len() >= MAX_DELEGATIONS {
                return Err(WorkflowError::TooManyDelegations);
            }
            let Some(metadata) = set.targets(&role) else {
                let meta = set
                    .snapshot()
                    .and_then(|s| s.signed.meta.get(&format!("{role}.json")))
                    .ok_or_else(|| ClientError::NotListed { role: role.clone(), listing: "snapshot" })?;
                let consistent = set.root().signed.consistent_snapshot;
                let need = Need {
                    role: role.clone(),
                    file: versioned(consistent, meta.version, &role),
                    max_length: meta.length.unwrap_or(MAX_METADATA_BYTES),
                };
                self.stack.push((role, delegator.clone()));
                return Ok(SearchStep::Need { need, delegator });
            };
            if let Some(found) = metadata.signed.targets.get(&self.path) {
                return Ok(SearchStep::Found(found.clone()));
            }
            self.visited.insert(role.clone());
            let mut children = Vec::new();
            for child in set.delegations_for(&role, &self.path) {
                let terminating = child.terminating;
                children.push((child.name, role.clone()));
                if terminating {
                    self.stack.clear();
                    break;
                }
            }
            self.stack.extend(children.into_iter().rev());
        }
        Ok(SearchStep::NotFound)
    }
}

/// The file name to fetch a target by, relative to the targets base URL.
pub fn target_file_name(path: &str, target: &TargetFile, consistent: bool) -> Option<String> {
    if !consistent {
        return Some(path.to_owned());
    }
    let sha = target.hashes.get("sha256")?;
    Some(match path.rsplit_once('/') {
        Some((dir, file)) => format!("{dir}/{sha}.{file}"),
        None => format!("{sha}.{path}"),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("target is {got} bytes, metadata says {expected}")]
    Length { expected: u64, got: u64 },
    #[error("target hash does not match its metadata")]
    Hash,
    #[error("metadata lists no sha256 for the target")]
    NoUsableHash,
}

/// Check downloaded bytes against the trusted metadata entry (length and every sha256/sha512
/// hash listed; at least one must be known).
pub fn verify_target(target: &TargetFile, length: u64, sha256_hex: &str) -> Result<(), TargetError> {
    if length != target.length {
        return Err(TargetError::Length { expected: target.length, got: length });
    }
    match target.hashes.get("sha256") {
        Some(expected) if expected.eq_ignore_ascii_case(sha256_hex) => Ok(()),
        Some(_) => Err(TargetError::Hash),
        None => Err(TargetError::NoUsableHash),
    }
}
