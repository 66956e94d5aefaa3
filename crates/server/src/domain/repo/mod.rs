//! The repository: what is published, what waits for signatures, and the writer that moves a
//! role from one to the other. The only writer of the TUF repository.
//!
//! Every change goes through [`Repository::commit`], which writes the changed roles, a new
//! snapshot and a new timestamp in one database transaction, under one lock. Adding one
//! update therefore rewrites one hashed bin, the snapshot and the timestamp.
//!
//! Split along its seams: this file holds the repository and the steps every change shares
//! (who may sign a role, commit, settle); `lifecycle` (bootstrap, roles newly delegated,
//! renewal, health, self-check), `publish` (content and updates), `approve`, and `signatures`
//! (pending versions, proposals, offline signatures) build on them.

mod approve;
mod cleanup;
pub mod export;
mod holds;
pub use holds::HOLDS_FLOOR;
mod lifecycle;
mod publish;
pub mod served;
mod signatures;

use std::collections::BTreeMap;
use std::sync::Arc;

use ringfence_proto::api::{RoleState, RoleVersion};
use ringfence_proto::limits::MAX_METADATA_BYTES;
use ringfence_proto::names::RoleKind;
use ringfence_proto::tuf::{Key, Root, Snapshot, Targets};
use ringfence_proto::{PublisherName, RoleName};
use ringfence_store::{BlobStore, Database, MetadataRecord, PendingRecord};
use ringfence_tlog::entry::Entry;
use ringfence_trust::envelope::MetadataType;
use ringfence_trust::{Envelope, SigningKey, expiry, policy, writer};

use super::audit::Audit;
use super::error::{Error, Result};
use crate::config::ExpiryPolicy;
use crate::online_keys::OnlineKeys;

/// The actor the audit trail names for the server's own work (bootstrap, prepared roles).
pub const SERVER: &str = "server";

/// Hashed bins per publisher, as a hex prefix length: 2 means 256 bins.
pub const DEFAULT_BIN_PREFIX_LEN: usize = 2;

pub struct Repository {
    db: Arc<dyn Database>,
    blobs: BlobStore,
    audit: Audit,
    /// None on a mirror, which signs nothing: its metadata comes from an upstream.
    keys: Option<OnlineKeys>,
    policy: ExpiryPolicy,
    write_lock: tokio::sync::Mutex<()>,
    served: served::ServedCache,
    holds: holds::HoldsVersion,
    /// Every role's newest version, expiry and whether it is signed offline, as of a timestamp
    /// version (no role changes without a new timestamp): what `health` reports, kept so the
    /// console's dashboard does not look at every delegation on each view.
    expiries: std::sync::Mutex<Option<(u64, Vec<ringfence_proto::api::RoleExpiry>)>>,
}

/// Who may sign a role, as the role that delegates it says.
struct Authority {
    keys: BTreeMap<String, Key>,
    keyids: Vec<String>,
    threshold: u64,
}

fn parse<T>(bytes: &[u8]) -> Result<Envelope<T>>
where
    T: serde::de::DeserializeOwned + serde::Serialize + MetadataType,
{
    Envelope::parse(bytes, MAX_METADATA_BYTES as usize).map_err(Error::internal)
}

fn bad(e: impl std::fmt::Display) -> Error {
    Error::Invalid(e.to_string())
}

fn record<T>(role: &str, env: &Envelope<T>) -> Result<MetadataRecord>
where
    T: serde::de::DeserializeOwned + serde::Serialize + MetadataType,
{
    Ok(MetadataRecord {
        role: role.into(),
        version: env.signed.version(),
        expires: expiry::parse(env.signed.expires()).map_err(Error::internal)?,
        bytes: env.to_bytes().map_err(Error::internal)?,
    })
}

/// The SHA-256 of the canonical `signed` part of a stored metadata document of any type.
fn parse_any_signed(bytes: &[u8]) -> Result<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(Error::internal)?;
    let signed = value.get("signed").ok_or_else(|| Error::internal("a document without signed"))?;
    let canonical = ringfence_trust::canonical::encode(signed).map_err(Error::internal)?;
    Ok(ringfence_trust::sha256_hex(&canonical))
}

/// A transparency-log entry as queued.
pub(super) fn log_entry(entry: &Entry) -> Result<Vec<u8>> {
    entry.to_bytes().map_err(Error::internal)
}

/// The entry of a published metadata version: role, version, SHA-256 and length of its bytes.
fn metadata_entry(record: &MetadataRecord) -> Result<Vec<u8>> {
    log_entry(&Entry::Metadata {
        role: record.role.clone(),
        version: record.version,
        sha256: ringfence_trust::sha256_hex(&record.bytes),
        length: record.bytes.len() as u64,
    })
}

/// The entry of a pending version: role, version, SHA-256 of the bytes its signers sign.
pub(super) fn pending_entry(role: &str, version: u64, canonical_signed: &[u8]) -> Result<Vec<u8>> {
    log_entry(&Entry::Pending { role: role.to_owned(), version, sha256: ringfence_trust::sha256_hex(canonical_signed) })
}

/// The entries of signatures received for `role` version `version`.
pub(super) fn signature_entries(
    role: &str,
    version: u64,
    canonical_signed: &[u8],
    signatures: &[ringfence_proto::tuf::Signature],
) -> Result<Vec<Vec<u8>>> {
    let signed_sha256 = ringfence_trust::sha256_hex(canonical_signed);
    signatures
        .iter()
        .map(|s| {
            log_entry(&Entry::Signature {
                role: role.to_owned(),
                version,
                key_id: s.keyid.clone(),
                signature: s.sig.clone(),
                signed_sha256: signed_sha256.clone(),
            })
        })
        .collect()
}

impl Repository {
    /// `one_writer`: this node is the only one that commits (the embedded database), so the
    /// newest metadata may be served from memory.
    pub fn new(
        db: Arc<dyn Database>,
        blobs: BlobStore,
        audit: Audit,
        keys: Option<OnlineKeys>,
        policy: ExpiryPolicy,
        one_writer: bool,
    ) -> Self {
        let served = served::ServedCache::new(one_writer);
        let holds = holds::HoldsVersion::new(one_writer);
        let expiries = std::sync::Mutex::new(None);
        Self { db, blobs, audit, keys, policy, write_lock: tokio::sync::Mutex::new(()), served, holds, expiries }
    }

    /// Metadata changed behind this server's back (a test playing a thief who writes the
    /// database, a restore): forget the newest versions kept in memory.
    pub fn metadata_changed_elsewhere(&self) {
        self.served.forget_all();
        self.holds.forget();
        if let Ok(mut kept) = self.expiries.lock() {
            *kept = None;
        }
    }

    /// After a restore: the next version of a targets-type role past its floor, signed at once
    /// when the online keys may sign it, else prepared for its key holders. A pending version
    /// the backup held at or below the floor is dropped first (devices may trust its number).
    pub async fn move_past_floor(&self, role: &RoleName, now: i64) -> Result<RoleState> {
        let _guard = self.exclusive().await?;
        self.change_delegated(role, now, |_| Ok(())).await
    }

    /// Drop a pending version of a targets-type role at or below its floor (devices or signers
    /// may know that number with other contents).
    pub async fn drop_pending_at_or_below_floor(&self, role: &RoleName) -> Result<()> {
        let _guard = self.exclusive().await?;
        let floor = self.db.version_floor(role.as_str()).await?;
        if let Some(pending) = self.db.pending(role.as_str()).await?
            && parse::<Targets>(&pending.bytes)?.signed.version <= floor
        {
            self.db.delete_pending(role.as_str()).await?;
        }
        Ok(())
    }

    /// Sign snapshot and timestamp again (past their floors): their new versions.
    pub async fn resign_snapshot_and_timestamp(&self, now: i64) -> Result<Vec<RoleVersion>> {
        let _guard = self.exclusive().await?;
        self.commit(Vec::new(), None, now).await?;
        let mut out = Vec::new();
        for role in [RoleName::snapshot(), RoleName::timestamp()] {
            let version = self.db.latest_metadata(role.as_str()).await?.map_or(0, |r| r.version);
            out.push(RoleVersion { role, version });
        }
        Ok(out)
    }

    /// The version that follows `current` for `role`: one more, or past the floor a restore
    /// set (versions devices may trust from before the restore are never signed again).
    pub(crate) async fn next_version(&self, role: &str, current: u64) -> Result<u64> {
        let floor = self.db.version_floor(role).await?;
        current.max(floor).checked_add(1).ok_or_else(|| Error::internal("version overflow"))
    }

    /// Keep the newest metadata and the holds version in memory until a moment, or stop (on a
    /// shared database: only while this node hears the other nodes' commits).
    pub fn keep_in_memory(&self, keep: crate::domain::kept::Keep) {
        self.served.keep_until(keep);
        self.holds.keep_until(keep);
    }

    /// Another node committed newest metadata: forget what was kept of it.
    pub fn metadata_committed_elsewhere(&self) {
        self.served.committed();
    }

    /// Another node published rollout holds: read their version again.
    pub fn holds_published_elsewhere(&self) {
        self.holds.forget();
    }

    /// The newest version of `role` as served, never below `seen` while the database has a
    /// version that high: a client that already trusts `seen` (from another node, in the moment
    /// before this node heard of that node's commit) makes this node read the database again.
    pub async fn served_version_after(&self, role: &RoleName, seen: u64) -> Result<u64> {
        let version = self.served_version(role).await?;
        if version >= seen {
            return Ok(version);
        }
        let read_at = self.served.generation();
        let Some(bytes) = self.metadata(role, None).await? else { return Ok(0) };
        let served = served::Served::new(bytes);
        self.served.put(role.as_str(), None, &served, read_at);
        Ok(served.version)
    }

    /// The newest version of `role` as served (0 when there is none).
    pub async fn served_version(&self, role: &RoleName) -> Result<u64> {
        Ok(self.served_metadata(role, None).await?.map_or(0, |s| s.version))
    }

    /// A metadata file as the device listener serves it (from memory when it may be).
    pub async fn served_metadata(&self, role: &RoleName, version: Option<u64>) -> Result<Option<served::Served>> {
        if let Some(hit) = self.served.get(role.as_str(), version) {
            return Ok(Some(hit));
        }
        let read_at = self.served.generation();
        let Some(bytes) = self.metadata(role, version).await? else { return Ok(None) };
        let served = served::Served::new(bytes);
        self.served.put(role.as_str(), version, &served, read_at);
        Ok(Some(served))
    }

    /// A published metadata file exactly as served: the given version, or the latest.
    pub async fn metadata(&self, role: &RoleName, version: Option<u64>) -> Result<Option<Vec<u8>>> {
        let record = match version {
            Some(v) => self.db.metadata_version(role.as_str(), v).await?,
            None => self.db.latest_metadata(role.as_str()).await?,
        };
        Ok(record.map(|r| r.bytes))
    }

    /// One writer of role versions at a time: in this node (a mutex) and across the nodes that
    /// share the database (`Section::Repository`, a database lock on PostgreSQL), so two nodes
    /// never prepare two different versions of one role with the same number.
    async fn exclusive(&self) -> Result<(tokio::sync::MutexGuard<'_, ()>, ringfence_store::ExclusiveGuard)> {
        let local = self.write_lock.lock().await;
        let shared = self.db.exclusive(ringfence_store::Section::Repository).await?;
        Ok((local, shared))
    }

    /// The online keys; a mirror has none and refuses whatever would need one.
    pub fn online_keys(&self) -> Result<&OnlineKeys> {
        self.keys.as_ref().ok_or_else(|| {
            Error::Conflict(
                "this server is a mirror: it holds no signing keys and publishes, approves and signs nothing \
                 (do that on its upstream and bring the change over)"
                    .into(),
            )
        })
    }

    /// Whether this server is a mirror of another's repository (it holds no online keys).
    pub fn is_mirror(&self) -> bool {
        self.keys.is_none()
    }

    /// The online keys that may sign delegated roles, by key id (none on a mirror).
    fn delegated_signers(&self) -> BTreeMap<String, &SigningKey> {
        self.keys.as_ref().map(OnlineKeys::delegated_signers).unwrap_or_default()
    }

    async fn latest<T>(&self, role: &str) -> Result<Option<Envelope<T>>>
    where
        T: serde::de::DeserializeOwned + serde::Serialize + MetadataType,
    {
        match self.db.latest_metadata(role).await? {
            Some(r) => Ok(Some(parse(&r.bytes)?)),
            None => Ok(None),
        }
    }

    async fn latest_root(&self) -> Result<Envelope<Root>> {
        self.latest::<Root>("root").await?.ok_or_else(|| Error::internal("repository has no root"))
    }

    async fn authority(&self, role: &RoleName) -> Result<Authority> {
        let from_delegator = |delegator: Envelope<Targets>| -> Result<Authority> {
            let delegations = delegator.signed.delegations.ok_or(Error::NotFound)?;
            let entry = delegations.roles.iter().find(|r| r.name == role.as_str()).ok_or(Error::NotFound)?;
            Ok(Authority { keys: delegations.keys.clone(), keyids: entry.keyids.clone(), threshold: entry.threshold })
        };
        match role.kind() {
            RoleKind::Root | RoleKind::Targets | RoleKind::Snapshot | RoleKind::Timestamp => {
                let root = self.latest_root().await?;
                let keys = root.signed.roles.get(role.as_str()).ok_or(Error::NotFound)?;
                Ok(Authority { keys: root.signed.keys.clone(), keyids: keys.keyids.clone(), threshold: keys.threshold })
            }
            RoleKind::Publisher(_) | RoleKind::Approval(_) => {
                from_delegator(self.latest::<Targets>("targets").await?.ok_or(Error::NotFound)?)
            }
            RoleKind::PublisherBin(publisher, _) => {
                from_delegator(self.latest::<Targets>(publisher.role().as_str()).await?.ok_or(Error::NotFound)?)
            }
        }
    }

    /// Whether `role` version `version` with these signed bytes is a pending version not on
    /// record yet (new, or its content changed since it was recorded): it gets a log entry.
    pub(super) async fn pending_changes(&self, role: &str, version: u64, canonical_signed: &[u8]) -> Result<bool> {
        Ok(match self.db.pending(role).await? {
            Some(p) if p.version == version => {
                parse_any_signed(&p.bytes)? != ringfence_trust::sha256_hex(canonical_signed)
            }
            _ => true,
        })
    }

    /// Write the changed roles plus a new snapshot and timestamp, atomically, with their log
    /// entries.
    async fn commit(
        &self,
        roles: Vec<(RoleName, Envelope<Targets>)>,
        root: Option<Envelope<Root>>,
        now: i64,
    ) -> Result<Vec<RoleVersion>> {
        self.commit_logged(roles, root, Vec::new(), now).await
    }

    /// [`Repository::commit`], queueing `log` (the entries of what led to it) too.
    async fn commit_logged(
        &self,
        roles: Vec<(RoleName, Envelope<Targets>)>,
        root: Option<Envelope<Root>>,
        mut log: Vec<Vec<u8>>,
        now: i64,
    ) -> Result<Vec<RoleVersion>> {
        let previous = self.latest::<Snapshot>("snapshot").await?;
        let previous_ts = self.db.latest_metadata("timestamp").await?;
        let mut records = Vec::new();
        let mut changed = Vec::new();
        let mut published = Vec::new();
        let mut clear = Vec::new();
        if let Some(root) = &root {
            records.push(record("root", root)?);
            published.push(RoleVersion { role: RoleName::root(), version: root.signed.version });
            clear.push("root".to_owned());
        }
        for (name, env) in &roles {
            let r = record(name.as_str(), env)?;
            changed.push((name.to_string(), r.version, r.bytes.len() as u64));
            published.push(RoleVersion { role: name.clone(), version: r.version });
            clear.push(name.to_string());
            records.push(r);
        }
        let snapshot_version = self.next_version("snapshot", previous.as_ref().map_or(0, |s| s.signed.version)).await?;
        let snapshot = writer::next_snapshot(
            previous.as_ref().map(|s| &s.signed),
            snapshot_version,
            now + self.policy.snapshot_secs,
            &changed,
        );
        let mut snapshot = Envelope::new(snapshot).map_err(Error::internal)?;
        snapshot.sign(&self.online_keys()?.snapshot);
        let snapshot_record = record("snapshot", &snapshot)?;
        let timestamp_version = self.next_version("timestamp", previous_ts.map_or(0, |t| t.version)).await?;
        let timestamp = writer::timestamp(
            timestamp_version,
            now + self.policy.timestamp_secs,
            snapshot_version,
            &snapshot_record.bytes,
        );
        let mut timestamp = Envelope::new(timestamp).map_err(Error::internal)?;
        timestamp.sign(&self.online_keys()?.timestamp);
        records.push(snapshot_record);
        records.push(record("timestamp", &timestamp)?);
        for r in &records {
            log.push(metadata_entry(r)?);
        }
        // What was kept as newest may be old from here on, whatever happens (even if this
        // future is dropped while the database commits).
        let _committing = self.served.committing();
        self.db.publish(&records, &clear, &log).await?;
        Ok(published)
    }

    /// The server's keys that may sign `role`. Only roles the offline-signed top-level targets
    /// puts online by design: an approval role, or a publisher role and its bins, whose
    /// top-level delegation the online keys meet the threshold of (`pilot`'s auto-approver,
    /// a vendor-import publisher). Any other role, whatever keys a delegation below the top
    /// level names, waits for its offline key holders.
    async fn online_signers(&self, role: &RoleName, authority: &Authority) -> Result<Vec<&SigningKey>> {
        let top_entry = match role.kind() {
            RoleKind::Approval(group) => group.approval_role(),
            RoleKind::Publisher(publisher) | RoleKind::PublisherBin(publisher, _) => publisher.role(),
            _ => return Ok(Vec::new()),
        };
        let Some(top) = self.latest::<Targets>("targets").await? else { return Ok(Vec::new()) };
        let Some(entry) =
            top.signed.delegations.as_ref().and_then(|d| d.roles.iter().find(|r| r.name == top_entry.as_str()))
        else {
            return Ok(Vec::new());
        };
        let signers = self.delegated_signers();
        let online = entry.keyids.iter().filter(|id| signers.contains_key(*id)).count() as u64;
        if entry.threshold == 0 || online < entry.threshold {
            return Ok(Vec::new());
        }
        let keys: Vec<&SigningKey> = authority.keyids.iter().filter_map(|id| signers.get(id).copied()).collect();
        Ok(if keys.len() as u64 >= authority.threshold { keys } else { Vec::new() })
    }

    /// The bin prefix length of `publisher`'s published role, which must keep the layout.
    async fn bin_prefix_len(&self, publisher: &PublisherName) -> Result<usize> {
        let unknown = || bad(format!("unknown publisher {publisher}"));
        let top = self.latest::<Targets>("targets").await?.ok_or_else(unknown)?;
        let doc = self.latest::<Targets>(publisher.role().as_str()).await?.ok_or_else(unknown)?;
        let delegations = top.signed.delegations.as_ref().ok_or_else(unknown)?;
        let entry = delegations.roles.iter().find(|r| r.name == publisher.role().as_str()).ok_or_else(unknown)?;
        policy::check_publisher(publisher, &doc.signed, entry, &delegations.keys)
            .map_err(|e| Error::Conflict(format!("the published {}: {e}", publisher.role())))
    }

    /// The next version of a delegated targets-type role: the pending one if there is one,
    /// else the published one plus one. `change` edits it. Signed at once when the server's
    /// online keys meet the role's threshold; otherwise held as pending.
    async fn change_delegated(
        &self,
        role: &RoleName,
        now: i64,
        change: impl FnOnce(&mut Targets) -> Result<()>,
    ) -> Result<RoleState> {
        let authority = self.authority(role).await?;
        let mut next = match self.db.pending(role.as_str()).await? {
            Some(p) => parse::<Targets>(&p.bytes)?.signed,
            None => {
                let published = self.latest::<Targets>(role.as_str()).await?.ok_or(Error::NotFound)?;
                let mut t = published.signed;
                t.version = self.next_version(role.as_str(), t.version).await?;
                t
            }
        };
        change(&mut next)?;
        policy::check_role(role, &next, None).map_err(bad)?;
        let online = self.online_signers(role, &authority).await?;
        let lifetime =
            if !online.is_empty() { self.policy.online_targets_secs } else { self.policy.offline_targets_secs };
        next.expires = expiry::format(now + lifetime);
        let mut env = Envelope::new(next).map_err(Error::internal)?;
        for key in online {
            env.sign(key);
        }
        self.settle(role, env, &authority, Vec::new(), now).await
    }

    /// Publish `env` if its signatures meet the threshold, else hold it as pending.
    async fn settle(
        &self,
        role: &RoleName,
        env: Envelope<Targets>,
        authority: &Authority,
        mut log: Vec<Vec<u8>>,
        now: i64,
    ) -> Result<RoleState> {
        let valid = env.count_valid(&authority.keys, &authority.keyids);
        let version = env.signed.version;
        let published = valid >= authority.threshold && authority.threshold > 0;
        if self.pending_changes(role.as_str(), version, env.canonical_signed()).await? {
            log.insert(0, pending_entry(role.as_str(), version, env.canonical_signed())?);
        }
        if published {
            self.commit_logged(vec![(role.clone(), env)], None, log, now).await?;
            if matches!(role.kind(), RoleKind::Targets | RoleKind::Publisher(_)) {
                self.create_missing_roles(now).await?;
            }
        } else {
            let bytes = env.to_bytes().map_err(Error::internal)?;
            let record = PendingRecord { role: role.to_string(), version, bytes, created_at: now };
            self.db.put_pending(&record, &log).await?;
        }
        Ok(RoleState {
            role: role.clone(),
            version,
            published,
            valid_signatures: valid,
            threshold: authority.threshold,
        })
    }
}
