//! Coming back from a backup without ever signing a version number devices may already trust.
//!
//! A backup is older than what the server published afterwards: devices (and signers, and
//! witnesses) may trust newer versions of any role and a longer transparency log. The log's
//! tiles and entry bundles live in the content store (`domain::log`), which usually outlives a
//! lost database (a bucket, or a content directory kept apart): its tail past the backup names
//! every version published, prepared or signed since. [`recover`] puts that tail back on the
//! log exactly as it was logged (the same entries at the same indexes give the same tree, so
//! agents and witnesses see one consistent log), raises each role's version floor past what
//! the tail names, and signs every role the server signs above its floor; offline roles behind
//! their floor are prepared for their key holders at the floor's next version.

use ringfence_proto::RoleName;
use ringfence_proto::names::RoleKind;
use ringfence_store::{BlobStore, Database};
use ringfence_tlog::entry::Entry;
use ringfence_tlog::tree;

use super::error::{Error, Result};
use super::log::Log;
use super::repo::HOLDS_FLOOR;
use super::repo::Repository;

/// Entries per entry bundle.
const BUNDLE: u64 = 1 << tree::TILE_HEIGHT;
/// How far the holds document's version moves after a restore: its versions are not logged,
/// and it is re-signed about twice a timestamp lifetime plus once per rollout change.
pub const HOLDS_SKIP: u64 = 100_000;

/// What [`recover`] did.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Entries put back on the log from the content store's tail, and the log's size after.
    pub log_entries: u64,
    pub log_size: u64,
    /// Floors set: (role, version).
    pub floors: Vec<(String, u64)>,
    /// Roles signed above their floor by the server's online keys: (role, version).
    pub signed: Vec<(String, u64)>,
    /// Offline roles prepared above their floor, waiting for their key holders: (role, version).
    pub pending: Vec<(String, u64)>,
    /// Roles the log's tail names that the backup does not hold (made after it): their
    /// documents are gone, and devices that saw them refuse a snapshot without them.
    pub lost: Vec<String>,
}

/// The log's entries past `size` that the content store's entry bundles hold, after checking
/// that the bundle holding the log's end agrees with the database.
async fn tail(db: &dyn Database, blobs: &BlobStore, size: u64) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut index = size / BUNDLE;
    let mut skip = usize::try_from(size % BUNDLE).map_err(Error::internal)?;
    loop {
        let (bundle, full) = match blobs.get_tile(&tree::tile_path(None, index, 1 << tree::TILE_HEIGHT)).await? {
            Some(b) => (b, true),
            None => {
                let mut widest = None;
                for width in (1..(1u32 << tree::TILE_HEIGHT)).rev() {
                    if let Some(b) = blobs.get_tile(&tree::tile_path(None, index, width)).await? {
                        widest = Some(b);
                        break;
                    }
                }
                match widest {
                    Some(b) => (b, false),
                    None => break,
                }
            }
        };
        let records = tree::split_entry_bundle(&bundle).map_err(Error::internal)?;
        if skip > 0 {
            // The bundle's first records are the database's last ones: the same log, or no tail.
            let known = db.log_entries(index * BUNDLE, size).await?;
            let shared = records.len().min(skip);
            if records.iter().copied().take(shared).ne(known.iter().map(Vec::as_slice).take(shared)) {
                return Err(Error::Conflict(
                    "the content store's log does not begin like the backup's: it belongs to another log".into(),
                ));
            }
        }
        out.extend(records.iter().skip(skip).map(|r| r.to_vec()));
        skip = 0;
        if !full {
            break;
        }
        index += 1;
    }
    Ok(out)
}

/// Put the log's tail back, set the floors, and sign past them (see the module's text). Run
/// once, on a restored database, before the server serves; `skip` moves every floor further
/// (for a content store that may not hold the whole tail).
pub async fn recover(
    db: &dyn Database,
    blobs: &BlobStore,
    log: &Log,
    repo: &Repository,
    skip: u64,
    now: i64,
) -> Result<Recovered> {
    let mut done = Recovered::default();
    // The leases are those of the nodes before the backup: the first node started leads at once.
    db.forget_leases().await?;
    let size = db.log_size().await?;
    let tail = if log.enabled() { tail(db, blobs, size).await? } else { Vec::new() };
    let mut newest: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for record in &tail {
        let entry = Entry::parse(record).map_err(|e| Error::Conflict(format!("the log's tail: {e}")))?;
        let named = match entry {
            Entry::Metadata { role, version, .. }
            | Entry::Pending { role, version, .. }
            | Entry::Signature { role, version, .. } => Some((role, version)),
            _ => None,
        };
        if let Some((role, version)) = named {
            let at = newest.entry(role).or_insert(0);
            *at = (*at).max(version);
        }
    }
    let published: std::collections::BTreeMap<String, u64> =
        db.latest_all().await?.into_iter().map(|r| (r.role, r.version)).collect();
    if let Some(&root) = newest.get(RoleName::ROOT)
        && root > published.get(RoleName::ROOT).copied().unwrap_or(0)
    {
        return Err(Error::Conflict(format!(
            "root version {root} was published after the backup: a root's versions form a chain and cannot be \
             skipped; restore a backup taken after it"
        )));
    }
    if !tail.is_empty() {
        db.replace_log_queue(&tail).await?;
        // Integrated in batches by the sequencer, exactly as they were queued the first time.
        let goal = size + tail.len() as u64;
        while db.log_size().await? < goal {
            if log.integrate(now).await?.is_none() {
                return Err(Error::internal("the log's tail did not integrate"));
            }
        }
        done.log_entries = tail.len() as u64;
    }
    done.log_size = db.log_size().await?;
    done.lost = newest.keys().filter(|role| !published.contains_key(*role)).cloned().collect();
    // Floors: the newest version the tail names, else the restored one, moved by `skip`.
    for (role, version) in &published {
        if role == RoleName::ROOT {
            continue;
        }
        let floor = newest.get(role).copied().unwrap_or(0).max(*version).saturating_add(skip);
        if floor > *version {
            db.raise_version_floor(role, floor).await?;
            done.floors.push((role.clone(), floor));
        }
    }
    let holds = repo.holds_version().await?;
    let holds_floor = holds.saturating_add(HOLDS_SKIP).saturating_add(skip);
    db.raise_version_floor(HOLDS_FLOOR, holds_floor).await?;
    done.floors.push((HOLDS_FLOOR.to_owned(), holds_floor));
    // Sign past the floors: targets-type roles one by one (online ones at once, offline ones
    // prepared), then snapshot and timestamp, then the holds.
    for (role, floor) in done.floors.clone() {
        let Ok(name) = RoleName::parse(&role) else { continue };
        if matches!(name.kind(), RoleKind::Root | RoleKind::Snapshot | RoleKind::Timestamp) {
            continue;
        }
        let state = repo.move_past_floor(&name, now).await?;
        if state.version <= floor {
            return Err(Error::internal(format!("{role} version {} is not past its floor {floor}", state.version)));
        }
        if state.published {
            done.signed.push((role, state.version));
        } else {
            done.pending.push((role, state.version));
        }
    }
    for role in repo.resign_snapshot_and_timestamp(now).await? {
        done.signed.push((role.role.to_string(), role.version));
    }
    if let Some(version) = repo.republish_holds(now).await? {
        done.signed.push((HOLDS_FLOOR.to_owned(), version));
    }
    // What was just signed goes on the log before anything is served (agents take no version
    // that is not on it).
    while log.integrate(now).await?.is_some() {}
    done.log_size = db.log_size().await?;
    Ok(done)
}
