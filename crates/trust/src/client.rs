//! The trusted metadata set of a TUF client (specification section 5), without I/O.
//!
//! The caller fetches bytes and feeds them in the order the specification's client workflow
//! requires: root versions one at a time, then timestamp, snapshot, targets and the
//! delegated roles it needs. Each update is checked in full before it replaces anything, so a
//! refused document changes nothing, with one exception the specification makes on purpose:
//! a timestamp or snapshot whose signature verified but which is expired (or, for a cached
//! snapshot, not the version the timestamp names) is kept as the reference later versions
//! are checked against for rollback, and nothing is loaded below it. `now` is the caller's
//! trusted time.

use std::collections::BTreeMap;

use ringfence_proto::limits::{MAX_METADATA_BYTES, MAX_ROOT_BYTES, MAX_TIMESTAMP_BYTES};
use ringfence_proto::tuf::{DelegatedRole, MetaFile, Root, Snapshot, Targets, Timestamp};

use crate::envelope::{Envelope, EnvelopeError};
use crate::paths::role_covers;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("{role}: {source}")]
    Envelope { role: String, source: EnvelopeError },
    #[error("{role} expired at {expires}")]
    Expired { role: String, expires: String },
    #[error("{role} version {got} is older than the trusted version {trusted} (rollback)")]
    Rollback { role: String, trusted: u64, got: u64 },
    #[error("{role} version {got}, expected {expected}")]
    BadVersion { role: String, expected: u64, got: u64 },
    #[error("{role} does not match the length or hash recorded for it")]
    LengthOrHashMismatch { role: String },
    #[error("{role} is not listed in {listing}")]
    NotListed { role: String, listing: &'static str },
    #[error("{role} cannot be loaded before {needed}")]
    OutOfOrder { role: String, needed: &'static str },
    #[error("{role} is not delegated by {delegator}")]
    NotDelegated { role: String, delegator: String },
}

/// The client's view of the repository: every document in it has been verified.
#[derive(Debug, Clone)]
pub struct TrustedSet {
    now: i64,
    root: Envelope<Root>,
    timestamp: Option<Envelope<Timestamp>>,
    snapshot: Option<Envelope<Snapshot>>,
    targets: BTreeMap<String, Envelope<Targets>>,
}

fn env_err(role: &str) -> impl FnOnce(EnvelopeError) -> ClientError + '_ {
    move |source| ClientError::Envelope { role: role.into(), source }
}

fn check_expiry(role: &str, expires: &str, now: i64) -> Result<(), ClientError> {
    let at = crate::expiry::parse(expires)
        .map_err(|e| ClientError::Envelope { role: role.into(), source: EnvelopeError::Malformed(e.to_string()) })?;
    if at <= now {
        return Err(ClientError::Expired { role: role.into(), expires: expires.into() });
    }
    Ok(())
}

fn check_length_and_hashes(role: &str, meta: &MetaFile, bytes: &[u8]) -> Result<(), ClientError> {
    let mismatch = || ClientError::LengthOrHashMismatch { role: role.into() };
    if let Some(length) = meta.length
        && bytes.len() as u64 != length
    {
        return Err(mismatch());
    }
    if let Some(hashes) = &meta.hashes {
        // Every listed algorithm this client knows must match; none known is a refusal.
        crate::digest::Digests::of(bytes).check(hashes).map_err(|_| mismatch())?;
    }
    Ok(())
}

impl TrustedSet {
    /// Start from a trusted root (pinned at enrollment or shipped): it must be signed by its
    /// own root threshold. Expiry is checked once the chain of newer roots has been walked.
    pub fn new(root_bytes: &[u8], now: i64) -> Result<Self, ClientError> {
        let root = Envelope::<Root>::parse(root_bytes, MAX_ROOT_BYTES as usize).map_err(env_err("root"))?;
        verify_root_by(&root, &root.signed)?;
        Ok(Self { now, root, timestamp: None, snapshot: None, targets: BTreeMap::new() })
    }

    pub fn root(&self) -> &Envelope<Root> {
        &self.root
    }
    pub fn timestamp(&self) -> Option<&Envelope<Timestamp>> {
        self.timestamp.as_ref()
    }
    pub fn snapshot(&self) -> Option<&Envelope<Snapshot>> {
        self.snapshot.as_ref()
    }
    /// A trusted targets role by its delegation chain: `targets` for the top-level role,
    /// `targets/<role>/<role>...` for delegated ones (see [`TrustedSet::chain`]).
    pub fn targets(&self, chain: &str) -> Option<&Envelope<Targets>> {
        self.targets.get(chain)
    }

    /// The chain of `role` delegated by the role at `parent` (`root` for top-level targets).
    ///
    /// Delegated roles are trusted per chain: a document verified as a role one delegator
    /// names is never used where another delegator names a role of the same name.
    /// Role names are opaque strings (`/a`, `../a` are valid): each is percent-encoded in the
    /// chain, so `/` only ever separates roles.
    pub fn chain(parent: &str, role: &str) -> String {
        let role = crate::workflow::encode_role(role);
        if parent == "root" { role } else { format!("{parent}/{role}") }
    }

    /// Load a cached snapshot as the reference for rollback checks only. It must be signed by
    /// the root's snapshot keys; its freshness does not matter, and it is never used to
    /// find targets (a snapshot that is not the one the timestamp names is refused then).
    pub fn load_snapshot_reference(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let new = Envelope::<Snapshot>::parse(bytes, MAX_METADATA_BYTES as usize).map_err(env_err("snapshot"))?;
        verify_top_level(&new, &self.root.signed, "snapshot")?;
        self.snapshot = Some(new);
        Ok(())
    }

    /// Accept root version N+1, signed by the threshold of version N and of itself.
    pub fn update_root(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if self.timestamp.is_some() {
            return Err(ClientError::OutOfOrder { role: "root".into(), needed: "the root chain is walked first" });
        }
        let new = Envelope::<Root>::parse(bytes, MAX_ROOT_BYTES as usize).map_err(env_err("root"))?;
        verify_root_by(&new, &self.root.signed)?;
        let expected = self.root.signed.version + 1;
        if new.signed.version != expected {
            return Err(ClientError::BadVersion { role: "root".into(), expected, got: new.signed.version });
        }
        verify_root_by(&new, &new.signed)?;
        self.root = new;
        Ok(())
    }

    /// Accept a timestamp signed by root's timestamp keys, not older than the trusted one.
    /// Returns false (and keeps the trusted one) when the version is the same.
    pub fn update_timestamp(&mut self, bytes: &[u8]) -> Result<bool, ClientError> {
        let root = &self.root.signed;
        check_expiry("root", &root.expires, self.now)?;
        let new = Envelope::<Timestamp>::parse(bytes, MAX_TIMESTAMP_BYTES as usize).map_err(env_err("timestamp"))?;
        verify_top_level(&new, root, "timestamp")?;
        let new_meta = new
            .signed
            .meta
            .get("snapshot.json")
            .ok_or(ClientError::NotListed { role: "snapshot".into(), listing: "timestamp" })?;
        if let Some(old) = &self.timestamp {
            if new.signed.version < old.signed.version {
                return Err(ClientError::Rollback {
                    role: "timestamp".into(),
                    trusted: old.signed.version,
                    got: new.signed.version,
                });
            }
            if new.signed.version == old.signed.version {
                check_expiry("timestamp", &old.signed.expires, self.now)?;
                return Ok(false);
            }
            if let Some(old_meta) = old.signed.meta.get("snapshot.json")
                && new_meta.version < old_meta.version
            {
                return Err(ClientError::Rollback {
                    role: "snapshot".into(),
                    trusted: old_meta.version,
                    got: new_meta.version,
                });
            }
        }
        // Kept even when expired, as the reference later versions are checked against; the
        // expiry then stops the snapshot from loading.
        let expires = new.signed.expires.clone();
        self.timestamp = Some(new);
        check_expiry("timestamp", &expires, self.now)?;
        Ok(true)
    }

    /// The trusted timestamp, if it is fresh; and the snapshot version it names.
    fn final_timestamp(&self) -> Result<&MetaFile, ClientError> {
        let timestamp =
            self.timestamp.as_ref().ok_or(ClientError::OutOfOrder { role: "snapshot".into(), needed: "timestamp" })?;
        check_expiry("timestamp", &timestamp.signed.expires, self.now)?;
        timestamp
            .signed
            .meta
            .get("snapshot.json")
            .ok_or(ClientError::NotListed { role: "snapshot".into(), listing: "timestamp" })
    }

    /// The trusted snapshot, if it is fresh and the one the timestamp names.
    fn final_snapshot(&self) -> Result<&Envelope<Snapshot>, ClientError> {
        let meta = self.final_timestamp()?;
        let snapshot =
            self.snapshot.as_ref().ok_or(ClientError::OutOfOrder { role: "targets".into(), needed: "snapshot" })?;
        check_expiry("snapshot", &snapshot.signed.expires, self.now)?;
        if snapshot.signed.version != meta.version {
            return Err(ClientError::BadVersion {
                role: "snapshot".into(),
                expected: meta.version,
                got: snapshot.signed.version,
            });
        }
        Ok(snapshot)
    }

    /// Accept the snapshot the trusted timestamp names. `from_cache` skips the hash check for
    /// a copy the client stored itself earlier. A cached snapshot that is expired or older
    /// than the timestamp names is kept only as the reference for rollback checks.
    pub fn update_snapshot(&mut self, bytes: &[u8], from_cache: bool) -> Result<(), ClientError> {
        let meta = self.final_timestamp()?.clone();
        let max = meta.length.unwrap_or(MAX_METADATA_BYTES).min(MAX_METADATA_BYTES) as usize;
        if !from_cache {
            check_length_and_hashes("snapshot", &meta, bytes)?;
        }
        let new = Envelope::<Snapshot>::parse(bytes, max).map_err(env_err("snapshot"))?;
        verify_top_level(&new, &self.root.signed, "snapshot")?;
        if let Some(old) = &self.snapshot {
            for (name, old_meta) in &old.signed.meta {
                match new.signed.meta.get(name) {
                    None => return Err(ClientError::NotListed { role: name.clone(), listing: "snapshot" }),
                    Some(m) if m.version < old_meta.version => {
                        return Err(ClientError::Rollback {
                            role: name.clone(),
                            trusted: old_meta.version,
                            got: m.version,
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        self.snapshot = Some(new);
        self.final_snapshot().map(|_| ())
    }

    /// Accept top-level targets.
    pub fn update_targets(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.update_delegated_targets(bytes, "targets", "root")
    }

    /// Accept the targets metadata of `role`, delegated by the trusted role at chain
    /// `delegator` (`root` for top-level targets). Stored at `chain(delegator, role)`.
    pub fn update_delegated_targets(&mut self, bytes: &[u8], role: &str, delegator: &str) -> Result<(), ClientError> {
        // A delegated role named like a top-level role could stand in for one in storage or
        // lookups: never trusted (python-tuf refuses such delegations too). Any other name is
        // an opaque string, kept apart in chains and file names by percent-encoding.
        let reserved = ["root", "targets", "snapshot", "timestamp"].contains(&role);
        if (delegator != "root" && reserved) || role.is_empty() {
            return Err(ClientError::NotDelegated { role: role.into(), delegator: delegator.into() });
        }
        let snapshot = self.final_snapshot()?;
        let meta = snapshot
            .signed
            .meta
            .get(&format!("{role}.json"))
            .ok_or(ClientError::NotListed { role: role.into(), listing: "snapshot" })?;
        check_length_and_hashes(role, meta, bytes)?;
        let max = meta.length.unwrap_or(MAX_METADATA_BYTES).min(MAX_METADATA_BYTES) as usize;
        let new = Envelope::<Targets>::parse(bytes, max).map_err(env_err(role))?;
        if delegator == "root" {
            if role != "targets" {
                return Err(ClientError::NotDelegated { role: role.into(), delegator: delegator.into() });
            }
            verify_top_level(&new, &self.root.signed, "targets")?;
        } else {
            let parent = self
                .targets
                .get(delegator)
                .ok_or(ClientError::OutOfOrder { role: role.into(), needed: "its delegator" })?;
            let delegations = parent
                .signed
                .delegations
                .as_ref()
                .ok_or(ClientError::NotDelegated { role: role.into(), delegator: delegator.into() })?;
            let entry = delegations
                .roles
                .iter()
                .find(|r| r.name == role)
                .ok_or(ClientError::NotDelegated { role: role.into(), delegator: delegator.into() })?;
            new.verify(role, &delegations.keys, &entry.keyids, entry.threshold).map_err(env_err(role))?;
        }
        if new.signed.version != meta.version {
            return Err(ClientError::BadVersion { role: role.into(), expected: meta.version, got: new.signed.version });
        }
        check_expiry(role, &new.signed.expires, self.now)?;
        self.targets.insert(Self::chain(delegator, role), new);
        Ok(())
    }

    /// Every trusted targets-type role (top-level and delegated), in chain order.
    pub fn all_targets(&self) -> impl Iterator<Item = &Envelope<Targets>> {
        self.targets.values()
    }

    /// The roles the role at chain `delegator` delegates `path` to, in order, each with its
    /// terminating flag.
    pub fn delegations_for(&self, delegator: &str, path: &str) -> Vec<DelegatedRole> {
        let Some(parent) = self.targets.get(delegator) else { return Vec::new() };
        let Some(delegations) = &parent.signed.delegations else { return Vec::new() };
        delegations.roles.iter().filter(|r| role_covers(r, path)).cloned().collect()
    }
}

fn verify_root_by(new: &Envelope<Root>, trusted: &Root) -> Result<(), ClientError> {
    let role = trusted.roles.get("root").ok_or(ClientError::NotListed { role: "root".into(), listing: "root" })?;
    new.verify("root", &trusted.keys, &role.keyids, role.threshold).map_err(env_err("root"))?;
    Ok(())
}

fn verify_top_level<T>(new: &Envelope<T>, root: &Root, role: &str) -> Result<(), ClientError>
where
    T: serde::de::DeserializeOwned + serde::Serialize + crate::envelope::MetadataType,
{
    let keys = root.roles.get(role).ok_or(ClientError::NotListed { role: role.into(), listing: "root" })?;
    new.verify(role, &root.keys, &keys.keyids, keys.threshold).map_err(env_err(role))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;
    use crate::writer::{self, RoleKeySet};

    const NOW: i64 = 1_800_000_000;

    struct Repo {
        root_key: SigningKey,
        online: SigningKey,
    }

    impl Repo {
        fn new() -> Self {
            Self { root_key: SigningKey::from_seed([1; 32]), online: SigningKey::from_seed([2; 32]) }
        }
        fn root(&self, version: u64, root_keys: &[&SigningKey], threshold: u64, signers: &[&SigningKey]) -> Vec<u8> {
            let roots = RoleKeySet::new(root_keys.iter().map(|k| k.public()).collect(), threshold);
            let online = RoleKeySet::new(vec![self.online.public()], 1);
            let root = writer::root(
                version,
                NOW + 1000,
                &[("root", &roots), ("targets", &online), ("snapshot", &online), ("timestamp", &online)],
            );
            let mut env = Envelope::new(root).unwrap();
            signers.iter().for_each(|k| env.sign(k));
            env.to_bytes().unwrap()
        }
        fn timestamp(&self, version: u64, expires: i64) -> Vec<u8> {
            let mut env = Envelope::new(writer::timestamp(version, expires, version, b"snapshot")).unwrap();
            env.sign(&self.online);
            env.to_bytes().unwrap()
        }
    }

    #[test]
    fn rollback_and_freeze_are_refused() {
        let repo = Repo::new();
        let mut set = TrustedSet::new(&repo.root(1, &[&repo.root_key], 1, &[&repo.root_key]), NOW).unwrap();
        assert_eq!(set.update_timestamp(&repo.timestamp(5, NOW + 100)), Ok(true));
        assert!(matches!(
            set.update_timestamp(&repo.timestamp(4, NOW + 100)),
            Err(ClientError::Rollback { trusted: 5, got: 4, .. })
        ));
        assert_eq!(set.timestamp().map(|t| t.signed.version), Some(5), "a refused rollback changes nothing");
        assert_eq!(set.update_timestamp(&repo.timestamp(5, NOW + 100)), Ok(false));
        // Freeze: an expired timestamp is refused, but stays the reference for rollback checks,
        // and nothing below it loads.
        assert!(matches!(set.update_timestamp(&repo.timestamp(6, NOW - 1)), Err(ClientError::Expired { .. })));
        assert!(matches!(set.update_snapshot(b"{}", false), Err(ClientError::Expired { .. })));
        assert!(matches!(set.update_timestamp(&repo.timestamp(5, NOW + 100)), Err(ClientError::Rollback { .. })));
        assert!(matches!(set.update_timestamp(&repo.timestamp(6, NOW + 100)), Err(ClientError::Expired { .. })));
        assert_eq!(set.update_timestamp(&repo.timestamp(7, NOW + 100)), Ok(true));
    }

    #[test]
    fn root_rotation_needs_both_thresholds_and_the_next_version() {
        let repo = Repo::new();
        let new_keys = [SigningKey::from_seed([3; 32]), SigningKey::from_seed([4; 32])];
        let mut set = TrustedSet::new(&repo.root(1, &[&repo.root_key], 1, &[&repo.root_key]), NOW).unwrap();
        // New root 2-of-2 signed by the old key and only one new key: refused.
        let weak = repo.root(2, &[&new_keys[0], &new_keys[1]], 2, &[&repo.root_key, &new_keys[0]]);
        assert!(matches!(
            set.update_root(&weak),
            Err(ClientError::Envelope { source: EnvelopeError::ThresholdNotMet { valid: 1, threshold: 2, .. }, .. })
        ));
        // Signed by the new keys only: the old root's threshold is not met.
        let orphan = repo.root(2, &[&new_keys[0], &new_keys[1]], 2, &[&new_keys[0], &new_keys[1]]);
        assert!(matches!(
            set.update_root(&orphan),
            Err(ClientError::Envelope { source: EnvelopeError::ThresholdNotMet { valid: 0, .. }, .. })
        ));
        // Skipping a version is refused.
        let skip = repo.root(3, &[&new_keys[0], &new_keys[1]], 2, &[&repo.root_key, &new_keys[0], &new_keys[1]]);
        assert!(matches!(set.update_root(&skip), Err(ClientError::BadVersion { expected: 2, got: 3, .. })));
        assert_eq!(set.root().signed.version, 1);
        let good = repo.root(2, &[&new_keys[0], &new_keys[1]], 2, &[&repo.root_key, &new_keys[0], &new_keys[1]]);
        assert_eq!(set.update_root(&good), Ok(()));
        assert_eq!(set.root().signed.version, 2);
    }
}
