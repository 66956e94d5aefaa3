//! The repository: what is published, what waits for signatures, and the writer that moves a
//! role from one to the other.
//!
//! Every change goes through [`Repository::commit`], which writes the changed roles, a new
//! snapshot and a new timestamp in one database transaction, under one lock. Adding one
//! update therefore rewrites one hashed bin, the snapshot and the timestamp.

use std::collections::BTreeMap;

use ringfence_proto::api::{
    ApprovalRequest, Health, PendingSummary, PublishOutcome, RoleExpiry, RoleState, RoleVersion, SignatureUpload,
    UpdateManifest,
};
use ringfence_proto::limits::{MAX_FILES_PER_UPDATE, MAX_LIST, MAX_METADATA_BYTES, MAX_TEXT, MAX_UPLOADED_METADATA};
use ringfence_proto::names::RoleKind;
use ringfence_proto::tuf::{ApprovalCustom, Key, Root, Snapshot, Targets, Timestamp};
use ringfence_proto::{PublisherName, RoleName, TargetPath};
use ringfence_store::{
    AuditRecord, BlobStore, MetadataRecord, PendingRecord, SqliteStore, Store, UpdateFileRecord, UpdateRecord,
};
use ringfence_trust::client::TrustedSet;
use ringfence_trust::envelope::MetadataType;
use ringfence_trust::{Envelope, SigningKey, expiry, policy, writer};

use crate::config::ExpiryPolicy;
use crate::error::{ApiError, ApiResult};
use crate::online_keys::OnlineKeys;

/// The actor the audit trail names for the server's own work (bootstrap, prepared roles).
pub const SERVER: &str = "server";

/// Hashed bins per publisher, as a hex prefix length: 2 means 256 bins.
pub const DEFAULT_BIN_PREFIX_LEN: usize = 2;

pub struct Repository {
    pub store: SqliteStore,
    pub blobs: BlobStore,
    keys: OnlineKeys,
    policy: ExpiryPolicy,
    write_lock: tokio::sync::Mutex<()>,
}

/// Who may sign a role, as the role that delegates it says.
struct Authority {
    keys: BTreeMap<String, Key>,
    keyids: Vec<String>,
    threshold: u64,
}

fn parse<T>(bytes: &[u8]) -> ApiResult<Envelope<T>>
where
    T: serde::de::DeserializeOwned + serde::Serialize + MetadataType,
{
    Envelope::parse(bytes, MAX_METADATA_BYTES as usize).map_err(ApiError::internal)
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

fn record<T>(role: &str, env: &Envelope<T>) -> ApiResult<MetadataRecord>
where
    T: serde::de::DeserializeOwned + serde::Serialize + MetadataType,
{
    Ok(MetadataRecord {
        role: role.into(),
        version: env.signed.version(),
        expires: expiry::parse(env.signed.expires()).map_err(ApiError::internal)?,
        bytes: env.to_bytes().map_err(ApiError::internal)?,
    })
}

impl Repository {
    pub fn new(store: SqliteStore, blobs: BlobStore, keys: OnlineKeys, policy: ExpiryPolicy) -> Self {
        Self { store, blobs, keys, policy, write_lock: tokio::sync::Mutex::new(()) }
    }

    pub fn online_keys(&self) -> &OnlineKeys {
        &self.keys
    }

    async fn latest<T>(&self, role: &str) -> ApiResult<Option<Envelope<T>>>
    where
        T: serde::de::DeserializeOwned + serde::Serialize + MetadataType,
    {
        match self.store.latest_metadata(role).await? {
            Some(r) => Ok(Some(parse(&r.bytes)?)),
            None => Ok(None),
        }
    }

    async fn latest_root(&self) -> ApiResult<Envelope<Root>> {
        self.latest::<Root>("root").await?.ok_or_else(|| ApiError::internal("repository has no root"))
    }

    async fn authority(&self, role: &RoleName) -> ApiResult<Authority> {
        let from_delegator = |delegator: Envelope<Targets>| -> ApiResult<Authority> {
            let delegations = delegator.signed.delegations.ok_or(ApiError::NotFound)?;
            let entry = delegations.roles.iter().find(|r| r.name == role.as_str()).ok_or(ApiError::NotFound)?;
            Ok(Authority { keys: delegations.keys.clone(), keyids: entry.keyids.clone(), threshold: entry.threshold })
        };
        match role.kind() {
            RoleKind::Root | RoleKind::Targets | RoleKind::Snapshot | RoleKind::Timestamp => {
                let root = self.latest_root().await?;
                let keys = root.signed.roles.get(role.as_str()).ok_or(ApiError::NotFound)?;
                Ok(Authority { keys: root.signed.keys.clone(), keyids: keys.keyids.clone(), threshold: keys.threshold })
            }
            RoleKind::Publisher(_) | RoleKind::Approval(_) => {
                from_delegator(self.latest::<Targets>("targets").await?.ok_or(ApiError::NotFound)?)
            }
            RoleKind::PublisherBin(publisher, _) => {
                from_delegator(self.latest::<Targets>(publisher.role().as_str()).await?.ok_or(ApiError::NotFound)?)
            }
        }
    }

    /// Write the changed roles plus a new snapshot and timestamp, atomically.
    async fn commit(
        &self,
        roles: Vec<(RoleName, Envelope<Targets>)>,
        root: Option<Envelope<Root>>,
        now: i64,
    ) -> ApiResult<Vec<RoleVersion>> {
        let previous = self.latest::<Snapshot>("snapshot").await?;
        let previous_ts = self.store.latest_metadata("timestamp").await?;
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
        let snapshot_version = previous.as_ref().map_or(0, |s| s.signed.version) + 1;
        let snapshot = writer::next_snapshot(
            previous.as_ref().map(|s| &s.signed),
            snapshot_version,
            now + self.policy.snapshot_secs,
            &changed,
        );
        let mut snapshot = Envelope::new(snapshot).map_err(ApiError::internal)?;
        snapshot.sign(&self.keys.snapshot);
        let snapshot_record = record("snapshot", &snapshot)?;
        let timestamp_version = previous_ts.map_or(0, |t| t.version) + 1;
        let timestamp = writer::timestamp(
            timestamp_version,
            now + self.policy.timestamp_secs,
            snapshot_version,
            &snapshot_record.bytes,
        );
        let mut timestamp = Envelope::new(timestamp).map_err(ApiError::internal)?;
        timestamp.sign(&self.keys.timestamp);
        records.push(snapshot_record);
        records.push(record("timestamp", &timestamp)?);
        self.store.publish(&records, &clear).await?;
        Ok(published)
    }

    /// Import a new repository: root version 1 and the offline-signed targets-type roles,
    /// each verified against the role that delegates it, then snapshot and timestamp 1.
    pub async fn bootstrap(&self, root_bytes: &[u8], roles: &[(RoleName, Vec<u8>)], now: i64) -> ApiResult<()> {
        let _guard = self.write_lock.lock().await;
        if self.store.latest_metadata("root").await?.is_some() {
            return Err(ApiError::Conflict("the repository is already initialised".into()));
        }
        let root = Envelope::<Root>::parse(root_bytes, MAX_UPLOADED_METADATA).map_err(bad)?;
        let root_keys = root.signed.roles.get("root").ok_or_else(|| bad("root lists no root role"))?;
        root.verify("root", &root.signed.keys, &root_keys.keyids, root_keys.threshold).map_err(bad)?;
        if root.signed.version != 1 {
            return Err(bad("a new repository starts at root version 1"));
        }
        self.check_online_keys_listed(&root.signed)?;
        let mut verified: BTreeMap<String, Envelope<Targets>> = BTreeMap::new();
        let mut ordered = Vec::new();
        for (name, bytes) in roles {
            let env = Envelope::<Targets>::parse(bytes, MAX_UPLOADED_METADATA).map_err(bad)?;
            let authority = match name.kind() {
                RoleKind::Targets => {
                    let k = root.signed.roles.get("targets").ok_or_else(|| bad("root lists no targets role"))?;
                    Authority { keys: root.signed.keys.clone(), keyids: k.keyids.clone(), threshold: k.threshold }
                }
                RoleKind::Publisher(_) | RoleKind::Approval(_) => delegated_by(verified.get("targets"), name)?,
                RoleKind::PublisherBin(p, _) => delegated_by(verified.get(p.role().as_str()), name)?,
                _ => return Err(bad(format!("{name} cannot be imported"))),
            };
            env.verify(name.as_str(), &authority.keys, &authority.keyids, authority.threshold).map_err(bad)?;
            policy::check_role(name, &env.signed, verified.get("targets").map(|t| &t.signed)).map_err(bad)?;
            verified.insert(name.to_string(), env.clone());
            ordered.push((name.clone(), env));
        }
        self.commit(ordered, Some(root), now).await?;
        self.create_missing_roles(now).await?;
        self.audit(SERVER, "bootstrap", "initialised the repository", now).await
    }

    fn check_online_keys_listed(&self, root: &Root) -> ApiResult<()> {
        for (role, key) in [("timestamp", &self.keys.timestamp), ("snapshot", &self.keys.snapshot)] {
            let listed =
                root.roles.get(role).is_some_and(|r| r.keyids.contains(&key.key_id().to_string()) && r.threshold == 1);
            if !listed {
                return Err(bad(format!(
                    "root must give the {role} role this server's online {role} key {} with threshold 1",
                    key.key_id()
                )));
            }
        }
        Ok(())
    }

    /// Append to the audit trail: the one place records are written. `actor` names who caused
    /// the action (an admin token, a device, or `server` for its own jobs).
    pub async fn audit(&self, actor: &str, action: &str, detail: &str, now: i64) -> ApiResult<()> {
        let rec = AuditRecord { at: now, actor: actor.into(), action: action.into(), detail: detail.into() };
        Ok(self.store.append_audit(&rec).await?)
    }

    /// The server's keys that may sign `role`. Only roles the offline-signed top-level targets
    /// puts online by design: an approval role, or a publisher role and its bins, whose
    /// top-level delegation the online keys meet the threshold of (`pilot`'s auto-approver,
    /// a vendor-import publisher). Any other role, whatever keys a delegation below the top
    /// level names, waits for its offline key holders.
    async fn online_signers(&self, role: &RoleName, authority: &Authority) -> ApiResult<Vec<&SigningKey>> {
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
        let signers = self.keys.delegated_signers();
        let online = entry.keyids.iter().filter(|id| signers.contains_key(*id)).count() as u64;
        if entry.threshold == 0 || online < entry.threshold {
            return Ok(Vec::new());
        }
        let keys: Vec<&SigningKey> = authority.keyids.iter().filter_map(|id| signers.get(id).copied()).collect();
        Ok(if keys.len() as u64 >= authority.threshold { keys } else { Vec::new() })
    }

    /// The bin prefix length of `publisher`'s published role, which must keep the layout.
    async fn bin_prefix_len(&self, publisher: &PublisherName) -> ApiResult<usize> {
        let unknown = || bad(format!("unknown publisher {publisher}"));
        let top = self.latest::<Targets>("targets").await?.ok_or_else(unknown)?;
        let doc = self.latest::<Targets>(publisher.role().as_str()).await?.ok_or_else(unknown)?;
        let delegations = top.signed.delegations.as_ref().ok_or_else(unknown)?;
        let entry = delegations.roles.iter().find(|r| r.name == publisher.role().as_str()).ok_or_else(unknown)?;
        policy::check_publisher(publisher, &doc.signed, entry, &delegations.keys)
            .map_err(|e| ApiError::Conflict(format!("the published {}: {e}", publisher.role())))
    }

    /// The next version of a delegated targets-type role: the pending one if there is one,
    /// else the published one plus one. `change` edits it. Signed at once when the server's
    /// online keys meet the role's threshold; otherwise held as pending.
    async fn change_delegated(
        &self,
        role: &RoleName,
        now: i64,
        change: impl FnOnce(&mut Targets) -> ApiResult<()>,
    ) -> ApiResult<RoleState> {
        let authority = self.authority(role).await?;
        let mut next = match self.store.pending(role.as_str()).await? {
            Some(p) => parse::<Targets>(&p.bytes)?.signed,
            None => {
                let published = self.latest::<Targets>(role.as_str()).await?.ok_or(ApiError::NotFound)?;
                let mut t = published.signed;
                t.version += 1;
                t
            }
        };
        change(&mut next)?;
        policy::check_role(role, &next, None).map_err(bad)?;
        let online = self.online_signers(role, &authority).await?;
        let lifetime =
            if !online.is_empty() { self.policy.online_targets_secs } else { self.policy.offline_targets_secs };
        next.expires = expiry::format(now + lifetime);
        let mut env = Envelope::new(next).map_err(ApiError::internal)?;
        for key in online {
            env.sign(key);
        }
        self.settle(role, env, &authority, now).await
    }

    /// Publish `env` if its signatures meet the threshold, else hold it as pending.
    async fn settle(
        &self,
        role: &RoleName,
        env: Envelope<Targets>,
        authority: &Authority,
        now: i64,
    ) -> ApiResult<RoleState> {
        let valid = env.count_valid(&authority.keys, &authority.keyids);
        let version = env.signed.version;
        let published = valid >= authority.threshold && authority.threshold > 0;
        if published {
            self.commit(vec![(role.clone(), env)], None, now).await?;
            if matches!(role.kind(), RoleKind::Targets | RoleKind::Publisher(_)) {
                self.create_missing_roles(now).await?;
            }
        } else {
            let bytes = env.to_bytes().map_err(ApiError::internal)?;
            self.store.put_pending(&PendingRecord { role: role.to_string(), version, bytes, created_at: now }).await?;
        }
        Ok(RoleState {
            role: role.clone(),
            version,
            published,
            valid_signatures: valid,
            threshold: authority.threshold,
        })
    }

    /// Give every delegated role that has neither metadata nor a pending version its first
    /// version: an empty approval role, a publisher role with its hashed bins, or an empty
    /// bin. Signed at once where the online keys meet the role's threshold, else held as
    /// pending for its key holders (`ringfence pending sign-all`).
    async fn create_missing_roles(&self, now: i64) -> ApiResult<()> {
        // A publisher role signed online in one pass makes its bins due in the next.
        for _ in 0..2 {
            let mut delegators = vec![RoleName::targets()];
            for rec in self.store.latest_all().await? {
                if let Ok(name) = RoleName::parse(&rec.role)
                    && matches!(name.kind(), RoleKind::Publisher(_))
                {
                    delegators.push(name);
                }
            }
            let mut online_signed = Vec::new();
            let top = self.latest::<Targets>("targets").await?.map(|t| t.signed);
            for delegator in delegators {
                let Some(parent) = self.latest::<Targets>(delegator.as_str()).await? else { continue };
                // Only a delegator that keeps the layout gets roles prepared below it.
                if let Err(e) = policy::check_role(&delegator, &parent.signed, top.as_ref()) {
                    tracing::warn!("not preparing roles below {delegator}: {e}");
                    continue;
                }
                let Some(delegations) = parent.signed.delegations else { continue };
                for entry in &delegations.roles {
                    let Ok(name) = RoleName::parse(&entry.name) else { continue };
                    if self.store.latest_metadata(name.as_str()).await?.is_some()
                        || self.store.pending(name.as_str()).await?.is_some()
                    {
                        continue;
                    }
                    let authority = Authority {
                        keys: delegations.keys.clone(),
                        keyids: entry.keyids.clone(),
                        threshold: entry.threshold,
                    };
                    let online = self.online_signers(&name, &authority).await?;
                    let signable = !online.is_empty();
                    let lifetime =
                        if signable { self.policy.online_targets_secs } else { self.policy.offline_targets_secs };
                    let first = match name.kind() {
                        RoleKind::Approval(_) | RoleKind::PublisherBin(..) => writer::targets(1, now + lifetime),
                        RoleKind::Publisher(publisher) => {
                            let keys = authority
                                .keyids
                                .iter()
                                .filter_map(|id| delegations.keys.get(id))
                                .map(ringfence_trust::PublicKey::from_tuf)
                                .collect::<Result<Vec<_>, _>>()
                                .map_err(ApiError::internal)?;
                            let set = writer::RoleKeySet::new(keys, authority.threshold);
                            writer::publisher_role(&publisher, &set, DEFAULT_BIN_PREFIX_LEN, 1, now + lifetime)
                        }
                        _ => continue,
                    };
                    let mut env = Envelope::new(first).map_err(ApiError::internal)?;
                    for key in online {
                        env.sign(key);
                    }
                    if signable {
                        online_signed.push((name, env));
                    } else {
                        let bytes = env.to_bytes().map_err(ApiError::internal)?;
                        let record = PendingRecord { role: name.to_string(), version: 1, bytes, created_at: now };
                        self.store.put_pending(&record).await?;
                        let detail = format!("{name} version 1 waits for its key holders");
                        self.audit(SERVER, "create", &detail, now).await?;
                    }
                }
            }
            if online_signed.is_empty() {
                break;
            }
            self.commit(online_signed, None, now).await?;
        }
        Ok(())
    }

    /// Add an update's files to its publisher's hashed bins.
    pub async fn publish_update(&self, manifest: UpdateManifest, actor: &str, now: i64) -> ApiResult<PublishOutcome> {
        validate_manifest(&manifest)?;
        let _guard = self.write_lock.lock().await;
        let prefix_len = self.bin_prefix_len(&manifest.publisher).await?;

        let mut files = Vec::new();
        let mut by_bin: BTreeMap<String, Vec<(TargetPath, UpdateFileRecord)>> = BTreeMap::new();
        for f in &manifest.files {
            let path = TargetPath::published(&manifest.publisher, &f.name).map_err(bad)?;
            match self.store.blob_length(f.sha256.as_str()).await? {
                Some(len) if len == f.length => {}
                Some(len) => {
                    return Err(bad(format!(
                        "{}: uploaded content {} has length {len}, not {}",
                        f.name, f.sha256, f.length
                    )));
                }
                None => return Err(bad(format!("{}: no uploaded content with sha256 {}", f.name, f.sha256))),
            }
            if self.store.file_by_target_path(path.as_str()).await?.is_some() {
                return Err(ApiError::Conflict(format!("target {path} is already published")));
            }
            let rec = UpdateFileRecord {
                update_id: manifest.id.clone(),
                target_path: path.to_string(),
                sha256: f.sha256.to_string(),
                length: f.length,
            };
            let prefix = ringfence_trust::paths::bin_prefix_of(path.as_str(), prefix_len);
            by_bin.entry(prefix).or_default().push((path, rec.clone()));
            files.push(rec);
        }
        let manifest_json = serde_json::to_string(&manifest).map_err(ApiError::internal)?;
        self.store
            .insert_update(
                &UpdateRecord {
                    id: manifest.id.clone(),
                    publisher: manifest.publisher.to_string(),
                    manifest: manifest_json,
                    created_at: now,
                },
                &files,
            )
            .await?;

        // Signed by the publisher with the bytes: how to install and where it applies.
        let custom = serde_json::to_value(ringfence_proto::tuf::PublishedCustom {
            update_id: manifest.id.clone(),
            installer: manifest.installer.clone(),
            applicability: manifest.applicability.clone(),
        })
        .map_err(ApiError::internal)?;
        let mut outcome = PublishOutcome {
            update_id: manifest.id.clone(),
            targets: Vec::new(),
            published: Vec::new(),
            pending: Vec::new(),
        };
        for (prefix, entries) in by_bin {
            let bin = manifest.publisher.bin_role(&prefix);
            let state = self
                .change_delegated(&bin, now, |t| {
                    for (path, rec) in &entries {
                        let sha = ringfence_proto::Sha256Hex::parse(&rec.sha256).map_err(ApiError::internal)?;
                        t.targets.insert(path.to_string(), writer::target_file(rec.length, &sha, Some(custom.clone())));
                    }
                    Ok(())
                })
                .await?;
            outcome.targets.extend(entries.into_iter().map(|(p, _)| p));
            let rv = RoleVersion { role: state.role, version: state.version };
            if state.published { outcome.published.push(rv) } else { outcome.pending.push(rv) }
        }
        self.audit(actor, "publish", &format!("update {} ({} files)", manifest.id, files.len()), now).await?;
        Ok(outcome)
    }

    /// Propose an approval: a new version of the group's approval role carrying the same
    /// length and hashes as the publisher signed.
    pub async fn approve(&self, request: ApprovalRequest, actor: &str, now: i64) -> ApiResult<RoleState> {
        if let Some(deadline) = &request.deadline {
            expiry::parse(deadline).map_err(bad)?;
        }
        let _guard = self.write_lock.lock().await;
        let publisher = request.target.publisher().ok_or_else(|| bad("target must be <publisher>/<file>"))?;
        let file = self
            .store
            .file_by_target_path(request.target.as_str())
            .await?
            .ok_or_else(|| bad(format!("unknown target {}", request.target)))?;
        let prefix_len = self.bin_prefix_len(&publisher).await?;
        let bin = publisher.bin_role(&ringfence_trust::paths::bin_prefix_of(request.target.as_str(), prefix_len));
        let signed_entry = self
            .latest::<Targets>(bin.as_str())
            .await?
            .and_then(|b| b.signed.targets.get(request.target.as_str()).cloned())
            .ok_or_else(|| {
                ApiError::Conflict(format!("{} is not published yet: its publisher has not signed it", request.target))
            })?;
        let role = request.group.approval_role();
        let path = request.target.approval(&request.group).map_err(bad)?;
        let custom = ApprovalCustom {
            action: request.action,
            deadline: request.deadline.clone(),
            update_id: file.update_id.clone(),
            published_entry_sha256: writer::entry_digest(&signed_entry),
        };
        let custom = serde_json::to_value(&custom).map_err(ApiError::internal)?;
        let mut entry = signed_entry;
        entry.custom = Some(custom);
        let state = self
            .change_delegated(&role, now, move |t| {
                t.targets.insert(path.to_string(), entry);
                Ok(())
            })
            .await
            .map_err(|e| match e {
                ApiError::NotFound => bad(format!("unknown group {}", request.group)),
                other => other,
            })?;
        let detail = format!("{} for {} ({:?})", request.target, request.group, request.action);
        self.audit(actor, "approve", &detail, now).await?;
        Ok(state)
    }

    pub async fn list_pending(&self) -> ApiResult<Vec<PendingSummary>> {
        let mut out = Vec::new();
        for p in self.store.list_pending().await? {
            let role = RoleName::parse(&p.role).map_err(ApiError::internal)?;
            out.push(PendingSummary { role, version: p.version, created_at: p.created_at });
        }
        Ok(out)
    }

    pub async fn pending_bytes(&self, role: &RoleName) -> ApiResult<Vec<u8>> {
        Ok(self.store.pending(role.as_str()).await?.ok_or(ApiError::NotFound)?.bytes)
    }

    /// Propose a new version of an offline-signed role (root, targets, a publisher or
    /// approval role) as a whole document, with the signatures gathered so far.
    pub async fn propose(&self, role: &RoleName, bytes: &[u8], actor: &str, now: i64) -> ApiResult<RoleState> {
        let _guard = self.write_lock.lock().await;
        match role.kind() {
            RoleKind::Root => {
                let env = Envelope::<Root>::parse(bytes, MAX_UPLOADED_METADATA).map_err(bad)?;
                let current = self.latest_root().await?;
                expect_next(role, current.signed.version, env.signed.version)?;
                self.check_online_keys_listed(&env.signed)?;
                self.settle_root(env, &current, actor, now).await
            }
            RoleKind::Snapshot | RoleKind::Timestamp => Err(bad("snapshot and timestamp are signed by the server")),
            _ => {
                let env = Envelope::<Targets>::parse(bytes, MAX_UPLOADED_METADATA).map_err(bad)?;
                let current = self.latest::<Targets>(role.as_str()).await?.ok_or(ApiError::NotFound)?;
                expect_next(role, current.signed.version, env.signed.version)?;
                // Nothing that breaks the layout is held for signers, let alone published.
                let top = self.latest::<Targets>("targets").await?.map(|t| t.signed);
                policy::check_role(role, &env.signed, top.as_ref()).map_err(bad)?;
                let authority = self.authority(role).await?;
                // Only valid signatures are kept, so a pending document never carries junk.
                let env = keep_valid(env, &authority)?;
                self.settle(role, env, &authority, now).await
            }
        }
    }

    async fn settle_root(
        &self,
        env: Envelope<Root>,
        current: &Envelope<Root>,
        actor: &str,
        now: i64,
    ) -> ApiResult<RoleState> {
        let old = current.signed.roles.get("root").ok_or_else(|| ApiError::internal("root without root role"))?;
        let new = env.signed.roles.get("root").ok_or_else(|| bad("the new root lists no root role"))?;
        let by_old = env.count_valid(&current.signed.keys, &old.keyids);
        let by_new = env.count_valid(&env.signed.keys, &new.keyids);
        let version = env.signed.version;
        let threshold = old.threshold.max(new.threshold);
        let published = by_old >= old.threshold && by_new >= new.threshold && new.threshold > 0;
        if published {
            self.commit(Vec::new(), Some(env), now).await?;
            self.audit(actor, "root", &format!("published root version {version}"), now).await?;
        } else {
            let bytes = env.to_bytes().map_err(ApiError::internal)?;
            self.store.put_pending(&PendingRecord { role: "root".into(), version, bytes, created_at: now }).await?;
        }
        Ok(RoleState { role: RoleName::root(), version, published, valid_signatures: by_old.min(by_new), threshold })
    }

    /// Add offline signatures to the pending version of `role`; publish when they suffice.
    /// A signature that does not verify is refused and nothing changes.
    pub async fn add_signatures(
        &self,
        role: &RoleName,
        upload: SignatureUpload,
        actor: &str,
        now: i64,
    ) -> ApiResult<RoleState> {
        let _guard = self.write_lock.lock().await;
        let pending = self.store.pending(role.as_str()).await?.ok_or(ApiError::NotFound)?;
        if pending.version != upload.version {
            return Err(ApiError::Conflict(format!(
                "pending version of {role} is {}, the signatures are for version {}",
                pending.version, upload.version
            )));
        }
        if let RoleKind::Root = role.kind() {
            let mut env = Envelope::<Root>::parse(&pending.bytes, MAX_UPLOADED_METADATA).map_err(ApiError::internal)?;
            let current = self.latest_root().await?;
            let mut keys = current.signed.keys.clone();
            keys.extend(env.signed.keys.clone());
            let mut keyids: Vec<String> =
                current.signed.roles.get("root").map(|r| r.keyids.clone()).unwrap_or_default();
            keyids.extend(env.signed.roles.get("root").map(|r| r.keyids.clone()).unwrap_or_default());
            check_each_signature(env.canonical_signed(), &upload.signatures, &keys, &keyids)?;
            env.add_signatures(&upload.signatures);
            return self.settle_root(env, &current, actor, now).await;
        }
        let mut env = parse::<Targets>(&pending.bytes)?;
        let authority = self.authority(role).await?;
        check_each_signature(env.canonical_signed(), &upload.signatures, &authority.keys, &authority.keyids)?;
        env.add_signatures(&upload.signatures);
        let state = self.settle(role, env, &authority, now).await?;
        let keyids: Vec<&str> = upload.signatures.iter().map(|s| s.keyid.as_str()).collect();
        let detail = format!("signatures by key ids {keyids:?} for {role} version {}", upload.version);
        self.audit(actor, "sign", &detail, now).await?;
        Ok(state)
    }

    /// Renew what the server signs before it expires: timestamp, snapshot, and delegated roles
    /// whose threshold the online keys meet. Returns the roles renewed.
    pub async fn renew(&self, now: i64) -> ApiResult<Vec<RoleVersion>> {
        let _guard = self.write_lock.lock().await;
        let mut roles = Vec::new();
        for rec in self.store.latest_all().await? {
            let Ok(name) = RoleName::parse(&rec.role) else { continue };
            if matches!(name.kind(), RoleKind::Root | RoleKind::Targets | RoleKind::Snapshot | RoleKind::Timestamp) {
                continue;
            }
            if rec.expires - now > self.policy.online_targets_secs / 2 {
                continue;
            }
            if self.store.pending(name.as_str()).await?.is_some() {
                continue;
            }
            let authority = self.authority(&name).await?;
            let online = self.online_signers(&name, &authority).await?;
            if online.is_empty() {
                continue;
            }
            let mut next = parse::<Targets>(&rec.bytes)?.signed;
            next.version += 1;
            next.expires = expiry::format(now + self.policy.online_targets_secs);
            let mut env = Envelope::new(next).map_err(ApiError::internal)?;
            for key in online {
                env.sign(key);
            }
            roles.push((name, env));
        }
        let snapshot = self.store.latest_metadata("snapshot").await?;
        let timestamp = self.store.latest_metadata("timestamp").await?;
        let (Some(snapshot), Some(timestamp)) = (snapshot, timestamp) else { return Ok(Vec::new()) };
        let snapshot_due = snapshot.expires - now <= self.policy.snapshot_secs / 2;
        let timestamp_due = timestamp.expires - now <= self.policy.timestamp_secs / 2;
        if roles.is_empty() && !snapshot_due && !timestamp_due {
            return Ok(Vec::new());
        }
        let mut renewed = self.commit(roles, None, now).await?;
        renewed.push(RoleVersion { role: RoleName::snapshot(), version: snapshot.version + 1 });
        renewed.push(RoleVersion { role: RoleName::timestamp(), version: timestamp.version + 1 });
        Ok(renewed)
    }

    /// Expiry of every published role and warnings for offline roles expiring soon.
    pub async fn health(&self, now: i64) -> ApiResult<Health> {
        let mut roles = Vec::new();
        let mut warnings = Vec::new();
        for rec in self.store.latest_all().await? {
            let Ok(name) = RoleName::parse(&rec.role) else { continue };
            let offline = match name.kind() {
                RoleKind::Snapshot | RoleKind::Timestamp => false,
                RoleKind::Root | RoleKind::Targets => true,
                _ => match self.authority(&name).await {
                    Ok(a) => self.online_signers(&name, &a).await?.is_empty(),
                    Err(_) => true,
                },
            };
            let expires = expiry::format(rec.expires);
            if rec.expires <= now {
                warnings.push(format!("{name} version {} expired at {expires}", rec.version));
            } else if offline && rec.expires - now <= self.policy.offline_warning_secs {
                warnings.push(format!(
                    "{name} version {} expires at {expires}, in {} days; it is signed offline, so sign a new version",
                    rec.version,
                    (rec.expires - now) / 86_400
                ));
            }
            roles.push(RoleExpiry { role: name, version: rec.version, expires, offline });
        }
        let status = if warnings.is_empty() { "ok" } else { "warn" }.to_owned();
        Ok(Health { status, warnings, roles })
    }

    /// Check the published repository as a TUF client would, from root version 1.
    pub async fn self_check(&self, now: i64) -> ApiResult<TrustedSet> {
        let first = self.store.metadata_version("root", 1).await?.ok_or(ApiError::NotFound)?;
        let mut set = TrustedSet::new(&first.bytes, now).map_err(ApiError::internal)?;
        let mut version = 2;
        while let Some(r) = self.store.metadata_version("root", version).await? {
            set.update_root(&r.bytes).map_err(ApiError::internal)?;
            version += 1;
        }
        let ts = self.store.latest_metadata("timestamp").await?.ok_or(ApiError::NotFound)?;
        set.update_timestamp(&ts.bytes).map_err(ApiError::internal)?;
        let ts_env = parse::<Timestamp>(&ts.bytes)?;
        let snap_version = ts_env.signed.meta.get("snapshot.json").map_or(0, |m| m.version);
        let snap = self.store.metadata_version("snapshot", snap_version).await?.ok_or(ApiError::NotFound)?;
        set.update_snapshot(&snap.bytes, false).map_err(ApiError::internal)?;
        let targets = self.store.latest_metadata("targets").await?.ok_or(ApiError::NotFound)?;
        set.update_targets(&targets.bytes).map_err(ApiError::internal)?;
        Ok(set)
    }
}

fn delegated_by(delegator: Option<&Envelope<Targets>>, role: &RoleName) -> ApiResult<Authority> {
    let delegations = delegator
        .and_then(|d| d.signed.delegations.as_ref())
        .ok_or_else(|| bad(format!("{role} must come after the role that delegates it")))?;
    let entry = delegations
        .roles
        .iter()
        .find(|r| r.name == role.as_str())
        .ok_or_else(|| bad(format!("{role} is not delegated")))?;
    Ok(Authority { keys: delegations.keys.clone(), keyids: entry.keyids.clone(), threshold: entry.threshold })
}

fn expect_next(role: &RoleName, current: u64, proposed: u64) -> ApiResult<()> {
    if proposed != current + 1 {
        return Err(ApiError::Conflict(format!(
            "{role} is at version {current}; a proposal must be version {}",
            current + 1
        )));
    }
    Ok(())
}

fn keep_valid(mut env: Envelope<Targets>, authority: &Authority) -> ApiResult<Envelope<Targets>> {
    let signatures = std::mem::take(&mut env.signatures);
    check_each_signature(env.canonical_signed(), &signatures, &authority.keys, &authority.keyids)?;
    env.add_signatures(&signatures);
    Ok(env)
}

/// Refuse the whole upload if any signature is by a key the role does not list or does not
/// verify.
fn check_each_signature(
    message: &[u8],
    signatures: &[ringfence_proto::tuf::Signature],
    keys: &BTreeMap<String, Key>,
    keyids: &[String],
) -> ApiResult<()> {
    for s in signatures {
        if !keyids.contains(&s.keyid) {
            return Err(bad(format!("key {} may not sign this role", s.keyid)));
        }
        let ok = ringfence_trust::envelope::count_valid(message, std::slice::from_ref(s), keys, keyids) == 1;
        if !ok {
            return Err(bad(format!("signature by {} does not verify over the pending version", s.keyid)));
        }
    }
    Ok(())
}

fn validate_manifest(m: &UpdateManifest) -> ApiResult<()> {
    let id_ok = !m.id.is_empty()
        && m.id.len() <= 64
        && m.id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !id_ok {
        return Err(bad("id: 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'"));
    }
    for (field, text) in [
        ("title", &m.title),
        ("description", &m.description),
        ("product", &m.product),
        ("release_date", &m.release_date),
    ] {
        if text.len() > MAX_TEXT {
            return Err(bad(format!("{field}: longer than {MAX_TEXT} bytes")));
        }
    }
    if m.title.trim().is_empty() {
        return Err(bad("title: must not be empty"));
    }
    time::Date::parse(&m.release_date, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|_| bad("release_date: expected YYYY-MM-DD"))?;
    let lists = [
        ("kb", &m.kb),
        ("cves", &m.cves),
        ("supersedes", &m.supersedes),
        ("prerequisites", &m.prerequisites),
        ("installer.arguments", &m.installer.arguments),
        ("applicability.os", &m.applicability.os),
        ("applicability.architectures", &m.applicability.architectures),
        ("applicability.not_installed", &m.applicability.not_installed),
    ];
    for (field, list) in lists {
        if list.len() > MAX_LIST || list.iter().any(|s| s.len() > 256) {
            return Err(bad(format!("{field}: at most {MAX_LIST} items of at most 256 bytes")));
        }
    }
    if m.files.is_empty() || m.files.len() > MAX_FILES_PER_UPDATE {
        return Err(bad(format!("files: 1 to {MAX_FILES_PER_UPDATE} files")));
    }
    Ok(())
}
