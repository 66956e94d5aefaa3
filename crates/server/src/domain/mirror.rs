//! Copies of a repository for sites that must not be trusted: an export bundle written by the
//! upstream ([`export_bundle`]) and its import into a mirror ([`import_bundle`]), a server that
//! holds no signing key and serves its devices exactly what the upstream signed.
//!
//! A bundle is a directory: `metadata/` (every root version and the newest version of every
//! other role under the repository's own file names), `targets/<sha256>` (content), `log/checkpoint`
//! and `log/entries` (the transparency log's checkpoint and its entries from the export's
//! `--since` on, as one entry bundle), and `bundle.json` (an index, written last). Nothing in it
//! is believed: the import walks the metadata from the root the mirror pinned as a device
//! would, checks every content file against the signed hashes, rebuilds the log's tree from the
//! entries and compares it with the signed checkpoint, and refuses any role older than what
//! the mirror holds, or the same version with other bytes (a fork) — all before it writes
//! anything. It then writes content, the log, and last the metadata in one transaction, so
//! a mirror never serves a timestamp before what it names.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

use ringfence_proto::api::{BUNDLE_FORMAT, BundleManifest};
use ringfence_proto::limits::MAX_METADATA_BYTES;
use ringfence_proto::tuf::{Root, Snapshot, Targets, Timestamp};
use ringfence_proto::{GroupName, Sha256Hex};
use ringfence_store::{BlobStore, Database, MetadataRecord};
use ringfence_tlog::entry::Entry;
use ringfence_tlog::proof::{IDENTITY_TARGET, LogIdentity};
use ringfence_tlog::tree;
use ringfence_trust::client::{ClientError, TrustedSet};
use ringfence_trust::envelope::MetadataType;
use ringfence_trust::workflow::{Fetched, Refresh, encode_role};
use ringfence_trust::{Envelope, expiry};

use super::error::{Error, Result};
use super::log::Log;
use super::repo::Repository;

/// The index a bundle's directory holds, written last.
pub const MANIFEST: &str = "bundle.json";
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// The rollout holds in a bundle, as the device listener serves them.
const HOLDS: &str = "rollouts.json";
const MAX_HOLDS_BYTES: u64 = 1 << 22;
/// The most bytes `log/entries` may have (each entry is at most 4 KiB).
const MAX_LOG_ENTRIES_BYTES: u64 = 1 << 30;
/// The most targets-type roles an import walks.
const MAX_ROLES: usize = 100_000;
/// Entries read from the database at a time when exporting.
const LOG_READ: u64 = 4096;

fn refused(message: impl Into<String>) -> Error {
    Error::Conflict(format!("bundle refused: {}", message.into()))
}

/// A mirror's own records besides what imports bring: for a replica, the devices enrolled
/// through it at its upstream, and which of their signed report batches reached the upstream.
pub struct Mirror {
    db: std::sync::Arc<dyn Database>,
    blobs: BlobStore,
}

/// A device's signed report batch a replica has not forwarded yet.
#[derive(Debug, Clone)]
pub struct Unforwarded {
    pub device_id: String,
    pub seq: u64,
    pub batch: ringfence_proto::device::ForwardedBatch,
}

impl Mirror {
    pub fn new(db: std::sync::Arc<dyn Database>, blobs: BlobStore) -> Self {
        Self { db, blobs }
    }

    /// Verify and import the bundle in `dir` ([`import_bundle`]).
    pub async fn import(
        &self,
        repo: &Repository,
        log: &Log,
        dir: &Path,
        pinned_root: &[u8],
        now: i64,
    ) -> Result<Imported> {
        import_bundle(repo, log, &*self.db, &self.blobs, dir, pinned_root, now).await
    }

    /// The newest version the mirror holds of each role.
    pub async fn held_versions(&self) -> Result<BTreeMap<String, u64>> {
        Ok(self.db.latest_all().await?.into_iter().map(|r| (r.role, r.version)).collect())
    }

    /// The rollout holds' version served (0: none).
    pub async fn holds_version(&self) -> Result<u64> {
        Ok(self.db.rollout_holds_version().await?)
    }

    /// (path, SHA-256, length) of every file the newest version of every targets-type role
    /// held lists (well-formed hashes only).
    pub async fn listed_content(&self) -> Result<Vec<(String, String, u64)>> {
        let mut out = Vec::new();
        for record in self.db.latest_all().await? {
            if matches!(record.role.as_str(), "root" | "snapshot" | "timestamp") {
                continue;
            }
            for (path, file) in parse::<Targets>(&record.bytes)?.signed.targets {
                if let Some(sha) = file.hashes.get("sha256").filter(|s| Sha256Hex::parse(s).is_ok()) {
                    out.push((path, sha.clone(), file.length));
                }
            }
        }
        Ok(out)
    }

    pub async fn holds_content(&self, sha256: &str) -> Result<bool> {
        Ok(self.db.blob_length(sha256).await?.is_some())
    }

    pub async fn log_size(&self) -> Result<u64> {
        Ok(self.db.log_size().await?)
    }

    /// Keep a device as the upstream knows it: added when new (with the inventory it enrolled
    /// with), its state and groups brought up to date when known.
    pub async fn adopt_device(
        &self,
        identity: &ringfence_proto::device::DeviceIdentity,
        inventory: &ringfence_proto::device::Inventory,
        now: i64,
    ) -> Result<()> {
        use ringfence_store::{DeviceRecord, DeviceState};
        let state = DeviceState::parse(&identity.state)
            .ok_or_else(|| Error::Invalid(format!("upstream device state {:?}", identity.state)))?;
        match self.db.device(&identity.id).await? {
            Some(held) if held.public_key != identity.public_key => {
                Err(Error::Conflict(format!("device {} has another key upstream than here: not changed", identity.id)))
            }
            Some(_) => self.update_device_state(&identity.id, Some(identity)).await,
            None => {
                let record = DeviceRecord {
                    id: identity.id.clone(),
                    public_key: identity.public_key.clone(),
                    state,
                    groups: identity.groups.iter().map(ToString::to_string).collect(),
                    hostname: inventory.hostname.clone(),
                    inventory: serde_json::to_string(inventory).map_err(Error::internal)?,
                    enrolled_at: now,
                    last_checkin: None,
                    timestamp_version: None,
                };
                Ok(self.db.insert_device(&record).await?)
            }
        }
    }

    /// Take over a state change the upstream made to a device this mirror keeps, only ever
    /// narrowing: pending to accepted or rejected, accepted to revoked; never out of revoked or
    /// rejected (what this replica's own administrator revoked stays revoked). `None`: the
    /// upstream no longer knows the device, which is then revoked here. A device whose key
    /// differs is left alone.
    pub async fn update_device_state(
        &self,
        id: &str,
        upstream: Option<&ringfence_proto::device::DeviceIdentity>,
    ) -> Result<()> {
        use ringfence_store::DeviceState::{Accepted, Pending, Rejected, Revoked};
        let Some(held) = self.db.device(id).await? else { return Ok(()) };
        let next = match upstream {
            Some(identity) if identity.public_key != held.public_key => return Ok(()),
            Some(identity) => ringfence_store::DeviceState::parse(&identity.state)
                .ok_or_else(|| Error::Invalid(format!("upstream device state {:?}", identity.state)))?,
            None => Revoked,
        };
        let narrows =
            matches!((held.state, next), (Pending, Accepted | Rejected | Revoked) | (Accepted, Revoked | Rejected));
        if narrows {
            self.db.set_device_state(id, next).await?;
        }
        Ok(())
    }

    /// The ids of every device this mirror keeps, a page at a time.
    pub async fn device_ids(&self, after: Option<String>, limit: u64) -> Result<Vec<String>> {
        let page = ringfence_store::DevicePage { after, limit, state: None, source: None };
        Ok(self.db.list_devices(&page).await?.into_iter().map(|d| d.id).collect())
    }

    /// The oldest signed report batches not forwarded upstream yet.
    pub async fn unforwarded(&self, limit: u64) -> Result<Vec<Unforwarded>> {
        let mut out = Vec::new();
        for b in self.db.unforwarded_batches(limit).await? {
            // Always text (the server verified it as the device's signed message); were it not,
            // the upstream would refuse it and it would be marked, never block those behind it.
            let message = String::from_utf8_lossy(&b.batch.message).into_owned();
            out.push(Unforwarded {
                device_id: b.device_id,
                seq: b.seq,
                batch: ringfence_proto::device::ForwardedBatch { message, signature: b.batch.signature },
            });
        }
        Ok(out)
    }

    pub async fn forwarded(&self, batches: &[(String, u64)], now: i64) -> Result<()> {
        Ok(self.db.mark_forwarded(batches, now).await?)
    }
}

/// What to put in a bundle.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// The mirror's log size (what its last import printed): content of roles changed since is
    /// shipped, and the log's entries from there on. 0: everything.
    pub since: u64,
    /// Ship only content approved for these groups (empty: all content).
    pub groups: Vec<GroupName>,
    /// Ship only content of updates of these products, and of these classifications (empty:
    /// any); with groups too, content must meet every limit given.
    pub products: Vec<String>,
    pub classifications: Vec<String>,
}

/// Write a bundle of the current repository into `dir` (new or empty).
pub async fn export_bundle(
    repo: &Repository,
    log: &Log,
    db: &dyn Database,
    dir: &Path,
    options: &ExportOptions,
    now: i64,
) -> Result<BundleManifest> {
    if dir.exists() && std::fs::read_dir(dir).map_err(Error::internal)?.next().is_some() {
        return Err(Error::Invalid(format!("{} is not empty: give a new directory", dir.display())));
    }
    let (log_size, note) = log.served_checkpoint().await?.unwrap_or((0, Vec::new()));
    let latest = db.latest_all().await?;
    // Every version shipped must be on the checkpoint shipped, or the mirror refuses it.
    if log.enabled() {
        for record in &latest {
            match db.log_index_of(&record.role, record.version).await? {
                Some(index) if index < log_size => {}
                _ => {
                    return Err(Error::Conflict(format!(
                        "{} version {} is not on the log's checkpoint yet: try again in a few seconds",
                        record.role, record.version
                    )));
                }
            }
        }
    }
    if options.since > log_size {
        return Err(Error::Invalid(format!(
            "--since {}: this log has {log_size} entries; give the size the mirror's last import printed",
            options.since
        )));
    }
    let wanted = approved_for(&latest, &options.groups)?;
    let cataloged = cataloged_for(db, &options.products, &options.classifications).await?;
    let mut content = BTreeMap::new();
    for record in &latest {
        if matches!(record.role.as_str(), "root" | "snapshot" | "timestamp") {
            continue;
        }
        let changed = options.since == 0
            || db.log_index_of(&record.role, record.version).await?.is_none_or(|i| i >= options.since);
        if !changed {
            continue;
        }
        // What the version the mirror holds listed already is there.
        let mut shipped_before = BTreeSet::new();
        if let Some(old) = version_at(db, &record.role, record.version, options.since).await? {
            for file in parse::<Targets>(&old.bytes)?.signed.targets.values() {
                shipped_before.extend(file.hashes.get("sha256").cloned());
            }
        }
        for file in parse::<Targets>(&record.bytes)?.signed.targets.values() {
            let Some(sha) = file.hashes.get("sha256") else { continue };
            if wanted.as_ref().is_some_and(|w| !w.contains(sha))
                || cataloged.as_ref().is_some_and(|c| !c.contains(sha))
                || shipped_before.contains(sha)
            {
                continue;
            }
            if let Some(length) = db.blob_length(sha).await? {
                content.insert(sha.clone(), length);
            }
        }
    }
    // Roles whose newest version the mirror holds (logged before `since`) stay out: its
    // import takes them from what it holds.
    let mut files = Vec::new();
    for (path, bytes) in repo.static_repository().await?.metadata {
        let name = path.strip_prefix("metadata/").unwrap_or(&path);
        if let Some((role, Some(version))) = ringfence_proto::repo_path::metadata_file(name)
            && !matches!(role.as_str(), "root" | "snapshot" | "timestamp")
            && options.since > 0
            && db.log_index_of(role.as_str(), version).await?.is_some_and(|i| i < options.since)
        {
            continue;
        }
        files.push((path, bytes));
    }
    let mkdir = |d: &Path| std::fs::create_dir_all(d).map_err(Error::internal);
    mkdir(&dir.join("metadata"))?;
    mkdir(&dir.join("targets"))?;
    mkdir(&dir.join("log"))?;
    for (path, bytes) in &files {
        let name = path.strip_prefix("metadata/").unwrap_or(path);
        std::fs::write(dir.join("metadata").join(name), bytes).map_err(Error::internal)?;
    }
    for sha in content.keys() {
        repo.export_content(sha, &dir.join("targets").join(sha), false).await?;
    }
    // The rollout holds (halts and pauses), signed by the timestamp key: what narrows the
    // approvals for the mirror's devices too.
    if let Some((_, holds)) = db.rollout_holds().await? {
        std::fs::write(dir.join(HOLDS), holds).map_err(Error::internal)?;
    }
    if log_size > 0 {
        let mut records = Vec::new();
        let mut from = options.since;
        while from < log_size {
            let to = (from + LOG_READ).min(log_size);
            records.extend(db.log_entries(from, to).await?);
            from = to;
        }
        let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let bundle = tree::entry_bundle(&slices).map_err(Error::internal)?;
        std::fs::write(dir.join("log/entries"), bundle).map_err(Error::internal)?;
        std::fs::write(dir.join("log/checkpoint"), &note).map_err(Error::internal)?;
    }
    let manifest = BundleManifest {
        format: BUNDLE_FORMAT.into(),
        created_at: now,
        log_from: if log_size > 0 { options.since } else { 0 },
        log_size,
        metadata_files: files.len() as u64,
        content_files: content.len() as u64,
        content_bytes: content.values().sum(),
        groups: options.groups.clone(),
        products: options.products.clone(),
        classifications: options.classifications.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(Error::internal)?;
    std::fs::write(dir.join(MANIFEST), bytes).map_err(Error::internal)?;
    Ok(manifest)
}

/// The newest version of `role` below `current` that the log holds before index `since`:
/// the version a mirror whose log has `since` entries holds (looked for among the last
/// [`VERSIONS_BACK`] versions; None when there is none, and then all content ships again).
async fn version_at(db: &dyn Database, role: &str, current: u64, since: u64) -> Result<Option<MetadataRecord>> {
    if since == 0 {
        return Ok(None);
    }
    for version in (1..current).rev().take(VERSIONS_BACK) {
        if db.log_index_of(role, version).await?.is_some_and(|i| i < since) {
            return Ok(db.metadata_version(role, version).await?);
        }
    }
    Ok(None)
}

/// How many versions back an export looks for the one a mirror holds.
const VERSIONS_BACK: usize = 1000;

/// The SHA-256s of the files of the catalog's updates of `products` and `classifications`
/// (None: no limit).
async fn cataloged_for(
    db: &dyn Database,
    products: &[String],
    classifications: &[String],
) -> Result<Option<BTreeSet<String>>> {
    if products.is_empty() && classifications.is_empty() {
        return Ok(None);
    }
    let mut out = BTreeSet::new();
    let mut after = String::new();
    loop {
        let page = db.list_updates(&after, 500).await?;
        let Some(last) = page.last() else { break };
        after = last.id.clone();
        for update in &page {
            let manifest: ringfence_proto::api::UpdateManifest =
                serde_json::from_str(&update.manifest).map_err(Error::internal)?;
            let classification = serde_json::to_value(manifest.classification)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let product_ok = products.is_empty() || products.contains(&manifest.product);
            let class_ok = classifications.is_empty() || classifications.contains(&classification);
            if product_ok && class_ok {
                out.extend(manifest.files.iter().map(|f| f.sha256.to_string()));
            }
        }
    }
    Ok(Some(out))
}

/// The SHA-256s the approval roles of `groups` approve (None: no limit).
fn approved_for(latest: &[MetadataRecord], groups: &[GroupName]) -> Result<Option<BTreeSet<String>>> {
    if groups.is_empty() {
        return Ok(None);
    }
    let roles: BTreeSet<String> = groups.iter().map(|g| g.approval_role().to_string()).collect();
    let mut wanted = BTreeSet::new();
    for record in latest.iter().filter(|r| roles.contains(&r.role)) {
        for file in parse::<Targets>(&record.bytes)?.signed.targets.values() {
            wanted.extend(file.hashes.get("sha256").cloned());
        }
    }
    Ok(Some(wanted))
}

/// What an import brought in.
#[derive(Debug, Clone, Default)]
pub struct Imported {
    /// Role versions new to the mirror: (role, version).
    pub roles: Vec<(String, u64)>,
    pub timestamp_version: u64,
    /// When the imported timestamp expires: the mirror's devices need the next import before.
    pub expires: i64,
    /// Log entries appended, and the log's size after (give it to the next export's `--since`).
    pub log_entries: u64,
    pub log_size: u64,
    /// Content files stored, their bytes, and files the mirror held already.
    pub content: u64,
    pub content_bytes: u64,
    pub content_held: u64,
    /// Delegated roles left out because they have expired (with the roles below them).
    pub expired: Vec<String>,
    /// The rollout holds' version now served, when the bundle brought newer ones (0: none).
    pub holds_version: u64,
}

/// Whether two documents sign the same thing (their `signed` parts are the same in canonical
/// form): only their signatures or layout differ, and the one held is kept.
fn same_signed(a: &[u8], b: &[u8]) -> bool {
    let signed = |bytes: &[u8]| -> Option<Vec<u8>> {
        let value: serde_json::Value =
            ringfence_proto::api::parse_body_limited(bytes, MAX_METADATA_BYTES as usize).ok()?;
        ringfence_trust::canonical::to_canonical(value.get("signed")?).ok()
    };
    signed(a).is_some_and(|a| Some(a) == signed(b))
}

/// A file of the bundle, at most `max` bytes (None when it is not there).
fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::internal(e)),
    };
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(Error::internal)?;
    if bytes.len() as u64 > max {
        return Err(refused(format!("{} is larger than {max} bytes", path.display())));
    }
    Ok(Some(bytes))
}

fn parse<T>(bytes: &[u8]) -> Result<Envelope<T>>
where
    T: serde::de::DeserializeOwned + serde::Serialize + MetadataType,
{
    Envelope::<T>::parse(bytes, MAX_METADATA_BYTES as usize).map_err(|e| refused(e.to_string()))
}

/// A role version as the mirror keeps it: exactly the bytes the bundle carried.
fn record<T>(role: &str, bytes: &[u8]) -> Result<MetadataRecord>
where
    T: serde::de::DeserializeOwned + serde::Serialize + MetadataType,
{
    let env = parse::<T>(bytes)?;
    let expires = expiry::parse(env.signed.expires()).map_err(|e| refused(format!("{role}: {e}")))?;
    Ok(MetadataRecord { role: role.into(), version: env.signed.version(), expires, bytes: bytes.to_vec() })
}

/// Verify the bundle in `dir` completely against `pinned_root` (the root version 1 the
/// mirror was set up with) and what the mirror holds, then store it. Refused with nothing
/// written when anything does not verify, rolls back or forks.
pub async fn import_bundle(
    repo: &Repository,
    log: &Log,
    db: &dyn Database,
    blobs: &BlobStore,
    dir: &Path,
    pinned_root: &[u8],
    now: i64,
) -> Result<Imported> {
    let manifest = read_bounded(&dir.join(MANIFEST), MAX_MANIFEST_BYTES)?
        .ok_or_else(|| refused(format!("{} has no {MANIFEST}", dir.display())))?;
    let manifest: BundleManifest = ringfence_proto::api::parse_body_limited(&manifest, MAX_MANIFEST_BYTES as usize)
        .map_err(|e| refused(format!("{MANIFEST}: {e}")))?;
    if manifest.format != BUNDLE_FORMAT {
        return Err(refused(format!("{MANIFEST}: format {:?}, not {BUNDLE_FORMAT:?}", manifest.format)));
    }

    // The metadata, as a device walks it: the root chain from the pinned root, then the
    // timestamp, snapshot and top-level targets, then every delegated role.
    let metadata = dir.join("metadata");
    // From the newest root the mirror holds (verified by an earlier import), else the pinned one.
    let start = match db.latest_metadata("root").await? {
        Some(held) => held.bytes,
        None => pinned_root.to_vec(),
    };
    let set = TrustedSet::new(&start, now).map_err(|e| refused(format!("the trusted root: {e}")))?;
    let mut refresh = Refresh::new(set, ringfence_trust::workflow::Cached::default());
    let mut records: Vec<MetadataRecord> = Vec::new();
    while let Some(need) = refresh.need() {
        let mut bytes = read_bounded(&metadata.join(&need.file), need.max_length)?;
        // A version the bundle leaves out because the mirror holds it (never a root: the
        // chain ends where the bundle's roots end).
        if bytes.is_none()
            && need.role != "root"
            && let Some((role, Some(version))) = ringfence_proto::repo_path::metadata_file(&need.file)
        {
            bytes = db.metadata_version(role.as_str(), version).await?.map(|r| r.bytes);
        }
        let fetched = match &bytes {
            Some(b) => Fetched::Bytes(b.clone()),
            None => Fetched::NotFound,
        };
        refresh.supply(fetched).map_err(|e| refused(format!("metadata/{}: {e}", need.file)))?;
        if let Some(bytes) = bytes {
            records.push(match need.role.as_str() {
                "root" => record::<Root>("root", &bytes)?,
                "timestamp" => record::<Timestamp>("timestamp", &bytes)?,
                "snapshot" => record::<Snapshot>("snapshot", &bytes)?,
                _ => record::<Targets>("targets", &bytes)?,
            });
        }
    }
    if !records.iter().any(|r| r.role == "root") {
        records.insert(0, record::<Root>("root", &start)?);
    }
    let mut set = refresh.finish().map_err(|e| refused(e.to_string()))?;
    let (delegated, expired) = walk_delegations(&mut set, db, &metadata).await?;
    records.extend(delegated);

    // Nothing older than what the mirror holds, no other bytes under a version it holds, and
    // no role its snapshot lists left out.
    let mut new = Vec::new();
    for r in records {
        match db.metadata_version(&r.role, r.version).await? {
            Some(held) if held.bytes == r.bytes || same_signed(&held.bytes, &r.bytes) => continue,
            Some(_) => {
                return Err(refused(format!(
                    "{} version {} differs from the one this mirror holds: a fork",
                    r.role, r.version
                )));
            }
            None => {}
        }
        if let Some(held) = db.latest_metadata(&r.role).await?
            && held.version > r.version
            && r.role != "root"
        {
            return Err(refused(format!(
                "{} version {} is older than the version {} this mirror holds: a rollback",
                r.role, r.version, held.version
            )));
        }
        new.push(r);
    }
    let held_root = db.latest_metadata("root").await?.map_or(0, |r| r.version);
    if set.root().signed.version < held_root {
        return Err(refused(format!(
            "its newest root is version {}, this mirror holds version {held_root}: a rollback",
            set.root().signed.version
        )));
    }
    let timestamp = set.timestamp().ok_or_else(|| refused("no timestamp"))?;
    if let Some(held) = db.latest_metadata("timestamp").await?
        && held.version > timestamp.signed.version
    {
        return Err(refused(format!(
            "its timestamp is version {}, this mirror serves version {}: a rollback",
            timestamp.signed.version, held.version
        )));
    }
    if let Some(held) = db.latest_metadata("snapshot").await? {
        let held = parse::<Snapshot>(&held.bytes)?;
        let snapshot = set.snapshot().ok_or_else(|| refused("no snapshot"))?;
        for (file, meta) in &held.signed.meta {
            match snapshot.signed.meta.get(file) {
                Some(m) if m.version >= meta.version => {}
                Some(m) => {
                    return Err(refused(format!(
                        "its snapshot names {file} version {}, this mirror holds version {}: a rollback",
                        m.version, meta.version
                    )));
                }
                None => return Err(refused(format!("its snapshot drops {file}, which this mirror serves"))),
            }
        }
    }

    // The log: the checkpoint verified against the identity the trusted top-level targets
    // names; every metadata version imported must be on it.
    let identity = log_identity(&set)?;
    let (entries, checkpoint) = match &identity {
        Some(identity) => read_log(dir, &manifest, identity, db).await?,
        None => (Vec::new(), None),
    };
    if let Some((_, checkpoint, _)) = &checkpoint {
        let on_log = logged_versions(&entries);
        for r in &new {
            let sha = ringfence_trust::sha256_hex(&r.bytes);
            let logged = match on_log.get(&(r.role.clone(), r.version)) {
                Some(entry_sha) => *entry_sha == sha,
                None => match db.log_index_of(&r.role, r.version).await? {
                    Some(index) => held_entry_sha(db, index).await? == Some(sha),
                    None => false,
                },
            };
            if !logged {
                return Err(refused(format!(
                    "{} version {} is not on the log's checkpoint (of {})",
                    r.role,
                    r.version,
                    checkpoint.size()
                )));
            }
        }
    }

    // Content: every file some verified role lists that the bundle carries, checked against
    // the signed length and SHA-256 before anything is stored.
    // A file is named by its SHA-256 (a well-formed one: a signer's hash string never becomes
    // a path of its own); one whose bytes have another hash was changed on the way and refuses
    // the bundle, one whose length no role lists with that hash is left out.
    let listed = listed_content(&set);
    let mut to_store = Vec::new();
    let mut imported = Imported { expired, ..Imported::default() };
    for (sha, lengths) in &listed {
        let path = dir.join("targets").join(sha.as_str());
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if !meta.is_file() {
            return Err(refused(format!("targets/{sha} is not a plain file")));
        }
        if db.blob_length(sha.as_str()).await?.is_some() {
            imported.content_held += 1;
            continue;
        }
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let (got_sha, got_length) = hash_file(&path, longest)?;
        if got_sha != sha.as_str() {
            return Err(refused(format!("targets/{sha} does not have the signed length and SHA-256")));
        }
        if lengths.contains(&got_length) {
            to_store.push((sha.to_string(), got_length, path));
        }
    }
    if let (Some((_, checkpoint, _)), Some(_)) = (&checkpoint, &identity) {
        // The tree the entries make, computed without writing: a bundle whose log does not
        // match its checkpoint leaves nothing behind, not even content.
        let held = db.log_size().await?;
        let skip = usize::try_from(held.saturating_sub(manifest.log_from)).map_err(Error::internal)?;
        let (size, root) = log.root_with(entries.get(skip..).unwrap_or_default()).await?;
        if size != checkpoint.size() || root != *checkpoint.hash() {
            return Err(refused(
                "the log's entries do not make the tree its checkpoint signs: a fork or a tampered copy",
            ));
        }
    }

    let holds = read_holds(dir, &set, db, now).await?;

    // Written: content, then the log, then the metadata in one transaction, then the holds.
    for (sha, length, path) in to_store {
        store_file(blobs, &path, &sha, length).await?;
        db.insert_blob(&sha, length, now).await?;
        imported.content += 1;
        imported.content_bytes += length;
    }
    if let (Some((note, checkpoint, cosigners)), Some(_)) = (&checkpoint, &identity) {
        let held = db.log_size().await?;
        let skip = usize::try_from(held.saturating_sub(manifest.log_from)).map_err(Error::internal)?;
        let tail = entries.get(skip..).unwrap_or_default();
        log.adopt(tail, note, checkpoint, cosigners, now).await?;
        imported.log_entries = tail.len() as u64;
        imported.log_size = checkpoint.size();
    }
    imported.roles = new.iter().map(|r| (r.role.clone(), r.version)).collect();
    imported.timestamp_version = timestamp.signed.version;
    imported.expires = expiry::parse(&timestamp.signed.expires).map_err(Error::internal)?;
    if !new.is_empty() {
        db.publish(&new, &[], &[]).await?;
    }
    if let Some((version, bytes)) = holds {
        db.put_rollout_holds(version, &bytes).await?;
        imported.holds_version = version;
    }
    repo.metadata_changed_elsewhere();
    Ok(imported)
}

/// The bundle's rollout holds, when it carries newer ones than the mirror serves: signed by
/// the trusted root's timestamp keys, of their type, not expired (expired ones are left out:
/// devices ignore them). Older ones than the mirror serves refuse the bundle (they could lift
/// a halt).
async fn read_holds(dir: &Path, set: &TrustedSet, db: &dyn Database, now: i64) -> Result<Option<(u64, Vec<u8>)>> {
    use ringfence_proto::tuf::RolloutHolds;
    let Some(bytes) = read_bounded(&dir.join(HOLDS), MAX_HOLDS_BYTES)? else { return Ok(None) };
    let env = Envelope::<RolloutHolds>::parse(&bytes, MAX_HOLDS_BYTES as usize)
        .map_err(|e| refused(format!("{HOLDS}: {e}")))?;
    let root = &set.root().signed;
    let role = root.roles.get("timestamp").ok_or_else(|| refused("the root names no timestamp role"))?;
    if role.threshold == 0
        || env.count_valid(&root.keys, &role.keyids) < role.threshold
        || env.signed.type_ != "ringfence-rollouts"
    {
        return Err(refused(format!("{HOLDS} is not signed by the timestamp keys")));
    }
    let held = db.rollout_holds_version().await?;
    if env.signed.version < held {
        return Err(refused(format!(
            "{HOLDS} is version {}, this mirror serves version {held}: a rollback",
            env.signed.version
        )));
    }
    let fresh = expiry::parse(&env.signed.expires).is_ok_and(|e| e > now);
    Ok((env.signed.version > held && fresh).then_some((env.signed.version, bytes)))
}

/// Every delegated targets-type role below top-level targets, verified in order: from the
/// bundle, or the copy the mirror holds when the snapshot names the version it holds.
///
/// Each role is taken once, under the first delegator that names it (a mirror keeps one copy
/// of each; devices verify it under the delegations on their own paths). A role that has
/// expired is left out, with the roles below it, and named in the second list: devices refuse
/// it anyway, and the groups whose roles are fresh go on.
async fn walk_delegations(
    set: &mut TrustedSet,
    db: &dyn Database,
    metadata: &Path,
) -> Result<(Vec<MetadataRecord>, Vec<String>)> {
    let mut out = Vec::new();
    let mut expired = Vec::new();
    let mut queue: VecDeque<String> = VecDeque::from(["targets".to_owned()]);
    let mut seen = BTreeSet::new();
    while let Some(chain) = queue.pop_front() {
        let Some(parent) = set.targets(&chain) else { continue };
        let Some(delegations) = parent.signed.delegations.clone() else { continue };
        for role in delegations.roles {
            if !seen.insert(role.name.clone()) {
                continue;
            }
            if seen.len() > MAX_ROLES {
                return Err(refused(format!("more than {MAX_ROLES} delegated roles")));
            }
            let Some(meta) = set.snapshot().and_then(|s| s.signed.meta.get(&format!("{}.json", role.name))).cloned()
            else {
                // Delegated but not published yet: devices skip it too.
                continue;
            };
            let file = format!("{}.{}.json", meta.version, encode_role(&role.name));
            let max = meta.length.unwrap_or(MAX_METADATA_BYTES).min(MAX_METADATA_BYTES);
            let bytes = match read_bounded(&metadata.join(&file), max)? {
                Some(b) => b,
                None => match db.metadata_version(&role.name, meta.version).await? {
                    Some(held) => held.bytes,
                    None => return Err(refused(format!("metadata/{file} is missing"))),
                },
            };
            match set.update_delegated_targets(&bytes, &role.name, &chain) {
                Ok(()) => {}
                Err(ClientError::Expired { .. }) => {
                    expired.push(role.name.clone());
                    continue;
                }
                Err(e) => return Err(refused(format!("metadata/{file}: {e}"))),
            }
            out.push(record::<Targets>(&role.name, &bytes)?);
            queue.push_back(TrustedSet::chain(&chain, &role.name));
        }
    }
    Ok((out, expired))
}

/// The log identity the trusted top-level targets names, if any.
fn log_identity(set: &TrustedSet) -> Result<Option<LogIdentity>> {
    let Some(top) = set.targets("targets") else { return Ok(None) };
    let Some(target) = top.signed.targets.get(IDENTITY_TARGET) else { return Ok(None) };
    Ok(Some(LogIdentity::from_custom(target.custom.clone()).map_err(|e| refused(format!("the log identity: {e}")))?))
}

/// A verified checkpoint: its note, the checkpoint, and the names of the identity's witnesses
/// (the note carries at least the quorum of their cosignatures).
type Verified = (Vec<u8>, ringfence_tlog::tlog_tiles::Checkpoint, Vec<String>);

/// The bundle's log entries (from `manifest.log_from`) and its checkpoint, verified: signed
/// by the log key and cosigned by the quorum, no smaller than the mirror's log, the entries
/// exactly as many as the checkpoint covers past `log_from`, and the entries the mirror holds
/// already among them the same as its own. The tree is compared with the checkpoint's root
/// when the log adopts them.
async fn read_log(
    dir: &Path,
    manifest: &BundleManifest,
    identity: &LogIdentity,
    db: &dyn Database,
) -> Result<(Vec<Vec<u8>>, Option<Verified>)> {
    let max_note = ringfence_tlog::checkpoint::MAX_CHECKPOINT_BYTES as u64;
    let note =
        read_bounded(&dir.join("log/checkpoint"), max_note)?.ok_or_else(|| refused("log/checkpoint is missing"))?;
    let checkpoint = identity.verify_checkpoint(&note).map_err(|e| refused(format!("log/checkpoint: {e}")))?;
    let held = db.log_size().await?;
    if checkpoint.size() < held {
        return Err(refused(format!(
            "its log checkpoint is of {} entries, this mirror's log has {held}: a rollback",
            checkpoint.size()
        )));
    }
    if manifest.log_from > held {
        return Err(refused(format!(
            "its log starts at entry {}, this mirror's log has {held}: export with --since {held}",
            manifest.log_from
        )));
    }
    // Exactly as many entries as the checkpoint covers past `log_from`, none longer than an
    // entry can be: the file is read no further than that many could take.
    let expected = checkpoint.size() - manifest.log_from;
    let most = expected.saturating_mul(2 + ringfence_tlog::entry::MAX_ENTRY_BYTES as u64).min(MAX_LOG_ENTRIES_BYTES);
    let bytes = read_bounded(&dir.join("log/entries"), most)?.unwrap_or_default();
    let entries = split_entries(&bytes, expected).map_err(|e| refused(format!("log/entries: {e}")))?;
    let overlap = db.log_entries(manifest.log_from, held).await?;
    if overlap.iter().zip(&entries).any(|(a, b)| a != b) || overlap.len() as u64 != held - manifest.log_from {
        return Err(refused("its log differs from this mirror's where they overlap: a fork"));
    }
    Ok((entries, Some((note.clone(), checkpoint, cosigners(identity, &note)))))
}

/// The records of an entry bundle that must hold exactly `expected` of them, each at most
/// an entry's length; read no further than one record past `expected`.
fn split_entries(bytes: &[u8], expected: u64) -> std::result::Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if out.len() as u64 == expected {
            return Err(format!("more than the {expected} entries the checkpoint covers"));
        }
        let (Some(&hi), Some(&lo)) = (rest.first(), rest.get(1)) else {
            return Err("it ends inside a length".into());
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len > ringfence_tlog::entry::MAX_ENTRY_BYTES {
            return Err(format!("an entry of {len} bytes"));
        }
        let record = rest.get(2..2 + len).ok_or("it ends inside an entry")?;
        out.push(record.to_vec());
        rest = rest.get(2 + len..).unwrap_or_default();
    }
    if out.len() as u64 != expected {
        return Err(format!("{} entries, the checkpoint covers {expected} past the mirror's", out.len()));
    }
    Ok(out)
}

/// The names of the identity's witnesses whose cosignature of `note` verifies.
fn cosigners(identity: &LogIdentity, note: &[u8]) -> Vec<String> {
    use ringfence_tlog::signed_note::{Note, VerifierList};
    let Ok(parsed) = Note::from_bytes(note) else { return Vec::new() };
    identity
        .witnesses
        .iter()
        .filter(|w| {
            let Ok(verifier) = ringfence_tlog::witness::CosignatureVerifier::new(&w.key) else { return false };
            parsed.verify(&VerifierList::new(vec![Box::new(verifier)])).is_ok_and(|(found, _)| !found.is_empty())
        })
        .map(|w| w.name.clone())
        .collect()
}

/// (role, version) → SHA-256 of each metadata entry among `entries`.
fn logged_versions(entries: &[Vec<u8>]) -> BTreeMap<(String, u64), String> {
    let mut out = BTreeMap::new();
    for entry in entries {
        if let Ok(Entry::Metadata { role, version, sha256, .. }) = Entry::parse(entry) {
            out.entry((role, version)).or_insert(sha256);
        }
    }
    out
}

async fn held_entry_sha(db: &dyn Database, index: u64) -> Result<Option<String>> {
    let entry = db.log_entries(index, index + 1).await?.pop();
    Ok(entry.and_then(|e| match Entry::parse(&e) {
        Ok(Entry::Metadata { sha256, .. }) => Some(sha256),
        _ => None,
    }))
}

/// Every well-formed SHA-256 a verified targets-type role lists, with the lengths listed for it.
fn listed_content(set: &TrustedSet) -> BTreeMap<Sha256Hex, BTreeSet<u64>> {
    let mut out: BTreeMap<Sha256Hex, BTreeSet<u64>> = BTreeMap::new();
    for env in set.all_targets() {
        for file in env.signed.targets.values() {
            if let Some(sha) = file.hashes.get("sha256").and_then(|s| Sha256Hex::parse(s).ok()) {
                out.entry(sha).or_default().insert(file.length);
            }
        }
    }
    out
}

/// SHA-256 and length of a file, reading at most `max` bytes past which it is refused.
fn hash_file(path: &Path, max: u64) -> Result<(String, u64)> {
    use sha2::Digest;
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(Error::internal)?;
    let mut reader = file.take(max + 1);
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut length = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(Error::internal)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
        length += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), length))
}

/// Copy a bundle file into the content store, checked again on the way in.
async fn store_file(blobs: &BlobStore, path: &Path, sha: &str, length: u64) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await.map_err(Error::internal)?;
    let mut writer = blobs.writer(length)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).await.map_err(Error::internal)?;
        if n == 0 {
            break;
        }
        writer.write(buf.get(..n).unwrap_or_default()).await?;
    }
    writer.finish(Some(sha)).await.map_err(|e| refused(format!("targets/{sha}: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(records: &[&[u8]]) -> Vec<u8> {
        tree::entry_bundle(records).unwrap()
    }

    #[test]
    fn log_entries_are_exactly_as_many_as_the_checkpoint_covers_and_no_longer_than_an_entry() {
        assert_eq!(split_entries(&bundle(&[b"a", b"bc"]), 2).unwrap(), vec![b"a".to_vec(), b"bc".to_vec()]);
        assert!(split_entries(&bundle(&[b"a", b"bc"]), 1).unwrap_err().contains("more than the 1"));
        assert!(split_entries(&bundle(&[b"a"]), 2).unwrap_err().contains("1 entries"));
        // Empty records past the count are not read one by one into memory.
        assert!(split_entries(&vec![0u8; 2_000_000], 3).unwrap_err().contains("more than the 3"));
        let long = vec![b'x'; ringfence_tlog::entry::MAX_ENTRY_BYTES + 1];
        assert!(split_entries(&bundle(&[&long]), 1).unwrap_err().contains("an entry of"));
        assert!(split_entries(&[0, 5, b'a'], 1).unwrap_err().contains("inside an entry"));
        assert!(split_entries(&[0], 1).unwrap_err().contains("inside a length"));
    }

    #[test]
    fn documents_that_sign_the_same_thing_are_the_same_whatever_their_layout() {
        let a = br#"{"signed":{"b":1,"a":[1,2]},"signatures":[]}"#;
        let b = br#"{ "signatures": [{"keyid":"x","sig":"y"}], "signed": {"a": [1, 2], "b": 1} }"#;
        let c = br#"{"signed":{"b":2,"a":[1,2]},"signatures":[]}"#;
        assert!(same_signed(a, b));
        assert!(!same_signed(a, c));
        assert!(!same_signed(a, b"not json"));
    }
}
