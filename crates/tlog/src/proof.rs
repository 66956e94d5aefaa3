//! What a client checks: the log's identity (published in signed metadata), the proof bundle
//! the server serves beside each metadata version, and the check itself — the entry is the one
//! expected, it is in the tree the checkpoint signs, the checkpoint is signed by the log and
//! cosigned by a quorum of witnesses, and it extends the last checkpoint the client trusted.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use signed_note::{Note, StandardVerifier, Verifier, VerifierList};
use tlog_tiles::{Checkpoint, Hash};

use crate::checkpoint::{CheckpointError, MAX_CHECKPOINT_BYTES};
use crate::entry::{Entry, MAX_ENTRY_BYTES};
use crate::tree;
use crate::witness::CosignatureVerifier;

/// The target path under which top-level targets publishes the log's identity.
pub const IDENTITY_TARGET: &str = ringfence_trust::policy::LOG_IDENTITY_TARGET;
/// Largest proof bundle accepted.
pub const MAX_BUNDLE_BYTES: usize = 32 * 1024;
/// Most hashes in one proof (a tree of 2^63 entries needs 63).
const MAX_PROOF_HASHES: usize = 64;
/// Most witnesses an identity names.
pub const MAX_WITNESSES: usize = 16;

/// A witness the identity names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessIdentity {
    pub name: String,
    /// Its `cosignature/v1` verifier key.
    pub key: String,
}

/// The log's identity as top-level targets publishes it (the `custom` of
/// [`IDENTITY_TARGET`], and the target's bytes): its origin, the log's verifier key, the
/// witnesses and how many of them must cosign a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogIdentity {
    pub origin: String,
    /// The log key as a `signed-note` verifier key (its name is the origin).
    pub key: String,
    #[serde(default)]
    pub witnesses: Vec<WitnessIdentity>,
    /// Witnesses that must cosign (m of the n listed).
    #[serde(default)]
    pub quorum: usize,
}

impl LogIdentity {
    /// The identity from the `custom` of top-level targets' [`IDENTITY_TARGET`], checked.
    pub fn from_custom(custom: Option<serde_json::Value>) -> Result<Self, CheckpointError> {
        let custom = custom.ok_or_else(|| invalid("the log identity carries no custom"))?;
        let identity: LogIdentity =
            serde_json::from_value(custom).map_err(|e| invalid(format!("the log identity: {e}")))?;
        identity.check()?;
        Ok(identity)
    }

    /// Refuse an identity no checkpoint could satisfy or that is malformed.
    pub fn check(&self) -> Result<(), CheckpointError> {
        let log = StandardVerifier::new(&self.key).map_err(|e| invalid(format!("log key: {e}")))?;
        if log.name() != self.origin {
            return Err(invalid(format!("the log key is named {:?}, not the origin {:?}", log.name(), self.origin)));
        }
        if self.witnesses.len() > MAX_WITNESSES {
            return Err(invalid(format!("at most {MAX_WITNESSES} witnesses")));
        }
        let log_public = log_public_key(&self.key)?;
        let mut names = std::collections::BTreeSet::new();
        let mut publics = std::collections::BTreeSet::new();
        for w in &self.witnesses {
            let v = CosignatureVerifier::new(&w.key)?;
            if v.name() != w.name || !names.insert(&w.name) {
                return Err(invalid(format!(
                    "witness {:?}: its key names it otherwise, or it is listed twice",
                    w.name
                )));
            }
            // A witness is someone other than the log: not its name, not its key, and two
            // names for one key are one witness.
            if w.name == self.origin || v.public() == log_public || !publics.insert(v.public()) {
                return Err(invalid(format!("witness {:?}: the log itself, or a key listed twice", w.name)));
            }
        }
        if self.quorum > self.witnesses.len() {
            return Err(invalid(format!("a quorum of {} among {} witnesses", self.quorum, self.witnesses.len())));
        }
        Ok(())
    }

    /// Verify a checkpoint note: signed by the log key, cosigned by at least `quorum` of the
    /// witnesses, a checkpoint of this origin. A known key's bad signature refuses the note.
    pub fn verify_checkpoint(&self, note: &[u8]) -> Result<Checkpoint, CheckpointError> {
        self.check()?;
        if note.len() > MAX_CHECKPOINT_BYTES {
            return Err(invalid(format!("{} bytes, at most {MAX_CHECKPOINT_BYTES}", note.len())));
        }
        let log = StandardVerifier::new(&self.key).map_err(invalid)?;
        let log_id = (log.name().to_owned(), log.key_id());
        let mut verifiers: Vec<Box<dyn Verifier>> = vec![Box::new(log)];
        let mut witness_ids = std::collections::BTreeSet::new();
        for w in &self.witnesses {
            let v = CosignatureVerifier::new(&w.key)?;
            witness_ids.insert((v.name().to_owned(), v.key_id()));
            verifiers.push(Box::new(v));
        }
        let parsed = Note::from_bytes(note).map_err(invalid)?;
        let (verified, _) = parsed.verify(&VerifierList::new(verifiers)).map_err(invalid)?;
        if !verified.iter().any(|s| (s.name().to_owned(), s.id()) == log_id) {
            return Err(invalid("the checkpoint is not signed by the log key"));
        }
        // Counted by (name, key id) of a listed witness: never the log's own signature.
        let cosigners: std::collections::BTreeSet<(String, u32)> =
            verified.iter().map(|s| (s.name().to_owned(), s.id())).filter(|id| witness_ids.contains(id)).collect();
        let cosigners = cosigners.len();
        if cosigners < self.quorum {
            return Err(invalid(format!("cosigned by {cosigners} witnesses, the quorum is {}", self.quorum)));
        }
        let checkpoint = Checkpoint::from_bytes(parsed.text()).map_err(invalid)?;
        if checkpoint.origin() != self.origin {
            return Err(invalid(format!("a checkpoint of {:?}, not {:?}", checkpoint.origin(), self.origin)));
        }
        Ok(checkpoint)
    }
}

/// The public key bytes of a `signed-note` ed25519 verifier key.
fn log_public_key(vkey: &str) -> Result<Vec<u8>, CheckpointError> {
    let key64 = vkey.splitn(3, '+').nth(2).ok_or_else(|| invalid("the log key is not a verifier key"))?;
    let key = BASE64.decode(key64).map_err(|_| invalid("the log key is not base64"))?;
    Ok(key.get(1..).unwrap_or_default().to_vec())
}

fn invalid(message: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Invalid(message.to_string())
}

/// What the server serves beside a metadata version: the checkpoint (with cosignatures), the
/// version's entry and index, the inclusion proof in that checkpoint's tree, and the
/// consistency proof from the size the client named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofBundle {
    pub checkpoint: String,
    pub index: u64,
    pub entry: String,
    pub inclusion: Vec<String>,
    pub old_size: u64,
    pub consistency: Vec<String>,
}

/// A checkpoint a client trusts: its size, root and note (kept as evidence).
#[derive(Debug, Clone, PartialEq)]
pub struct Trusted {
    pub size: u64,
    pub root: Hash,
    pub note: Vec<u8>,
}

impl Trusted {
    /// A stored note read back: verified again against the log key of `identity` (its
    /// cosignatures were checked when it was stored; the witness list or quorum may have
    /// changed since, the tree it names has not). `None` when the log key or origin is another
    /// (a new log: the client starts afresh).
    ///
    /// A note that is not a note, or whose signature by the log key does not verify, is an
    /// error: kept state that went bad never silently starts afresh.
    pub fn from_note(identity: &LogIdentity, note: &[u8]) -> Result<Option<Self>, CheckpointError> {
        if note.len() > MAX_CHECKPOINT_BYTES {
            return Err(invalid("the stored checkpoint is too long"));
        }
        let parsed = Note::from_bytes(note).map_err(|e| invalid(format!("the stored checkpoint: {e}")))?;
        let cp = Checkpoint::from_bytes(parsed.text()).map_err(|e| invalid(format!("the stored checkpoint: {e}")))?;
        if cp.origin() != identity.origin {
            return Ok(None);
        }
        let log = StandardVerifier::new(&identity.key).map_err(invalid)?;
        match parsed.verify(&VerifierList::new(vec![Box::new(log)])) {
            Ok(_) => Ok(Some(Self { size: cp.size(), root: *cp.hash(), note: note.to_vec() })),
            // Signed by another key of that origin: a new log key, a new log.
            Err(signed_note::NoteError::UnverifiedNote) => Ok(None),
            Err(e) => Err(invalid(format!("the stored checkpoint does not verify: {e}"))),
        }
    }
}

/// Why a client refuses a proof bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The bundle is malformed, or a proof or signature does not verify.
    #[error("transparency log: {0}")]
    Invalid(String),
    /// The entry is not the one the client expected for what it checks.
    #[error("transparency log: the logged entry is not this metadata version: {0}")]
    WrongEntry(String),
    /// The checkpoint is older than the newest the client has seen.
    #[error("transparency log: the checkpoint of size {served} is older than the trusted one of size {trusted}")]
    Older { served: u64, trusted: u64 },
    /// The same size as the trusted checkpoint, another root: the log forked.
    #[error("transparency log: two checkpoints of size {size} with different roots (a fork)")]
    Fork { size: u64, other: Vec<u8> },
}

fn proof_invalid(message: impl std::fmt::Display) -> ProofError {
    ProofError::Invalid(message.to_string())
}

fn hashes(lines: &[String]) -> Result<Vec<Hash>, ProofError> {
    if lines.len() > MAX_PROOF_HASHES {
        return Err(proof_invalid(format!("a proof of more than {MAX_PROOF_HASHES} hashes")));
    }
    lines
        .iter()
        .map(|l| {
            let bytes = BASE64.decode(l).map_err(|_| proof_invalid("a proof hash is base64"))?;
            Ok(Hash(bytes.try_into().map_err(|_| proof_invalid("a proof hash is 32 bytes"))?))
        })
        .collect()
}

impl ProofBundle {
    /// Parse `bytes` and verify them for `expected` against the checkpoint a client kept
    /// (`stored`, a note; `None`, or a note of another log: none). Returns the checkpoint to
    /// keep from now on.
    pub fn check(
        bytes: &[u8],
        identity: &LogIdentity,
        expected: &Entry,
        stored: Option<&[u8]>,
    ) -> Result<(Self, Trusted, Option<Trusted>), ProofError> {
        let bundle = Self::parse(bytes)?;
        let trusted = match stored {
            Some(note) => Trusted::from_note(identity, note).map_err(proof_invalid)?,
            None => None,
        };
        let newer = bundle.verify(identity, expected, trusted.as_ref())?;
        Ok((bundle, newer, trusted))
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, ProofError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(proof_invalid(format!("a proof bundle of {} bytes, at most {MAX_BUNDLE_BYTES}", bytes.len())));
        }
        serde_json::from_slice(bytes).map_err(|e| proof_invalid(format!("proof bundle: {e}")))
    }

    pub fn encode_hashes(proof: &[Hash]) -> Vec<String> {
        proof.iter().map(|h| BASE64.encode(h.0)).collect()
    }

    /// Check the bundle for `expected` against `identity` and the checkpoint the client trusts
    /// (`None`: none yet). Returns the checkpoint to trust from now on (the served one when it
    /// is newer, else the trusted one).
    pub fn verify(
        &self,
        identity: &LogIdentity,
        expected: &Entry,
        trusted: Option<&Trusted>,
    ) -> Result<Trusted, ProofError> {
        if self.entry.len() > MAX_ENTRY_BYTES {
            return Err(proof_invalid("an entry too long"));
        }
        let want = expected.to_bytes().map_err(|e| ProofError::WrongEntry(e.to_string()))?;
        if self.entry.as_bytes() != want.as_slice() {
            return Err(ProofError::WrongEntry(format!("{:?}", self.entry)));
        }
        let note = self.checkpoint.as_bytes();
        let checkpoint = identity.verify_checkpoint(note).map_err(proof_invalid)?;
        let (size, root) = (checkpoint.size(), *checkpoint.hash());
        tree::check_inclusion(&hashes(&self.inclusion)?, size, root, self.index, tree::leaf_hash(&want))
            .map_err(|e| proof_invalid(format!("inclusion: {e}")))?;
        let Some(trusted) = trusted else {
            return Ok(Trusted { size, root, note: note.to_vec() });
        };
        if size < trusted.size {
            return Err(ProofError::Older { served: size, trusted: trusted.size });
        }
        if size == trusted.size {
            if root != trusted.root {
                return Err(ProofError::Fork { size, other: note.to_vec() });
            }
            return Ok(trusted.clone());
        }
        if self.old_size != trusted.size {
            return Err(proof_invalid(format!(
                "a consistency proof from {}, not from {}",
                self.old_size, trusted.size
            )));
        }
        tree::check_consistency(&hashes(&self.consistency)?, size, root, trusted.size, trusted.root)
            .map_err(|e| proof_invalid(format!("consistency with the trusted checkpoint: {e}")))?;
        Ok(Trusted { size, root, note: note.to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::LogKey;
    use crate::tree::Tree;
    use crate::witness::WitnessKey;
    use proptest::prelude::*;
    use ringfence_trust::SigningKey;

    fn entry(version: u64) -> Entry {
        Entry::Metadata { role: "approvals.pilot".into(), version, sha256: "ab".repeat(32), length: 100 + version }
    }

    struct Log {
        key: LogKey,
        tree: Tree,
        witnesses: Vec<WitnessKey>,
    }

    impl Log {
        fn new(entries: u64, witnesses: usize) -> Self {
            let mut tree = Tree::new();
            for v in 0..entries {
                tree.append(&entry(v).to_bytes().unwrap()).unwrap();
            }
            let witnesses = (0..witnesses)
                .map(|i| {
                    WitnessKey::new(&format!("w{i}.example.org"), SigningKey::from_seed([20 + i as u8; 32])).unwrap()
                })
                .collect();
            Self { key: LogKey::new("example.org/log", SigningKey::from_seed([1; 32])).unwrap(), tree, witnesses }
        }

        fn identity(&self, quorum: usize) -> LogIdentity {
            LogIdentity {
                origin: "example.org/log".into(),
                key: self.key.verifier_key(),
                witnesses: self
                    .witnesses
                    .iter()
                    .map(|w| WitnessIdentity { name: signed_note::Signer::name(w).into(), key: w.verifier_key() })
                    .collect(),
                quorum,
            }
        }

        fn note(&mut self, size: u64, cosigners: usize) -> Vec<u8> {
            let mut note = self.key.sign(size, self.tree.root(size).unwrap()).unwrap();
            let plain = note.clone();
            for w in self.witnesses.iter_mut().take(cosigners) {
                note.extend(w.cosign(&plain, 1_800_000_000).unwrap());
            }
            note
        }

        fn bundle(&mut self, index: u64, size: u64, old: u64, cosigners: usize) -> ProofBundle {
            ProofBundle {
                checkpoint: String::from_utf8(self.note(size, cosigners)).unwrap(),
                index,
                entry: String::from_utf8(entry(index).to_bytes().unwrap()).unwrap(),
                inclusion: ProofBundle::encode_hashes(&self.tree.prove_inclusion(index, size).unwrap()),
                old_size: old,
                consistency: ProofBundle::encode_hashes(&self.tree.prove_consistency(old, size).unwrap()),
            }
        }
    }

    #[test]
    fn a_bundle_verifies_and_moves_the_trusted_checkpoint_forward() {
        let mut log = Log::new(40, 3);
        let identity = log.identity(2);
        let first = log.bundle(5, 10, 0, 2).verify(&identity, &entry(5), None).unwrap();
        assert_eq!(first.size, 10);
        let next = log.bundle(30, 40, 10, 3).verify(&identity, &entry(30), Some(&first)).unwrap();
        assert_eq!(next.size, 40);
        // The same checkpoint again keeps it; an older one is refused.
        assert_eq!(log.bundle(7, 40, 40, 2).verify(&identity, &entry(7), Some(&next)).unwrap(), next);
        let older = log.bundle(7, 20, 0, 2).verify(&identity, &entry(7), Some(&next));
        assert_eq!(older, Err(ProofError::Older { served: 20, trusted: 40 }));
        assert_eq!(Trusted::from_note(&identity, &next.note).unwrap(), Some(next.clone()));
        // Kept state that went bad is an error; a note of another log key starts afresh.
        let mut bad = next.note.clone();
        let line = String::from_utf8_lossy(&bad).find("\u{2014} example.org/log ").unwrap();
        let at = line + "\u{2014} example.org/log ".len() + 20;
        bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
        assert!(Trusted::from_note(&identity, &bad).is_err());
        let other = LogKey::new("example.org/log", SigningKey::from_seed([77; 32])).unwrap();
        let elsewhere = other.sign(3, Hash([1; 32])).unwrap();
        assert_eq!(Trusted::from_note(&identity, &elsewhere).unwrap(), None);
        // A witness named like the log, or listed twice under two names, is refused.
        let mut twice = log.identity(1);
        let mut copy = twice.witnesses[0].clone();
        copy.name = "w-other.example.org".into();
        twice.witnesses.push(copy);
        assert!(twice.check().is_err());
    }

    #[test]
    fn wrong_entries_missing_cosignatures_forks_and_bad_proofs_are_refused() {
        let mut log = Log::new(40, 3);
        let identity = log.identity(2);
        let trusted = log.bundle(5, 10, 0, 2).verify(&identity, &entry(5), None).unwrap();

        // Another version's entry, or the right entry at another index.
        assert!(matches!(
            log.bundle(6, 20, 10, 2).verify(&identity, &entry(5), Some(&trusted)),
            Err(ProofError::WrongEntry(_))
        ));
        let mut moved = log.bundle(6, 20, 10, 2);
        moved.entry = String::from_utf8(entry(5).to_bytes().unwrap()).unwrap();
        assert!(moved.verify(&identity, &entry(5), Some(&trusted)).is_err());
        // One cosignature where two are needed.
        assert!(log.bundle(6, 20, 10, 1).verify(&identity, &entry(6), Some(&trusted)).is_err());
        // A consistency proof from elsewhere.
        let from_elsewhere = log.bundle(6, 20, 9, 2);
        assert!(from_elsewhere.verify(&identity, &entry(6), Some(&trusted)).is_err());

        // A fork: another tree of the same size, signed by the same log key.
        let mut forked = Log::new(0, 3);
        for v in 0..10 {
            forked.tree.append(&entry(v + 1000).to_bytes().unwrap()).unwrap();
        }
        forked.tree.append(&entry(5).to_bytes().unwrap()).unwrap();
        let mut fork = forked.bundle(10, 11, 0, 2);
        fork.entry = String::from_utf8(entry(5).to_bytes().unwrap()).unwrap();
        let other = fork.verify(&identity, &entry(5), None).unwrap();
        let mut old = log.bundle(10, 11, 10, 2);
        old.index = 5;
        old.inclusion = ProofBundle::encode_hashes(&log.tree.prove_inclusion(5, 11).unwrap());
        old.entry = String::from_utf8(entry(5).to_bytes().unwrap()).unwrap();
        assert!(matches!(old.verify(&identity, &entry(5), Some(&other)), Err(ProofError::Fork { size: 11, .. })));

        // An identity with a quorum past its witnesses, or malformed bundles.
        assert!(log.identity(4).check().is_err());
        assert!(ProofBundle::parse(b"{\"checkpoint\":1}").is_err());
        assert!(ProofBundle::parse(&vec![b' '; MAX_BUNDLE_BYTES + 1]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn proofs_for_random_sizes_verify_and_any_flipped_bit_fails(
            size in 1u64..300, pick in any::<u64>(), old_pick in any::<u64>(), flip in any::<u16>()
        ) {
            let mut log = Log::new(size, 1);
            let identity = log.identity(1);
            let index = pick % size;
            let old = 1 + old_pick % size;
            let trusted = log.bundle(0, old, 0, 1).verify(&identity, &entry(0), None).unwrap();
            let bundle = log.bundle(index, size, old, 1);
            prop_assert!(bundle.verify(&identity, &entry(index), Some(&trusted)).is_ok());

            // Flip one bit of one proof hash (inclusion or consistency): refused.
            let mut hashes: Vec<(bool, usize)> = (0..bundle.inclusion.len()).map(|i| (true, i)).collect();
            if old < size {
                hashes.extend((0..bundle.consistency.len()).map(|i| (false, i)));
            }
            prop_assume!(!hashes.is_empty());
            let (inclusion, at) = hashes[usize::from(flip) % hashes.len()];
            let mut bad = bundle.clone();
            let list = if inclusion { &mut bad.inclusion } else { &mut bad.consistency };
            let mut bytes = BASE64.decode(&list[at]).unwrap();
            bytes[usize::from(flip / 8) % 32] ^= 1 << (flip % 8);
            list[at] = BASE64.encode(bytes);
            prop_assert!(bad.verify(&identity, &entry(index), Some(&trusted)).is_err());
        }
    }
}
