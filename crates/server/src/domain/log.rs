//! The transparency log: the sequencer that integrates queued entries into the Merkle tree
//! under the database's `Log` lock, the tiles it writes into the content store, the checkpoints
//! it signs and has witnesses cosign, and what the device listener serves from them
//! (checkpoint, tiles, the proof bundle beside each metadata version).
//!
//! Entries are queued in the same transaction as what they record (metadata versions, pending
//! versions, signatures) or right after it (tokens, devices); the sequencer takes them in queue
//! order, at most [`BATCH`] at a time, and signs one checkpoint per batch.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use ringfence_store::{BlobStore, CheckpointRecord, Database, LogBatch, Section};
use ringfence_tlog::checkpoint::LogKey;
use ringfence_tlog::entry::Entry;
use ringfence_tlog::proof::ProofBundle;
use ringfence_tlog::signed_note::{Note, VerifierList};
use ringfence_tlog::tree;
use ringfence_tlog::witness::{AddCheckpoint, CosignatureVerifier, SIZE_CONTENT_TYPE};
use ringfence_tlog::{Hash, tlog_tiles};

use super::error::{Error, Result};
use crate::config::WitnessConfig;
use crate::notify::{Endpoint, client_tls, parse_url, post};

/// Most entries one sequencer run integrates.
pub const BATCH: u64 = 4096;
/// Rounds of reading missing hashes before a proof or tile gives up (each round reads every
/// hash the computation asked for; two suffice).
const READ_ROUNDS: usize = 4;

/// A witness the server asks to cosign.
struct Witness {
    name: String,
    endpoint: Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
    key: String,
}

pub struct Log {
    db: Arc<dyn Database>,
    blobs: BlobStore,
    key: Option<LogKey>,
    witnesses: Vec<Witness>,
    /// When the witnesses were last asked again for the newest checkpoint.
    last_retry: std::sync::Mutex<Option<i64>>,
}

/// How long apart the witnesses are asked again for a checkpoint some of them did not cosign.
const COSIGN_RETRY_SECS: i64 = 2;
/// How long a witness has to answer: agents and signers wait about five seconds for a version
/// to be in a served checkpoint.
const WITNESS_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Hashes read so far; a read of one not here fails and is remembered, to be fetched.
struct Known {
    hashes: HashMap<u64, Hash>,
    missing: RefCell<Vec<u64>>,
}

impl tlog_tiles::HashReader for Known {
    fn read_hashes(&self, indexes: &[u64]) -> std::result::Result<Vec<Hash>, tlog_tiles::Error> {
        let missing: Vec<u64> = indexes.iter().filter(|i| !self.hashes.contains_key(i)).copied().collect();
        if !missing.is_empty() {
            self.missing.borrow_mut().extend(missing);
            return Err(tlog_tiles::Error::InvalidTile);
        }
        Ok(indexes.iter().filter_map(|i| self.hashes.get(i)).copied().collect())
    }
}

/// Queue `entries` of events whose own writes are already done (tokens, devices): a crash in
/// between loses the entry, never the event's record (weaker than the repository's entries,
/// which share the transaction of what they record).
pub async fn enqueue(db: &dyn Database, entries: &[Entry]) -> Result<()> {
    let bytes: Vec<Vec<u8>> = entries.iter().map(|e| e.to_bytes().map_err(Error::internal)).collect::<Result<_>>()?;
    Ok(db.enqueue_log(&bytes).await?)
}

impl Log {
    /// The log signing with `key` (none: no log is kept, entries wait in the queue) as
    /// `origin`, asking `witnesses` to cosign.
    pub fn new(
        db: Arc<dyn Database>,
        blobs: BlobStore,
        key: Option<ringfence_trust::SigningKey>,
        origin: Option<&str>,
        witnesses: &[WitnessConfig],
    ) -> anyhow::Result<Self> {
        let key = match (key, origin) {
            (Some(key), Some(origin)) => Some(LogKey::new(origin, key)?),
            (Some(_), None) => anyhow::bail!("[log] origin: required with online-keys/log.key"),
            (None, _) => None,
        };
        let mut list = Vec::new();
        for w in witnesses {
            let endpoint = parse_url(&w.url).map_err(|e| anyhow::anyhow!("witness {}: {e:#}", w.name))?;
            let tls = match (&w.ca, endpoint.tls) {
                (Some(ca), true) => Some(client_tls(ca)?),
                (None, true) => anyhow::bail!("witness {}: `ca` is required for https", w.name),
                (_, false) => None,
            };
            CosignatureVerifier::new(&w.key).map_err(|e| anyhow::anyhow!("witness {}: {e}", w.name))?;
            list.push(Witness { name: w.name.clone(), endpoint, tls, key: w.key.clone() });
        }
        Ok(Self { db, blobs, key, witnesses: list, last_retry: std::sync::Mutex::new(None) })
    }

    /// Whether this server keeps a log (it has the log key).
    pub fn enabled(&self) -> bool {
        self.key.is_some()
    }

    /// The log key as a verifier key, when there is one.
    pub fn verifier_key(&self) -> Option<String> {
        self.key.as_ref().map(LogKey::verifier_key)
    }

    /// Keep `note` (of `size`) beside the tiles, unless a checkpoint at least as large is kept
    /// already: what is kept only moves forward (a restore replaying old batches, say).
    async fn keep_checkpoint(&self, note: &[u8], size: u64) -> Result<()> {
        let kept = match self.stored_checkpoint().await {
            Ok(Some(kept)) => kept.size(),
            // None kept, or one that does not verify: replaced.
            Ok(None) | Err(_) => 0,
        };
        if kept < size {
            self.blobs.put_checkpoint(Bytes::from(note.to_vec())).await?;
        }
        Ok(())
    }

    /// The checkpoint kept in the content store beside the tiles, verified with this log's key
    /// (none without a key, or when none is kept).
    pub async fn stored_checkpoint(&self) -> Result<Option<tlog_tiles::Checkpoint>> {
        let Some(key) = self.verifier_key() else { return Ok(None) };
        let Some(note) = self.blobs.get_checkpoint(ringfence_tlog::checkpoint::MAX_CHECKPOINT_BYTES as u64).await?
        else {
            return Ok(None);
        };
        let checkpoint = ringfence_tlog::checkpoint::verify(&note, &key)
            .map_err(|e| Error::Conflict(format!("the checkpoint kept in the content store: {e}")))?;
        Ok(Some(checkpoint))
    }

    /// The stored hashes of the complete subtrees on the right edge of a tree of `size`: what
    /// appending to it needs.
    async fn right_edge(&self, size: u64) -> Result<HashMap<u64, Hash>> {
        let frontier = tree::frontier(size);
        let found = self.db.log_hashes(&frontier).await?;
        let hashes: HashMap<u64, Hash> = found.into_iter().map(|(i, h)| (i, Hash(h))).collect();
        if hashes.len() < frontier.len() {
            return Err(Error::internal("the log's right edge is incomplete"));
        }
        Ok(hashes)
    }

    /// The root of the log as the database holds it with `tail` appended, computed without
    /// writing anything: (size, root).
    pub async fn root_with(&self, tail: &[Vec<u8>]) -> Result<(u64, Hash)> {
        let size = self.db.log_size().await?;
        let mut hashes = self.right_edge(size).await?;
        for (index, record) in (size..).zip(tail) {
            let known = Known { hashes, missing: RefCell::new(Vec::new()) };
            let new = tlog_tiles::stored_hashes(index, record, &known).map_err(Error::internal)?;
            hashes = known.hashes;
            let first = tlog_tiles::stored_hash_index(0, index);
            for (i, h) in (first..).zip(new) {
                hashes.insert(i, h);
            }
        }
        let new_size = size + tail.len() as u64;
        let (root, _) = self.with_hashes(hashes, |r| tlog_tiles::tree_hash(new_size, r)).await?;
        Ok((new_size, root))
    }

    /// Queue entries of events whose own writes are already done.
    pub async fn enqueue(&self, entries: &[Entry]) -> Result<()> {
        enqueue(&*self.db, entries).await
    }

    /// Run `compute` over the stored hashes, reading from the database what it asks for.
    async fn with_hashes<T>(
        &self,
        mut hashes: HashMap<u64, Hash>,
        compute: impl Fn(&Known) -> std::result::Result<T, tlog_tiles::Error>,
    ) -> Result<(T, HashMap<u64, Hash>)> {
        for _ in 0..READ_ROUNDS {
            let known = Known { hashes, missing: RefCell::new(Vec::new()) };
            let result = compute(&known);
            let missing = known.missing.take();
            hashes = known.hashes;
            match result {
                Ok(value) => return Ok((value, hashes)),
                Err(e) if missing.is_empty() => return Err(Error::internal(e)),
                Err(_) => {
                    let found = self.db.log_hashes(&missing).await?;
                    if found.len() < missing.len() {
                        return Err(Error::internal("the log's stored hashes are incomplete"));
                    }
                    hashes.extend(found.into_iter().map(|(i, h)| (i, Hash(h))));
                }
            }
        }
        Err(Error::internal("the log's hashes did not come together"))
    }

    /// Integrate what is queued: one batch, under the `Log` lock, then its tiles, then the
    /// witnesses' cosignatures. Returns the new size when the log grew.
    pub async fn integrate(&self, now: i64) -> Result<Option<u64>> {
        // The witnesses are asked after the lock is released, all at once: a slow one never
        // holds the sequencer.
        let integrated = self.integrate_locked(now).await?;
        match &integrated {
            Some((size, note)) if !self.witnesses.is_empty() => self.cosign(*size, note).await,
            Some(_) => {}
            None => self.cosign_again(now).await?,
        }
        Ok(integrated.map(|(size, _)| size))
    }

    /// One batch under the `Log` lock: the new size and its checkpoint note.
    async fn integrate_locked(&self, now: i64) -> Result<Option<(u64, Vec<u8>)>> {
        let Some(key) = &self.key else { return Ok(None) };
        let _guard = self.db.exclusive(Section::Log).await?;
        // A batch integrated before a crash whose tiles were not written yet.
        self.finish_tiles().await?;
        let size = self.db.log_size().await?;
        if size == 0 {
            self.backfill().await?;
        }
        let queued = self.db.log_queue(BATCH).await?;
        if queued.is_empty() {
            return Ok(None);
        }
        let mut hashes = self.right_edge(size).await?;
        let mut batch = LogBatch { first: size, created_at: now, ..LogBatch::default() };
        let mut logged_here = std::collections::BTreeSet::new();
        for q in queued {
            batch.queue_ids.push(q.id);
            let entry = match Entry::parse(&q.entry) {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::error!(error = %e, "a queued log entry does not parse; dropped");
                    continue;
                }
            };
            // Where metadata and pending versions are, for their proofs; one entry each (a
            // version logged already, as a backfill queued twice, is not logged again).
            let indexed = match &entry {
                Entry::Metadata { role, version, .. } => Some((role.clone(), *version)),
                Entry::Pending { role, version, sha256 } => Some((pending_key(role, sha256), *version)),
                _ => None,
            };
            if let Some((key, version)) = indexed {
                let logged = self.db.log_index_of(&key, version).await?.is_some();
                if logged || !logged_here.insert((key.clone(), version)) {
                    continue;
                }
                batch.metadata.push((key, version, size + batch.entries.len() as u64));
            }
            let index = size + batch.entries.len() as u64;
            let known = Known { hashes, missing: RefCell::new(Vec::new()) };
            let new = tlog_tiles::stored_hashes(index, &q.entry, &known).map_err(Error::internal)?;
            hashes = known.hashes;
            let first = tlog_tiles::stored_hash_index(0, index);
            for (i, h) in (first..).zip(new) {
                hashes.insert(i, h);
                batch.hashes.push((i, h.0));
            }
            batch.entries.push(q.entry);
        }
        if batch.entries.is_empty() {
            self.db.integrate_log(&batch).await?;
            return Ok(None);
        }
        let new_size = size + batch.entries.len() as u64;
        let (root, _) = self.with_hashes(hashes, |r| tlog_tiles::tree_hash(new_size, r)).await?;
        batch.checkpoint_note = key.sign(new_size, root).map_err(Error::internal)?;
        self.db.integrate_log(&batch).await?;
        self.finish_tiles().await?;
        Ok(Some((new_size, batch.checkpoint_note)))
    }

    /// What a mirror does instead of sequencing: append an upstream's `entries` (its log from
    /// this log's size on) exactly as given, with the upstream's `note` for the new size,
    /// once the tree they make has the root `checkpoint` (the note, verified by the caller
    /// against the log identity the trusted top-level targets names) signs; then write the
    /// tiles. `cosigners` are the witnesses whose cosignatures the note carries.
    pub async fn adopt(
        &self,
        entries: &[Vec<u8>],
        note: &[u8],
        checkpoint: &tlog_tiles::Checkpoint,
        cosigners: &[String],
        now: i64,
    ) -> Result<()> {
        let _guard = self.db.exclusive(Section::Log).await?;
        let size = self.db.log_size().await?;
        let new_size = size + entries.len() as u64;
        if new_size != checkpoint.size() {
            return Err(Error::Conflict(format!(
                "{} entries on a log of {size} make {new_size}, but the checkpoint is of {}",
                entries.len(),
                checkpoint.size()
            )));
        }
        let mut hashes = self.right_edge(size).await?;
        let mut batch = LogBatch { first: size, created_at: now, ..LogBatch::default() };
        for (index, entry) in (size..).zip(entries) {
            match Entry::parse(entry) {
                Ok(Entry::Metadata { role, version, .. }) => batch.metadata.push((role, version, index)),
                Ok(Entry::Pending { role, version, sha256 }) => {
                    batch.metadata.push((pending_key(&role, &sha256), version, index));
                }
                _ => {}
            }
            let known = Known { hashes, missing: RefCell::new(Vec::new()) };
            let new = tlog_tiles::stored_hashes(index, entry, &known).map_err(Error::internal)?;
            hashes = known.hashes;
            let first = tlog_tiles::stored_hash_index(0, index);
            for (i, h) in (first..).zip(new) {
                hashes.insert(i, h);
                batch.hashes.push((i, h.0));
            }
            batch.entries.push(entry.clone());
        }
        let (root, _) = self.with_hashes(hashes, |r| tlog_tiles::tree_hash(new_size, r)).await?;
        if root != *checkpoint.hash() {
            return Err(Error::Conflict(
                "the log's entries do not make the tree its checkpoint signs: a fork or a tampered copy".into(),
            ));
        }
        // Nothing new: what a crash may have left undone after an earlier adoption of these
        // entries (the tiles, the cosignatures) is done again.
        if !entries.is_empty() {
            batch.checkpoint_note = note.to_vec();
            self.db.integrate_log(&batch).await?;
        }
        if !cosigners.is_empty() && self.db.checkpoint_at(new_size).await?.is_some() {
            self.db.set_cosigned(new_size, note, cosigners).await?;
        }
        self.finish_tiles().await
    }

    /// An installation that published before it kept a log: queue the entries of the newest
    /// version of every role (what clients trust now). A new installation's log starts with
    /// root version 1, queued when it was published.
    async fn backfill(&self) -> Result<()> {
        let first = self.db.log_queue(1).await?.pop().and_then(|q| Entry::parse(&q.entry).ok());
        if matches!(&first, Some(Entry::Metadata { role, version: 1, .. }) if role == "root") {
            return Ok(());
        }
        let mut entries = Vec::new();
        for record in self.db.latest_all().await? {
            entries.push(Entry::Metadata {
                role: record.role.clone(),
                version: record.version,
                sha256: ringfence_trust::sha256_hex(&record.bytes),
                length: record.bytes.len() as u64,
            });
        }
        if !entries.is_empty() {
            tracing::info!(
                roles = entries.len(),
                "starting the transparency log with the newest version of every role"
            );
            self.enqueue(&entries).await?;
        }
        Ok(())
    }

    /// Write the tiles of every checkpoint not served yet, then serve it.
    async fn finish_tiles(&self) -> Result<()> {
        for cp in self.db.unwritten_checkpoints().await? {
            let written = self.db.latest_checkpoint().await?.map_or(0, |c| c.size).min(cp.size);
            self.write_tiles(written, cp.size).await?;
            // Beside the tiles, for a restore to check them against, before it is served: a
            // checkpoint served is one a restore can find.
            self.keep_checkpoint(&cp.note, cp.size).await?;
            self.db.mark_tiles_written(cp.size).await?;
        }
        Ok(())
    }

    /// The hash tiles and entry bundles that change from a tree of `old` to one of `size`.
    async fn write_tiles(&self, old: u64, size: u64) -> Result<()> {
        let mut hashes = HashMap::new();
        for tile in tlog_tiles::Tile::new_tiles(tree::TILE_HEIGHT, old, size) {
            let (data, kept) = self.with_hashes(hashes, |r| tile.read_data(r)).await?;
            hashes = kept;
            let path = tree::tile_path(Some(tile.level()), tile.level_index(), tile.width());
            self.blobs.put_tile(&path, Bytes::from(data)).await?;
            if tile.level() == 0 {
                let start = tile.level_index() << tree::TILE_HEIGHT;
                let records = self.db.log_entries(start, start + u64::from(tile.width())).await?;
                let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
                let bundle = tree::entry_bundle(&slices).map_err(Error::internal)?;
                let path = tree::tile_path(None, tile.level_index(), tile.width());
                self.blobs.put_tile(&path, Bytes::from(bundle)).await?;
            }
        }
        Ok(())
    }

    /// The newest checkpoint that some witness did not cosign (it was away): ask again, at most
    /// every few seconds.
    async fn cosign_again(&self, now: i64) -> Result<()> {
        if self.witnesses.is_empty() {
            return Ok(());
        }
        {
            let mut last = self.last_retry.lock().map_err(|_| Error::internal("poisoned"))?;
            if last.is_some_and(|at| now - at < COSIGN_RETRY_SECS) {
                return Ok(());
            }
            *last = Some(now);
        }
        if let Some(latest) = self.db.latest_checkpoint().await?
            && latest.cosigners < self.witnesses.len() as u64
        {
            self.cosign(latest.size, &latest.note).await;
        }
        Ok(())
    }

    /// Ask every witness at once to cosign the checkpoint of `size` (each within
    /// [`WITNESS_WAIT`]); keep what comes back verified when it is more than was kept.
    async fn cosign(&self, size: u64, note: &[u8]) {
        let asks = self.witnesses.iter().map(|w| async move {
            let answer = tokio::time::timeout(WITNESS_WAIT, self.ask(w, size, note)).await;
            (w, answer.unwrap_or_else(|_| Err(Error::Invalid("no answer in time".into()))))
        });
        let mut lines = Vec::new();
        let mut cosigned_by = Vec::new();
        for (witness, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(line) => {
                    lines.extend(line);
                    cosigned_by.push(witness.name.clone());
                }
                Err(e) => tracing::warn!(witness = %witness.name, size, error = %e, "no cosignature"),
            }
        }
        let kept = self.db.checkpoint_at(size).await.ok().flatten().map_or(0, |c| c.cosigners);
        if cosigned_by.is_empty() || (cosigned_by.len() as u64) <= kept {
            return;
        }
        let mut cosigned = note.to_vec();
        cosigned.extend(lines);
        if let Err(e) = self.db.set_cosigned(size, &cosigned, &cosigned_by).await {
            tracing::warn!(size, error = %e, "cosignatures not kept");
        }
    }

    /// One witness's cosignature line for the checkpoint of `size` (trying once more from the
    /// size a `409` names).
    async fn ask(&self, witness: &Witness, size: u64, note: &[u8]) -> Result<Vec<u8>> {
        let mut old = self.db.witness_size(&witness.name).await?;
        for _ in 0..2 {
            if old > size {
                return Err(Error::Conflict(format!("the witness has a larger tree ({old}) than this log ({size})")));
            }
            let proof = if old == 0 || old == size {
                Vec::new()
            } else {
                self.with_hashes(HashMap::new(), |r| tlog_tiles::prove_tree(size, old, r)).await?.0
            };
            let request = AddCheckpoint { old, proof, note: note.to_vec() };
            let headers = "Content-Type: text/plain; charset=utf-8\r\n";
            let (status, body) = post(&witness.endpoint, witness.tls.as_ref(), headers, &request.to_bytes())
                .await
                .map_err(|e| Error::Invalid(format!("{e:#}")))?;
            match status {
                200 => return self.check_cosignature(witness, note, &body),
                409 => {
                    let text = String::from_utf8_lossy(&body);
                    match text.trim_end().parse::<u64>() {
                        Ok(theirs) if theirs != old => old = theirs,
                        _ => return Err(Error::Conflict(format!("409 ({SIZE_CONTENT_TYPE}): {text}"))),
                    }
                }
                other => return Err(Error::Invalid(format!("answered {other}: {}", String::from_utf8_lossy(&body)))),
            }
        }
        Err(Error::Conflict("the witness's size kept changing".into()))
    }

    /// The answer's lines that are valid cosignatures of `note` by `witness`'s key.
    fn check_cosignature(&self, witness: &Witness, note: &[u8], body: &[u8]) -> Result<Vec<u8>> {
        let mut cosigned = note.to_vec();
        cosigned.extend_from_slice(body);
        let verifier = CosignatureVerifier::new(&witness.key).map_err(Error::internal)?;
        let parsed = Note::from_bytes(&cosigned).map_err(|e| Error::Invalid(format!("the answer: {e}")))?;
        let (verified, _) = parsed
            .verify(&VerifierList::new(vec![Box::new(verifier)]))
            .map_err(|e| Error::Invalid(format!("the cosignature: {e}")))?;
        let Some(sig) = verified.first() else { return Err(Error::Invalid("no cosignature".into())) };
        Ok(sig.to_bytes())
    }

    /// The newest checkpoint served: the newest that the quorum of witnesses the published
    /// identity asks for cosigned (a checkpoint clients could not accept yet is not served).
    async fn served(&self) -> Result<Option<CheckpointRecord>> {
        let quorum = self.quorum().await?;
        Ok(if quorum == 0 {
            self.db.latest_checkpoint().await?
        } else {
            self.db.latest_cosigned_checkpoint(quorum).await?
        })
    }

    /// The witness quorum of the log identity the published top-level targets names (0 when
    /// it names none).
    async fn quorum(&self) -> Result<u64> {
        let Some(targets) = self.db.latest_metadata("targets").await? else { return Ok(0) };
        let limit = ringfence_proto::limits::MAX_METADATA_BYTES as usize;
        let targets = ringfence_trust::Envelope::<ringfence_proto::tuf::Targets>::parse(&targets.bytes, limit)
            .map_err(Error::internal)?;
        let Some(file) = targets.signed.targets.get(ringfence_tlog::proof::IDENTITY_TARGET) else { return Ok(0) };
        let identity = ringfence_tlog::proof::LogIdentity::from_custom(file.custom.clone()).map_err(Error::internal)?;
        Ok(identity.quorum as u64)
    }

    /// The newest checkpoint served: its size and note, with its cosignatures.
    pub async fn served_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self.served().await?.map(|c| (c.size, served_note(c))))
    }

    /// The newest checkpoint served, with its cosignatures.
    pub async fn checkpoint(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.served().await?.map(served_note))
    }

    /// Entries sequenced so far.
    pub async fn size(&self) -> Result<u64> {
        Ok(self.db.log_size().await?)
    }

    /// The newest entries sequenced (at most `limit`, newest first) with their indexes, and the
    /// log's size.
    pub async fn recent_entries(&self, limit: u64) -> Result<(u64, Vec<(u64, String)>)> {
        let size = self.db.log_size().await?;
        let from = size.saturating_sub(limit);
        let entries = self.db.log_entries(from, size).await?;
        let mut out: Vec<(u64, String)> =
            entries.into_iter().zip(from..).map(|(e, i)| (i, String::from_utf8_lossy(&e).into_owned())).collect();
        out.reverse();
        Ok((size, out))
    }

    /// The checkpoint of `size`, if one was signed for it.
    pub async fn checkpoint_at(&self, size: u64) -> Result<Option<CheckpointRecord>> {
        Ok(self.db.checkpoint_at(size).await?)
    }

    /// A tile (or entry bundle) at its C2SP path `tile/…`.
    pub async fn tile(&self, path: &str) -> Result<Option<Bytes>> {
        Ok(self.blobs.get_tile(path).await?)
    }

    /// The proof bundle of pending `role` version `version` whose signed bytes hash to
    /// `sha256` (what a signer checks before signing).
    pub async fn pending_proof(&self, role: &str, version: u64, sha256: &str, old: u64) -> Result<Vec<u8>> {
        self.proof(&pending_key(role, sha256), version, old).await
    }

    /// The proof bundle of metadata `role` version `version` against the newest checkpoint,
    /// with the consistency proof from a tree of `old` (the client's).
    pub async fn proof(&self, role: &str, version: u64, old: u64) -> Result<Vec<u8>> {
        let index = self.db.log_index_of(role, version).await?.ok_or(Error::NotFound)?;
        let checkpoint = self.served().await?.ok_or(Error::NotFound)?;
        let size = checkpoint.size;
        if index >= size {
            return Err(Error::NotFound);
        }
        let entry = self.db.log_entries(index, index + 1).await?.pop().ok_or(Error::NotFound)?;
        let (inclusion, hashes) =
            self.with_hashes(HashMap::new(), |r| tlog_tiles::prove_record(size, index, r)).await?;
        let consistency = if old == 0 || old >= size {
            Vec::new()
        } else {
            self.with_hashes(hashes, |r| tlog_tiles::prove_tree(size, old, r)).await?.0
        };
        let bundle = ProofBundle {
            checkpoint: String::from_utf8(served_note(checkpoint)).map_err(Error::internal)?,
            index,
            entry: String::from_utf8(entry).map_err(Error::internal)?,
            inclusion: ProofBundle::encode_hashes(&inclusion),
            old_size: old.min(size),
            consistency: ProofBundle::encode_hashes(&consistency),
        };
        serde_json::to_vec(&bundle).map_err(Error::internal)
    }
}

/// How a pending version is indexed beside metadata versions (a space never occurs in a role
/// name, so the two never meet).
fn pending_key(role: &str, sha256: &str) -> String {
    format!("pending {role} {sha256}")
}

fn served_note(c: CheckpointRecord) -> Vec<u8> {
    c.cosigned.unwrap_or(c.note)
}
