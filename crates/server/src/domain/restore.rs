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
/// The most bytes an entry bundle can have (256 records of at most 4,096 bytes, each with its
/// two-byte length): a larger object is refused unread.
const MAX_BUNDLE_BYTES: u64 = BUNDLE * (2 + ringfence_tlog::entry::MAX_ENTRY_BYTES as u64);
/// How far the holds document's version moves after a restore at least: its versions are not
/// logged, and it is re-signed about twice a timestamp lifetime plus once per rollout change.
pub const HOLDS_SKIP: u64 = 100_000;

/// What [`recover`] did.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Entries put back on the log from the content store's tail, and the log's size after.
    pub log_entries: u64,
    pub log_size: u64,
    /// Whether the tail was checked against the signed checkpoint kept beside the tiles.
    pub tail_verified: bool,
    /// Floors set: (role, version).
    pub floors: Vec<(String, u64)>,
    /// Roles signed above their floor by the server's online keys: (role, version).
    pub signed: Vec<(String, u64)>,
    /// Offline roles prepared above their floor, waiting for their key holders: (role, version).
    pub pending: Vec<(String, u64)>,
    /// Roles the log's tail names that the backup does not hold (made after it), or that are no
    /// longer delegated: their documents are gone, and devices that saw them refuse a snapshot
    /// without them until they are made again (past their floors).
    pub lost: Vec<String>,
}

/// The log's records from `size` up to `goal` out of the content store's entry bundles: each
/// bundle bounded in bytes and exactly as wide as its name says.
async fn tail(blobs: &BlobStore, size: u64, goal: u64) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut index = size / BUNDLE;
    while index * BUNDLE < goal {
        let needed = (goal - index * BUNDLE).min(BUNDLE);
        let width = u32::try_from(needed).map_err(Error::internal)?;
        let full =
            blobs.get_tile_at_most(&tree::tile_path(None, index, 1 << tree::TILE_HEIGHT), MAX_BUNDLE_BYTES).await?;
        let (bundle, expected) = match full {
            Some(b) => (b, BUNDLE),
            None => {
                let path = tree::tile_path(None, index, width);
                let Some(b) = blobs.get_tile_at_most(&path, MAX_BUNDLE_BYTES).await? else {
                    return Err(Error::Conflict(format!(
                        "the content store lacks the log's entry bundle {path}, which its checkpoint covers"
                    )));
                };
                (b, needed)
            }
        };
        let records =
            tree::split_entry_bundle(&bundle).map_err(|e| Error::Conflict(format!("an entry bundle: {e}")))?;
        if records.len() as u64 != expected {
            return Err(Error::Conflict(format!(
                "entry bundle {index} holds {} records, not {expected}",
                records.len()
            )));
        }
        let first = size.saturating_sub(index * BUNDLE);
        for record in records
            .iter()
            .take(usize::try_from(needed).map_err(Error::internal)?)
            .skip(usize::try_from(first).map_err(Error::internal)?)
        {
            out.push(record.to_vec());
        }
        index += 1;
    }
    Ok(out)
}

/// Put the log's tail back, set the floors, and sign past them (see the module's text). Run
/// once, on a restored database, before any node serves. The tail counts only once it checks
/// out against the log's signed checkpoint kept beside the tiles (the database's log and the
/// tail together must give that checkpoint's root, and no entry may lie past it); without one,
/// `skip` (> 0) must say how far every floor moves past the backup's versions. `backup_at`:
/// when the backup was made (the holds' floor moves at least one version a second since).
/// The floors are written before anything else, so a recover interrupted half-way is run again
/// safely: it signs past the floors the database holds.
pub async fn recover(
    db: &dyn Database,
    blobs: &BlobStore,
    log: &Log,
    repo: &Repository,
    skip: u64,
    backup_at: Option<i64>,
    now: i64,
) -> Result<Recovered> {
    let mut done = Recovered::default();
    let size = db.log_size().await?;
    let stored = match log.stored_checkpoint().await {
        Ok(stored) => stored,
        Err(e) if skip > 0 => {
            tracing::warn!(error = %e, "the checkpoint kept beside the tiles is not used");
            None
        }
        Err(e) => return Err(e),
    };
    let verified = match stored {
        Some(checkpoint) if checkpoint.size() >= size => {
            let tail = tail(blobs, size, checkpoint.size()).await?;
            let (at, root) = log.root_with(&tail).await?;
            if at != checkpoint.size() || root != *checkpoint.hash() {
                return Err(Error::Conflict(
                    "the content store's log does not continue the backup's log up to its signed checkpoint \
                     (another log, or changed tiles): nothing restored"
                        .into(),
                ));
            }
            if entries_past(blobs, checkpoint.size()).await? && skip == 0 {
                return Err(Error::Conflict(
                    "the content store holds log entries past its checkpoint: the checkpoint kept there is older \
                     than the log (a crash between the two, or an old checkpoint put back); give --skip N"
                        .into(),
                ));
            }
            Some((tail, *checkpoint.hash()))
        }
        _ => None,
    };
    if verified.is_none() && skip == 0 {
        return Err(Error::Conflict(
            "the content store holds no signed checkpoint at or past the backup's log, so what was published \
             after the backup cannot be known: give --skip N, more than any role's versions may have grown since \
             (the log cannot be put back: agents will refuse new versions until it is)"
                .into(),
        ));
    }
    done.tail_verified = verified.is_some();
    let (tail, tail_root) = verified.unwrap_or_default();
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
            "root version {root} was published or prepared after the backup: a root's versions form a chain and \
             cannot be skipped; restore a backup taken after it"
        )));
    }
    // Checked: from here on the database changes. The leases are those of the nodes before the
    // backup (the first node started leads at once).
    db.forget_leases().await?;
    // The floors first: past the newest version the tail names, else the restored one, moved by
    // `skip`, for every role the backup or the tail knows; the holds' past its restored version.
    let mut roles: std::collections::BTreeSet<String> = published.keys().cloned().collect();
    roles.extend(newest.keys().cloned());
    for role in &roles {
        if role == RoleName::ROOT {
            continue;
        }
        let version = published.get(role).copied().unwrap_or(0);
        let floor = newest.get(role).copied().unwrap_or(0).max(version).saturating_add(skip);
        if floor > version {
            db.raise_version_floor(role, floor).await?;
        }
    }
    let holds = repo.holds_version().await?;
    let elapsed = backup_at.map_or(0, |at| u64::try_from(now.saturating_sub(at)).unwrap_or(0));
    db.raise_version_floor(HOLDS_FLOOR, holds.saturating_add(HOLDS_SKIP.max(elapsed)).saturating_add(skip)).await?;
    // The tail on the log, alone and in order, then checked against the root it was verified
    // with; then whatever the backup had queued that the tail does not hold.
    if !tail.is_empty() {
        let logged: std::collections::HashSet<&[u8]> = tail.iter().map(Vec::as_slice).collect();
        let extras: Vec<Vec<u8>> = db
            .log_queue(u64::from(u32::MAX))
            .await?
            .into_iter()
            .map(|q| q.entry)
            .filter(|e| !logged.contains(e.as_slice()))
            .collect();
        db.replace_log_queue(&tail).await?;
        let goal = size + tail.len() as u64;
        while db.log_size().await? < goal {
            if log.integrate(now).await?.is_none() {
                return Err(Error::internal("the log's tail did not integrate"));
            }
        }
        let rebuilt =
            log.checkpoint_at(goal).await?.ok_or_else(|| Error::internal("no checkpoint at the tail's end"))?;
        let key = log.verifier_key().ok_or_else(|| Error::internal("no log key"))?;
        let checkpoint = ringfence_tlog::checkpoint::verify(&rebuilt.note, &key).map_err(Error::internal)?;
        if db.log_size().await? != goal || *checkpoint.hash() != tail_root {
            return Err(Error::internal("the log rebuilt from its tail does not have the verified root"));
        }
        if !extras.is_empty() {
            db.enqueue_log(&extras).await?;
        }
        done.log_entries = tail.len() as u64;
    }
    // Sign past every floor the database holds (this run's, and an interrupted run's): targets-
    // type roles one by one (online ones at once, offline ones prepared), then snapshot and
    // timestamp, then the holds.
    done.floors = db.version_floors().await?;
    for (role, floor) in done.floors.clone() {
        let Ok(name) = RoleName::parse(&role) else { continue };
        if matches!(name.kind(), RoleKind::Root | RoleKind::Snapshot | RoleKind::Timestamp) {
            continue;
        }
        repo.drop_pending_at_or_below_floor(&name).await?;
        let Some(&version) = published.get(&role) else {
            done.lost.push(role);
            continue;
        };
        if version > floor {
            continue;
        }
        let state = match repo.move_past_floor(&name, now).await {
            Ok(state) => state,
            // No longer delegated: nothing to sign; made again later, past its floor.
            Err(Error::NotFound) => {
                done.lost.push(role);
                continue;
            }
            Err(e) => return Err(e),
        };
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

/// Whether the content store holds log entries past `size`: the bundle that holds entry
/// `size`, full or wider than `size` reaches into it.
async fn entries_past(blobs: &BlobStore, size: u64) -> Result<bool> {
    let index = size / BUNDLE;
    let reached = size % BUNDLE;
    if blobs.get_tile_at_most(&tree::tile_path(None, index, 1 << tree::TILE_HEIGHT), MAX_BUNDLE_BYTES).await?.is_some()
    {
        return Ok(true);
    }
    for width in (reached + 1)..BUNDLE {
        let width = u32::try_from(width).map_err(Error::internal)?;
        if blobs.get_tile_at_most(&tree::tile_path(None, index, width), MAX_BUNDLE_BYTES).await?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}
