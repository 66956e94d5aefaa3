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
    /// The timestamp and snapshot keys of the root the refresh started from.
    start_keys: OnlineKeys,
    /// Set when those keys rotated: the caller must delete its stored timestamp and snapshot.
    discard_cached: bool,
}

/// The keys (material, not ids) and thresholds of the timestamp and snapshot roles.
type OnlineKeys = Vec<(Vec<ringfence_proto::tuf::Key>, u64)>;

fn online_keys(root: &ringfence_proto::tuf::Root) -> OnlineKeys {
    ["timestamp", "snapshot"]
        .iter()
        .map(|role| match root.roles.get(*role) {
            Some(r) => {
                let mut keys: Vec<_> = r.keyids.iter().filter_map(|id| root.keys.get(id)).cloned().collect();
                keys.sort_by(|a, b| (&a.keytype, &a.keyval.public).cmp(&(&b.keytype, &b.keyval.public)));
                (keys, r.threshold)
            }
            None => (Vec::new(), 0),
        })
        .collect()
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
        let start_keys = online_keys(&set.root().signed);
        Self { set, phase: Phase::Root { walked: 0 }, cached, start_keys, discard_cached: false }
    }

    /// True once the root chain rotated the timestamp or snapshot keys: fast-forward recovery
    /// (specification 5.3.11). The cached timestamp and snapshot were not loaded, and the
    /// caller must delete its stored copies at once, so that a later refresh starting from
    /// the new root cannot load a fast-forwarded version as its rollback reference.
    pub fn discard_cached(&self) -> bool {
        self.discard_cached
    }

    fn check_rotation(&mut self) {
        if online_keys(&self.set.root().signed) != self.start_keys {
            self.cached = Cached::default();
            self.discard_cached = true;
        }
    }

    fn root_chain_done(&mut self) {
        self.check_rotation();
        if let Some(ts) = self.cached.timestamp.take() {
            // Refused or expired cached metadata only loses its use as a reference.
            let _ = self.set.update_timestamp(&ts);
        }
        if let Some(snap) = self.cached.snapshot.take() {
            // Whatever the cached timestamp's freshness: the reference for rollback checks.
            let _ = self.set.load_snapshot_reference(&snap);
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
                    max_length: meta.length.unwrap_or(MAX_METADATA_BYTES).min(MAX_METADATA_BYTES),
                })
            }
            Phase::Targets => {
                let meta = self.set.snapshot()?.signed.meta.get("targets.json")?;
                Some(Need {
                    role: "targets".into(),
                    file: versioned(root.consistent_snapshot, meta.version, "targets"),
                    max_length: meta.length.unwrap_or(MAX_METADATA_BYTES).min(MAX_METADATA_BYTES),
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
                // Checked at every root, not only at the end of the chain: a refresh cut off
                // after storing this root would otherwise start the next one from the rotated
                // keys and never notice the rotation.
                self.check_rotation();
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
/// each delegation chain visited once, at most [`MAX_DELEGATIONS`] roles. Roles are trusted
/// per chain ([`TrustedSet::chain`]).
#[derive(Debug)]
pub struct TargetSearch {
    path: String,
    /// (role name, chain of the role that delegates it)
    stack: Vec<(String, String)>,
    visited: BTreeSet<String>,
}

/// A role name as it may appear in a file name and URL: percent-encoded except unreserved
/// characters, as python-tuf does.
pub fn encode_role(role: &str) -> String {
    let mut out = String::with_capacity(role.len());
    for b in role.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl TargetSearch {
    pub fn new(path: &str) -> Self {
        Self { path: path.into(), stack: vec![("targets".into(), "root".into())], visited: BTreeSet::new() }
    }

    pub fn next(&mut self, set: &TrustedSet) -> Result<SearchStep, WorkflowError> {
        while let Some((role, delegator)) = self.stack.pop() {
            let chain = TrustedSet::chain(&delegator, &role);
            if self.visited.contains(&chain) {
                continue;
            }
            if self.visited.len() >= MAX_DELEGATIONS {
                return Err(WorkflowError::TooManyDelegations);
            }
            let Some(metadata) = set.targets(&chain) else {
                let need = delegated_need(set, &role)
                    .ok_or_else(|| ClientError::NotListed { role: role.clone(), listing: "snapshot" })?;
                self.stack.push((role, delegator.clone()));
                return Ok(SearchStep::Need { need, delegator });
            };
            if let Some(found) = metadata.signed.targets.get(&self.path) {
                return Ok(SearchStep::Found(found.clone()));
            }
            self.visited.insert(chain.clone());
            let mut children = Vec::new();
            for child in set.delegations_for(&chain, &self.path) {
                let terminating = child.terminating;
                children.push((child.name, chain.clone()));
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

/// The file name to fetch a target by, relative to the targets base URL. With consistent
/// snapshots it is `<dir>/<hash>.<file>` with one of the listed hashes (sha256 if listed,
/// else sha512); `None` when no supported hash is listed or the listed one is not hex.
pub fn target_file_name(path: &str, target: &TargetFile, consistent: bool) -> Option<String> {
    if !consistent {
        return Some(path.to_owned());
    }
    let hash = crate::digest::SUPPORTED.iter().find_map(|a| target.hashes.get(*a))?;
    if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(match path.rsplit_once('/') {
        Some((dir, file)) => format!("{dir}/{hash}.{file}"),
        None => format!("{hash}.{path}"),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("target is {got} bytes, metadata says {expected}")]
    Length { expected: u64, got: u64 },
    #[error(transparent)]
    Hash(#[from] crate::digest::DigestError),
}

/// Check downloaded bytes against the trusted metadata entry: the length, and every hash the
/// entry lists whose algorithm this client knows (sha256, sha512); at least one must be known.
pub fn verify_target(target: &TargetFile, length: u64, digests: &crate::digest::Digests) -> Result<(), TargetError> {
    if length != target.length {
        return Err(TargetError::Length { expected: target.length, got: length });
    }
    digests.check(&target.hashes)?;
    Ok(())
}

/// What to fetch for delegated `role`, as the trusted snapshot lists it (`None` if it does not).
pub fn delegated_need(set: &TrustedSet, role: &str) -> Option<Need> {
    let meta = set.snapshot()?.signed.meta.get(&format!("{role}.json"))?;
    Some(Need {
        role: role.to_owned(),
        file: versioned(set.root().signed.consistent_snapshot, meta.version, &encode_role(role)),
        max_length: meta.length.unwrap_or(MAX_METADATA_BYTES).min(MAX_METADATA_BYTES),
    })
}

#[cfg(test)]
mod tests {
    //! The TUF attack catalog against the workflow, on an in-memory repository.

    use std::collections::BTreeMap;

    use super::*;
    use crate::envelope::EnvelopeError;
    use crate::writer::{self, Coverage, RoleKeySet};
    use crate::{Envelope, SigningKey};

    const NOW: i64 = 1_800_000_000;
    const LATER: i64 = NOW + 1000;

    /// A role of [`Repo::tree`]: name, (child, terminating) delegations, files listed.
    type RoleSpec<'a> = (&'a str, &'a [(&'a str, bool)], &'a [&'a str]);

    struct Repo {
        root_key: SigningKey,
        online: SigningKey,
        delegate: SigningKey,
        files: BTreeMap<String, Vec<u8>>,
    }

    fn sign<T>(signed: T, keys: &[&SigningKey]) -> Vec<u8>
    where
        T: serde::de::DeserializeOwned + serde::Serialize + crate::envelope::MetadataType,
    {
        let mut env = Envelope::new(signed).unwrap();
        keys.iter().for_each(|k| env.sign(k));
        env.to_bytes().unwrap()
    }

    impl Repo {
        fn new() -> Self {
            Self {
                root_key: SigningKey::from_seed([1; 32]),
                online: SigningKey::from_seed([3; 32]),
                delegate: SigningKey::from_seed([4; 32]),
                files: BTreeMap::new(),
            }
        }

        fn root(&mut self, version: u64, timestamp_key: &SigningKey, signers: &[&SigningKey]) -> Vec<u8> {
            let one = |k: &SigningKey| RoleKeySet::new(vec![k.public()], 1);
            let root = writer::root(
                version,
                LATER,
                &[
                    ("root", &one(&self.root_key)),
                    ("targets", &one(&self.online)),
                    ("snapshot", &one(&self.online)),
                    ("timestamp", &one(timestamp_key)),
                ],
            );
            let bytes = sign(root, signers);
            self.files.insert(format!("{version}.root.json"), bytes.clone());
            bytes
        }

        /// Publish targets `version` delegating `acme/*` to role `acme`, which lists `listed`.
        fn publish(&mut self, version: u64, listed: &str, timestamp_key: &SigningKey) {
            let mut acme = writer::targets(version, LATER);
            acme.targets.insert(
                listed.into(),
                writer::target_file(3, &ringfence_proto::Sha256Hex::parse(&"a".repeat(64)).unwrap(), None),
            );
            let acme = sign(acme, &[&self.delegate]);
            let mut targets = writer::targets(version, LATER);
            writer::set_delegation(
                &mut targets,
                "acme",
                &RoleKeySet::new(vec![self.delegate.public()], 1),
                Coverage::Patterns(vec!["acme/*".into()]),
                true,
            );
            let targets = sign(targets, &[&self.online]);
            let snapshot = writer::next_snapshot(
                None,
                version,
                LATER,
                &[("targets".into(), version, targets.len() as u64), ("acme".into(), version, acme.len() as u64)],
            );
            let snapshot = sign(snapshot, &[&self.online]);
            let timestamp = sign(writer::timestamp(version, LATER, version, &snapshot), &[timestamp_key]);
            self.files.insert(format!("{version}.targets.json"), targets);
            self.files.insert(format!("{version}.acme.json"), acme);
            self.files.insert(format!("{version}.snapshot.json"), snapshot);
            self.files.insert("timestamp.json".into(), timestamp);
        }

        /// Version 1 where top-level targets delegates `acme/*` to `acme` (delegate key) and
        /// `approvals/g2/*/*` to `approvals.g2` (approver key), and `acme` itself delegates
        /// `acme/*` to a role named `sub` it signs, whose document lists `listed`.
        fn publish_with_sub(&mut self, sub: &str, timestamp_key: &SigningKey) {
            let approver = SigningKey::from_seed([5; 32]);
            let file = writer::target_file(3, &ringfence_proto::Sha256Hex::parse(&"b".repeat(64)).unwrap(), None);
            let mut sub_doc = writer::targets(1, LATER);
            sub_doc.targets.insert("acme/x.bin".into(), file);
            let sub_doc = sign(sub_doc, &[&self.delegate]);
            let mut acme = writer::targets(1, LATER);
            let by_delegate = RoleKeySet::new(vec![self.delegate.public()], 1);
            writer::set_delegation(&mut acme, sub, &by_delegate, Coverage::Patterns(vec!["acme/*".into()]), true);
            let acme = sign(acme, &[&self.delegate]);
            let mut targets = writer::targets(1, LATER);
            writer::set_delegation(&mut targets, "acme", &by_delegate, Coverage::Patterns(vec!["acme/*".into()]), true);
            let by_approver = RoleKeySet::new(vec![approver.public()], 1);
            let pattern = Coverage::Patterns(vec!["approvals/g2/*/*".into()]);
            writer::set_delegation(&mut targets, "approvals.g2", &by_approver, pattern, true);
            let targets = sign(targets, &[&self.online]);
            let snapshot = writer::next_snapshot(
                None,
                1,
                LATER,
                &[
                    ("targets".into(), 1, targets.len() as u64),
                    ("acme".into(), 1, acme.len() as u64),
                    (sub.into(), 1, sub_doc.len() as u64),
                ],
            );
            let snapshot = sign(snapshot, &[&self.online]);
            let timestamp = sign(writer::timestamp(1, LATER, 1, &snapshot), &[timestamp_key]);
            self.files.insert("1.targets.json".into(), targets);
            self.files.insert("1.acme.json".into(), acme);
            // A reserved name would collide with the real file: keep it aside.
            let reserved = ["root", "targets", "snapshot", "timestamp"].contains(&sub);
            let name = if reserved { "sub-doc".to_owned() } else { format!("1.{}.json", encode_role(sub)) };
            self.files.insert(name, sub_doc);
            self.files.insert("1.snapshot.json".into(), snapshot);
            self.files.insert("timestamp.json".into(), timestamp);
        }

        /// Version 1 of a repository of delegated roles, each signed by the delegate key and
        /// trusted for `acme/*`: `(name, [(child, terminating)], files it lists)`. `targets`
        /// is the top-level role.
        fn tree(&mut self, roles: &[RoleSpec<'_>], timestamp_key: &SigningKey) {
            let file = writer::target_file(3, &ringfence_proto::Sha256Hex::parse(&"c".repeat(64)).unwrap(), None);
            let by_delegate = RoleKeySet::new(vec![self.delegate.public()], 1);
            let mut listed = Vec::new();
            for (name, children, files) in roles {
                let mut doc = writer::targets(1, LATER);
                for f in *files {
                    doc.targets.insert((*f).into(), file.clone());
                }
                for (child, terminating) in *children {
                    let coverage = Coverage::Patterns(vec!["acme/*".into()]);
                    writer::set_delegation(&mut doc, child, &by_delegate, coverage, *terminating);
                }
                let key = if *name == "targets" { &self.online } else { &self.delegate };
                let bytes = sign(doc, &[key]);
                listed.push(((*name).to_owned(), 1, bytes.len() as u64));
                self.files.insert(format!("1.{}.json", encode_role(name)), bytes);
            }
            let snapshot = sign(writer::next_snapshot(None, 1, LATER, &listed), &[&self.online]);
            let timestamp = sign(writer::timestamp(1, LATER, 1, &snapshot), &[timestamp_key]);
            self.files.insert("1.snapshot.json".into(), snapshot);
            self.files.insert("timestamp.json".into(), timestamp);
        }

        fn refresh(&self, trusted_root: &[u8], cached: Cached) -> Result<TrustedSet, WorkflowError> {
            let mut refresh = Refresh::new(TrustedSet::new(trusted_root, NOW)?, cached);
            while let Some(need) = refresh.need() {
                let fetched = match self.files.get(&need.file) {
                    Some(b) if b.len() as u64 <= need.max_length => Fetched::Bytes(b.clone()),
                    Some(_) => return Err(WorkflowError::Missing(format!("{} too long", need.file))),
                    None => Fetched::NotFound,
                };
                refresh.supply(fetched)?;
            }
            refresh.finish()
        }

        fn search(&self, set: &mut TrustedSet, path: &str) -> Result<Option<TargetFile>, WorkflowError> {
            let mut search = TargetSearch::new(path);
            loop {
                match search.next(set)? {
                    SearchStep::Found(t) => return Ok(Some(t)),
                    SearchStep::NotFound => return Ok(None),
                    SearchStep::Need { need, delegator } => {
                        let bytes = self.files.get(&need.file).ok_or(WorkflowError::Missing(need.file.clone()))?;
                        set.update_delegated_targets(bytes, &need.role, &delegator)?;
                    }
                }
            }
        }
    }

    #[test]
    fn a_refresh_finds_delegated_targets_and_loads_only_what_it_needs() {
        let mut repo = Repo::new();
        let ts = SigningKey::from_seed([2; 32]);
        let root = repo.root(1, &ts, &[&SigningKey::from_seed([1; 32])]);
        repo.publish(1, "acme/app.bin", &ts);
        let mut set = repo.refresh(&root, Cached::default()).unwrap();
        assert!(set.targets("targets/acme").is_none(), "delegated roles load lazily");
        assert_eq!(repo.search(&mut set, "acme/app.bin").unwrap().map(|t| t.length), Some(3));
        assert_eq!(repo.search(&mut set, "other/app.bin").unwrap(), None);
    }

    #[test]
    fn wrong_software_a_role_cannot_sign_outside_its_delegation() {
        let mut repo = Repo::new();
        let ts = SigningKey::from_seed([2; 32]);
        let root = repo.root(1, &ts, &[&SigningKey::from_seed([1; 32])]);
        // The delegated role lists a path it is not trusted for.
        repo.publish(1, "approvals/production/acme/app.bin", &ts);
        let mut set = repo.refresh(&root, Cached::default()).unwrap();
        assert_eq!(repo.search(&mut set, "approvals/production/acme/app.bin").unwrap(), None);
    }

    #[test]
    fn mix_and_match_a_role_version_other_than_the_snapshot_names_is_refused() {
        let mut repo = Repo::new();
        let ts = SigningKey::from_seed([2; 32]);
        let root = repo.root(1, &ts, &[&SigningKey::from_seed([1; 32])]);
        repo.publish(1, "acme/app.bin", &ts);
        let old_acme = repo.files["1.acme.json"].clone();
        repo.publish(2, "acme/app.bin", &ts);
        // Version 1 of acme served where the snapshot names version 2.
        repo.files.insert("2.acme.json".into(), old_acme);
        let mut set = repo.refresh(&root, Cached::default()).unwrap();
        let err = repo.search(&mut set, "acme/app.bin").unwrap_err();
        assert!(
            matches!(
                err,
                WorkflowError::Client(ClientError::LengthOrHashMismatch { .. } | ClientError::BadVersion { .. })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn fast_forward_recovery_after_the_timestamp_key_is_rotated() {
        let mut repo = Repo::new();
        let old_ts = SigningKey::from_seed([2; 32]);
        let root_key = SigningKey::from_seed([1; 32]);
        let root = repo.root(1, &old_ts, &[&root_key]);
        // An attacker with the old timestamp key fast-forwarded the client to version 1000.
        repo.publish(1000, "acme/app.bin", &old_ts);
        let forwarded = repo.files["timestamp.json"].clone();
        let set = repo.refresh(&root, Cached::default()).unwrap();
        assert_eq!(set.timestamp().map(|t| t.signed.version), Some(1000));
        // Recovery: root 2 rotates the timestamp key; the repository continues at version 2.
        let new_ts = SigningKey::from_seed([9; 32]);
        repo.root(2, &new_ts, &[&root_key]);
        repo.publish(2, "acme/app.bin", &new_ts);
        let cached = Cached { timestamp: Some(forwarded.clone()), ..Cached::default() };
        let set = repo.refresh(&root, cached).unwrap();
        assert_eq!(set.timestamp().map(|t| t.signed.version), Some(2), "the fast-forwarded timestamp is dropped");
        // Without the rotation, the fast-forwarded version would block every update.
        let mut stuck = Repo::new();
        let root = stuck.root(1, &old_ts, &[&root_key]);
        stuck.publish(2, "acme/app.bin", &old_ts);
        let err = stuck.refresh(&root, Cached { timestamp: Some(forwarded), ..Cached::default() }).unwrap_err();
        assert!(matches!(err, WorkflowError::Client(ClientError::Rollback { .. })), "{err:?}");
    }

    #[test]
    fn fast_forward_recovery_drops_the_snapshot_when_only_the_timestamp_key_rotated() {
        let mut repo = Repo::new();
        let old_ts = SigningKey::from_seed([2; 32]);
        let root_key = SigningKey::from_seed([1; 32]);
        let root = repo.root(1, &old_ts, &[&root_key]);
        // With the stolen online keys the attacker fast-forwarded timestamp and snapshot (which
        // names targets version 1000) to version 1000.
        repo.publish(1000, "acme/app.bin", &old_ts);
        let set = repo.refresh(&root, Cached::default()).unwrap();
        assert_eq!(set.snapshot().map(|s| s.signed.version), Some(1000));
        let cached = || Cached {
            timestamp: Some(repo_file(&repo, "timestamp.json")),
            snapshot: Some(repo_file(&repo, "1000.snapshot.json")),
            ..Cached::default()
        };
        let (ts_cache, snap_cache) = (cached().timestamp, cached().snapshot);
        // Recovery: root 2 rotates only the timestamp key; the repository restarts at 2.
        let new_ts = SigningKey::from_seed([9; 32]);
        repo.root(2, &new_ts, &[&root_key]);
        repo.publish(2, "acme/app.bin", &new_ts);
        let cached = Cached { timestamp: ts_cache.clone(), snapshot: snap_cache.clone(), ..Cached::default() };
        let mut refresh = Refresh::new(TrustedSet::new(&root, NOW).unwrap(), cached);
        while let Some(need) = refresh.need() {
            let fetched = repo.files.get(&need.file).map_or(Fetched::NotFound, |b| Fetched::Bytes(b.clone()));
            refresh.supply(fetched).unwrap();
        }
        assert!(refresh.discard_cached(), "the caller is told to delete its stored timestamp and snapshot");
        // Told as soon as the rotating root is accepted: a refresh cut off right after it (the
        // caller has stored root 2) must not leave the fast-forwarded copies behind.
        let cached = Cached { timestamp: ts_cache.clone(), snapshot: snap_cache.clone(), ..Cached::default() };
        let mut cut_off = Refresh::new(TrustedSet::new(&root, NOW).unwrap(), cached);
        assert_eq!(cut_off.need().map(|n| n.file), Some("2.root.json".to_owned()));
        cut_off.supply(Fetched::Bytes(repo_file(&repo, "2.root.json"))).unwrap();
        assert!(cut_off.discard_cached());
        let set = refresh.finish().unwrap();
        assert_eq!(set.snapshot().map(|s| s.signed.version), Some(2));
        // Without a rotation the same cached snapshot is the rollback reference: refused.
        let root2 = repo_file(&repo, "2.root.json");
        let cached = Cached { timestamp: None, snapshot: snap_cache, ..Cached::default() };
        let err = repo.refresh(&root2, cached).unwrap_err();
        assert!(matches!(err, WorkflowError::Client(ClientError::Rollback { .. })), "{err:?}");
    }

    fn repo_file(repo: &Repo, name: &str) -> Vec<u8> {
        repo.files[name].clone()
    }

    #[test]
    fn a_terminating_role_ends_the_search_below_its_parent() {
        for (terminating, found) in [(true, false), (false, true)] {
            let mut repo = Repo::new();
            let ts = SigningKey::from_seed([2; 32]);
            let root = repo.root(1, &ts, &[&SigningKey::from_seed([1; 32])]);
            repo.tree(
                &[
                    ("targets", &[("first", terminating), ("second", false)], &[]),
                    ("first", &[], &[]),
                    ("second", &[], &["acme/x"]),
                ],
                &ts,
            );
            let mut set = repo.refresh(&root, Cached::default()).unwrap();
            assert_eq!(repo.search(&mut set, "acme/x").unwrap().is_some(), found, "terminating={terminating}");
        }
    }

    #[test]
    fn a_delegation_cycle_ends_at_the_visit_limit() {
        let mut repo = Repo::new();
        let ts = SigningKey::from_seed([2; 32]);
        let root = repo.root(1, &ts, &[&SigningKey::from_seed([1; 32])]);
        repo.tree(&[("targets", &[("a", false)], &[]), ("a", &[("b", false)], &[]), ("b", &[("a", false)], &[])], &ts);
        let mut set = repo.refresh(&root, Cached::default()).unwrap();
        assert_eq!(repo.search(&mut set, "acme/x").unwrap_err(), WorkflowError::TooManyDelegations);
        // A wide fan-out is bounded the same way.
        let mut repo = Repo::new();
        let root = repo.root(1, &ts, &[&SigningKey::from_seed([1; 32])]);
        let names: Vec<String> = (0..MAX_DELEGATIONS + 1).map(|i| format!("r{i}")).collect();
        let children: Vec<(&str, bool)> = names.iter().map(|n| (n.as_str(), false)).collect();
        let mut roles: Vec<RoleSpec<'_>> = vec![("targets", &children, &[])];
        roles.extend(names.iter().map(|n| (n.as_str(), &[][..], &[][..])));
        repo.tree(&roles, &ts);
        let mut set = repo.refresh(&root, Cached::default()).unwrap();
        assert_eq!(repo.search(&mut set, "acme/x").unwrap_err(), WorkflowError::TooManyDelegations);
    }

    #[test]
    fn role_names_are_opaque_strings() {
        for name in ["/delegatedrole", "../delegatedrole", "a b", "%2F"] {
            let mut repo = Repo::new();
            let ts = SigningKey::from_seed([2; 32]);
            let root = repo.root(1, &ts, &[&SigningKey::from_seed([1; 32])]);
            repo.tree(&[("targets", &[(name, true)], &[]), (name, &[], &["acme/x"])], &ts);
            let mut set = repo.refresh(&root, Cached::default()).unwrap();
            assert!(repo.search(&mut set, "acme/x").unwrap().is_some(), "{name}");
            assert!(set.targets(&TrustedSet::chain("targets", name)).is_some(), "{name}");
        }
        // Encoded, a name never contains the chain separator: `/a` and `a` stay apart.
        assert_ne!(TrustedSet::chain("targets", "/a"), TrustedSet::chain("targets", "a"));
        assert_ne!(TrustedSet::chain("targets/x", "y"), TrustedSet::chain("targets", "x/y"));
    }

    #[test]
    fn one_key_under_two_ids_does_not_meet_a_threshold_of_two() {
        let mut repo = Repo::new();
        let ts = SigningKey::from_seed([2; 32]);
        let root = repo.root(1, &ts, &[&SigningKey::from_seed([1; 32])]);
        repo.tree(&[("targets", &[("acme", true)], &[]), ("acme", &[], &["acme/x"])], &ts);
        // Rewrite targets: acme needs 2 signatures, by "k1" and "k2", both the delegate key.
        let mut targets = writer::targets(1, LATER);
        let by_delegate = RoleKeySet::new(vec![repo.delegate.public()], 2);
        writer::set_delegation(&mut targets, "acme", &by_delegate, Coverage::Patterns(vec!["acme/*".into()]), true);
        let d = targets.delegations.as_mut().unwrap();
        let key = d.keys.values().next().unwrap().clone();
        d.keys = BTreeMap::from([("k1".to_owned(), key.clone()), ("k2".to_owned(), key)]);
        d.roles[0].keyids = vec!["k1".into(), "k2".into()];
        let targets = sign(targets, &[&repo.online]);
        // acme signed under both ids.
        let mut acme: serde_json::Value = serde_json::from_slice(&repo.files["1.acme.json"]).unwrap();
        let sig = acme["signatures"][0]["sig"].clone();
        acme["signatures"] = serde_json::json!([{"keyid": "k1", "sig": sig}, {"keyid": "k2", "sig": sig}]);
        let acme = serde_json::to_vec(&acme).unwrap();
        let listed = [("targets".to_owned(), 1, targets.len() as u64), ("acme".to_owned(), 1, acme.len() as u64)];
        let snapshot = sign(writer::next_snapshot(None, 1, LATER, &listed), &[&repo.online]);
        let timestamp = sign(writer::timestamp(1, LATER, 1, &snapshot), &[&ts]);
        repo.files.extend([
            ("1.targets.json".to_owned(), targets),
            ("1.acme.json".to_owned(), acme),
            ("1.snapshot.json".to_owned(), snapshot),
            ("timestamp.json".to_owned(), timestamp),
        ]);
        let mut set = repo.refresh(&root, Cached::default()).unwrap();
        let err = repo.search(&mut set, "acme/x").unwrap_err();
        assert!(
            matches!(
                err,
                WorkflowError::Client(ClientError::Envelope {
                    source: EnvelopeError::ThresholdNotMet { valid: 1, threshold: 2, .. },
                    ..
                })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn root_rotation_is_walked_one_version_at_a_time_and_a_bad_one_stops_it() {
        let mut repo = Repo::new();
        let ts = SigningKey::from_seed([2; 32]);
        let root_key = SigningKey::from_seed([1; 32]);
        let root = repo.root(1, &ts, &[&root_key]);
        repo.root(2, &ts, &[&root_key]);
        // Version 3 signed by a key that is not a root key: threshold not met.
        repo.root(3, &ts, &[&SigningKey::from_seed([7; 32])]);
        repo.publish(1, "acme/app.bin", &ts);
        let err = repo.refresh(&root, Cached::default()).unwrap_err();
        assert!(matches!(err, WorkflowError::Client(ClientError::Envelope { .. })), "{err:?}");
    }

    #[test]
    fn a_role_verified_under_one_delegator_is_not_trusted_under_another() {
        let mut repo = Repo::new();
        let ts = SigningKey::from_seed([2; 32]);
        let root = repo.root(1, &ts, &[&SigningKey::from_seed([1; 32])]);
        // The publisher names its own sub-role like the group's approval role.
        repo.publish_with_sub("approvals.g2", &ts);
        let mut set = repo.refresh(&root, Cached::default()).unwrap();
        assert!(repo.search(&mut set, "acme/x.bin").unwrap().is_some(), "trusted under acme");
        assert!(set.targets("targets/acme/approvals.g2").is_some());
        assert!(set.targets("targets/approvals.g2").is_none(), "not trusted as the group's approval role");
        let forged = repo.files["1.approvals.g2.json"].clone();
        let err = set.update_delegated_targets(&forged, "approvals.g2", "targets").unwrap_err();
        assert!(matches!(err, ClientError::Envelope { .. }), "{err:?}");
    }

    #[test]
    fn delegated_roles_named_like_top_level_roles_are_refused() {
        // (`targets` cannot even be listed twice in a snapshot.)
        for reserved in ["root", "timestamp", "snapshot"] {
            let mut repo = Repo::new();
            let ts = SigningKey::from_seed([2; 32]);
            let root = repo.root(1, &ts, &[&SigningKey::from_seed([1; 32])]);
            repo.publish_with_sub(reserved, &ts);
            let mut set = repo.refresh(&root, Cached::default()).unwrap();
            assert!(repo.search(&mut set, "acme/x.bin").is_err(), "{reserved}");
            // Even offered its own bytes directly, the role is not trusted under that name.
            let err = set.update_delegated_targets(&repo.files["sub-doc"], reserved, "targets/acme").unwrap_err();
            assert!(matches!(err, ClientError::NotDelegated { .. }), "{reserved}: {err:?}");
        }
    }
}
