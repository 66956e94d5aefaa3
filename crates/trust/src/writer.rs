//! Building the next version of metadata documents.
//!
//! The writer is incremental: adding one target touches one hashed bin, the snapshot and the
//! timestamp; everything else keeps its version and bytes.

use std::collections::BTreeMap;

use ringfence_proto::tuf::{
    DelegatedRole, Delegations, MetaFile, RoleKeys, Root, SPEC_VERSION, Snapshot, TargetFile, Targets, Timestamp,
};
use ringfence_proto::{PublisherName, Sha256Hex};
use serde_json::Value;

use crate::keys::PublicKey;
use crate::paths::bin_prefixes;

/// The keys and threshold of a role.
#[derive(Debug, Clone)]
pub struct RoleKeySet {
    pub keys: Vec<PublicKey>,
    pub threshold: u64,
}

impl RoleKeySet {
    pub fn new(keys: Vec<PublicKey>, threshold: u64) -> Self {
        Self { keys, threshold }
    }

    pub fn keyids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.keys.iter().map(|k| k.key_id().to_string()).collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// A root with the four top-level roles.
pub fn root(version: u64, expires: i64, roles: &[(&str, &RoleKeySet)]) -> Root {
    let mut keys = BTreeMap::new();
    let mut role_map = BTreeMap::new();
    for (name, set) in roles {
        for key in &set.keys {
            keys.insert(key.key_id().to_string(), key.to_tuf());
        }
        role_map.insert(
            (*name).to_owned(),
            RoleKeys { keyids: set.keyids(), threshold: set.threshold, unrecognized: BTreeMap::new() },
        );
    }
    Root {
        type_: "root".into(),
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version,
        expires: crate::expiry::format(expires),
        keys,
        roles: role_map,
        unrecognized: BTreeMap::new(),
    }
}

pub fn targets(version: u64, expires: i64) -> Targets {
    Targets {
        type_: "targets".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires: crate::expiry::format(expires),
        targets: BTreeMap::new(),
        delegations: None,
        windows: None,
        unrecognized: BTreeMap::new(),
    }
}

/// How a delegation decides which paths it covers.
#[derive(Debug, Clone)]
pub enum Coverage {
    Patterns(Vec<String>),
    HashPrefixes(Vec<String>),
}

/// Add a delegation to `parent`, or replace the one with the same name in place (keeping the
/// search order). Keys no role uses any more are dropped.
pub fn set_delegation(parent: &mut Targets, name: &str, set: &RoleKeySet, coverage: Coverage, terminating: bool) {
    let delegations = parent.delegations.get_or_insert_with(|| Delegations {
        keys: BTreeMap::new(),
        roles: Vec::new(),
        unrecognized: BTreeMap::new(),
    });
    for key in &set.keys {
        delegations.keys.insert(key.key_id().to_string(), key.to_tuf());
    }
    let (paths, path_hash_prefixes) = match coverage {
        Coverage::Patterns(p) => (Some(p), None),
        Coverage::HashPrefixes(p) => (None, Some(p)),
    };
    let role = DelegatedRole {
        name: name.into(),
        keyids: set.keyids(),
        threshold: set.threshold,
        terminating,
        paths,
        path_hash_prefixes,
        parent: None,
        unrecognized: BTreeMap::new(),
    };
    match delegations.roles.iter_mut().find(|r| r.name == name) {
        // A group keeps its place in the hierarchy when its approvers change.
        Some(existing) => *existing = DelegatedRole { parent: existing.parent.take(), ..role },
        None => delegations.roles.push(role),
    }
    let used: std::collections::BTreeSet<String> = delegations.roles.iter().flat_map(|r| r.keyids.clone()).collect();
    delegations.keys.retain(|id, _| used.contains(id));
}

/// Set (or with `None` clear) the parent of the delegation `name`; false if there is none.
pub fn set_parent(targets: &mut Targets, name: &str, parent: Option<&str>) -> bool {
    let role = targets.delegations.as_mut().and_then(|d| d.roles.iter_mut().find(|r| r.name == name));
    match role {
        Some(role) => {
            role.parent = parent.map(str::to_owned);
            true
        }
        None => false,
    }
}

/// The publisher role: no targets of its own, `16^prefix_len` hashed bins, each signed by the
/// publisher's keys.
pub fn publisher_role(
    publisher: &PublisherName,
    set: &RoleKeySet,
    prefix_len: usize,
    version: u64,
    expires: i64,
) -> Targets {
    let mut role = targets(version, expires);
    for prefix in bin_prefixes(prefix_len) {
        set_delegation(
            &mut role,
            publisher.bin_role(&prefix).as_str(),
            set,
            Coverage::HashPrefixes(vec![prefix.clone()]),
            true,
        );
    }
    role
}

/// What an approval pins of the publisher's entry: SHA-256 of its canonical JSON.
pub fn entry_digest(entry: &TargetFile) -> String {
    crate::canonical::to_canonical(entry).map(|b| crate::sha256_hex(&b)).unwrap_or_default()
}

pub fn target_file(length: u64, sha256: &Sha256Hex, custom: Option<Value>) -> TargetFile {
    TargetFile {
        length,
        hashes: BTreeMap::from([("sha256".to_owned(), sha256.to_string())]),
        custom,
        unrecognized: BTreeMap::new(),
    }
}

pub fn meta_file(version: u64, length: Option<u64>, sha256: Option<&str>) -> MetaFile {
    MetaFile {
        version,
        length,
        hashes: sha256.map(|h| BTreeMap::from([("sha256".to_owned(), h.to_owned())])),
        unrecognized: BTreeMap::new(),
    }
}

/// The next snapshot: the previous one with the changed roles' entries replaced.
pub fn next_snapshot(
    previous: Option<&Snapshot>,
    version: u64,
    expires: i64,
    changed: &[(String, u64, u64)],
) -> Snapshot {
    let mut meta = previous.map(|s| s.meta.clone()).unwrap_or_default();
    for (role, role_version, length) in changed {
        meta.insert(format!("{role}.json"), meta_file(*role_version, Some(*length), None));
    }
    Snapshot {
        type_: "snapshot".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires: crate::expiry::format(expires),
        meta,
        unrecognized: BTreeMap::new(),
    }
}

/// A timestamp naming the snapshot whose bytes are `snapshot_bytes`.
pub fn timestamp(version: u64, expires: i64, snapshot_version: u64, snapshot_bytes: &[u8]) -> Timestamp {
    let sha = crate::sha256_hex(snapshot_bytes);
    Timestamp {
        type_: "timestamp".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires: crate::expiry::format(expires),
        meta: BTreeMap::from([(
            "snapshot.json".to_owned(),
            meta_file(snapshot_version, Some(snapshot_bytes.len() as u64), Some(&sha)),
        )]),
        unrecognized: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;

    #[test]
    fn a_publisher_role_delegates_every_bin_once_with_its_keys() {
        let keys = RoleKeySet::new(vec![SigningKey::from_seed([1; 32]).public()], 1);
        let publisher = PublisherName::parse("acme").unwrap();
        let role = publisher_role(&publisher, &keys, 1, 3, 2_000_000_000);
        let delegations = role.delegations.as_ref().unwrap();
        assert_eq!(delegations.roles.len(), 16);
        assert_eq!(delegations.keys.len(), 1, "one key, listed once");
        for (i, d) in delegations.roles.iter().enumerate() {
            assert_eq!(d.name, format!("publisher.acme.{i:x}"));
            assert_eq!(d.path_hash_prefixes, Some(vec![format!("{i:x}")]));
            assert!(d.terminating && d.paths.is_none());
            assert_eq!((d.keyids.clone(), d.threshold), (keys.keyids(), 1));
        }
        assert_eq!((role.version, role.targets.len()), (3, 0));
    }

    #[test]
    fn the_next_snapshot_changes_only_the_roles_given() {
        let first = next_snapshot(None, 1, 2_000_000_000, &[("targets".into(), 1, 10), ("a".into(), 1, 20)]);
        let second = next_snapshot(Some(&first), 2, 2_000_000_000, &[("a".into(), 2, 21)]);
        assert_eq!(second.version, 2);
        assert_eq!(second.meta["targets.json"], first.meta["targets.json"]);
        assert_eq!((second.meta["a.json"].version, second.meta["a.json"].length), (2, Some(21)));
        let ts = timestamp(5, 2_000_000_000, 2, b"snapshot bytes");
        let meta = &ts.meta["snapshot.json"];
        assert_eq!((meta.version, meta.length), (2, Some(14)));
        assert_eq!(meta.hashes.as_ref().unwrap()["sha256"], crate::sha256_hex(b"snapshot bytes"));
    }

    #[test]
    fn set_delegation_replaces_in_place_and_drops_unused_keys() {
        let a = RoleKeySet::new(vec![SigningKey::from_seed([1; 32]).public()], 1);
        let b = RoleKeySet::new(vec![SigningKey::from_seed([2; 32]).public()], 1);
        let mut t = targets(1, 2_000_000_000);
        set_delegation(&mut t, "x", &a, Coverage::Patterns(vec!["x/*".into()]), true);
        set_delegation(&mut t, "y", &a, Coverage::Patterns(vec!["y/*".into()]), true);
        set_delegation(&mut t, "x", &b, Coverage::Patterns(vec!["x/*".into()]), true);
        let d = t.delegations.unwrap();
        assert_eq!(d.roles.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["x", "y"], "order kept");
        assert_eq!(d.keys.len(), 2);
        assert_eq!(d.roles[0].keyids, b.keyids());
    }
}
