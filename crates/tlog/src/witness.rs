//! Witnesses: C2SP `tlog-cosignature` (`cosignature/v1`, timestamped ed25519 cosignatures of a
//! checkpoint), the C2SP `tlog-witness` `add-checkpoint` request, and the witness's decision on
//! one (pure: the caller keeps the state and the clock).
//!
//! A cosignature signs `cosignature/v1\ntime <T>\n` followed by the checkpoint's text; its note
//! signature is the 8-byte big-endian `T` and the 64-byte ed25519 signature, under the key id
//! SHA-256(name || "\n" || 0x04 || public key)[..4].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use signed_note::{Note, Signer, Verifier};
use tlog_tiles::{Checkpoint, Hash};

use ringfence_trust::SigningKey;

use crate::checkpoint::{CheckpointError, MAX_CHECKPOINT_BYTES};
use crate::tree;

/// The signature type of a `cosignature/v1` key.
pub const COSIGNATURE_TYPE: u8 = 0x04;
/// Most consistency-proof lines an `add-checkpoint` request carries (C2SP `tlog-witness`).
pub const MAX_PROOF_LINES: usize = 63;
/// Largest `add-checkpoint` body accepted.
pub const MAX_REQUEST_BYTES: usize = MAX_CHECKPOINT_BYTES + (MAX_PROOF_LINES + 2) * 48;
/// Content type of a `409` answer that carries the witness's size.
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";

fn invalid(message: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Invalid(message.to_string())
}

fn cosigned_message(time: u64, text: &[u8]) -> Vec<u8> {
    let mut msg = format!("cosignature/v1\ntime {time}\n").into_bytes();
    msg.extend_from_slice(text);
    msg
}

/// A witness's signing key, named (for example `witness.example.org/w1`), cosigning at `time`.
pub struct WitnessKey {
    name: String,
    key: SigningKey,
    public: [u8; 32],
    id: u32,
    time: u64,
}

fn public_bytes(key: &SigningKey) -> Result<[u8; 32], CheckpointError> {
    hex::decode(key.public().to_tuf().keyval.public)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| invalid("not an ed25519 key"))
}

impl WitnessKey {
    pub fn new(name: &str, key: SigningKey) -> Result<Self, CheckpointError> {
        if !signed_note::is_key_name_valid(name) {
            return Err(invalid(format!("{name:?} is not a key name (no spaces or plus signs)")));
        }
        let public = public_bytes(&key)?;
        let id = signed_note::key_id(name, &[&[COSIGNATURE_TYPE][..], &public].concat());
        Ok(Self { name: name.to_owned(), key, public, id, time: 0 })
    }

    /// The verifier key logs and clients are given: `<name>+<id>+<base64(0x04 || key)>`.
    pub fn verifier_key(&self) -> String {
        let mut key = vec![COSIGNATURE_TYPE];
        key.extend_from_slice(&self.public);
        format!("{}+{:08x}+{}", self.name, self.id, BASE64.encode(key))
    }

    /// The cosignature line (`— <name> <base64>\n`) of checkpoint `note` at Unix time `time`.
    pub fn cosign(&mut self, note: &[u8], time: u64) -> Result<Vec<u8>, CheckpointError> {
        if time == 0 || time > i64::MAX as u64 {
            return Err(invalid("a cosignature's time is after 1970 and below 2^63"));
        }
        self.time = time;
        let mut note = Note::from_bytes(note).map_err(invalid)?;
        note.add_sigs(&[&*self]).map_err(invalid)?;
        let bytes = note.to_bytes();
        // The new signature is the last line.
        let text = String::from_utf8(bytes).map_err(invalid)?;
        let last = text.trim_end_matches('\n').rsplit('\n').next().unwrap_or_default();
        Ok(format!("{last}\n").into_bytes())
    }
}

impl Signer for WitnessKey {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let mut out = self.time.to_be_bytes().to_vec();
        out.extend_from_slice(&self.key.sign(&cosigned_message(self.time, msg)));
        Ok(out)
    }
}

/// Verifies `cosignature/v1` signatures of one witness key.
pub struct CosignatureVerifier {
    name: String,
    id: u32,
    key: ed25519_dalek::VerifyingKey,
}

impl CosignatureVerifier {
    /// The witness's public key bytes.
    pub fn public(&self) -> Vec<u8> {
        self.key.as_bytes().to_vec()
    }

    /// From a verifier key `<name>+<id>+<base64(0x04 || key)>`.
    pub fn new(vkey: &str) -> Result<Self, CheckpointError> {
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id16), Some(key64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid(format!("{vkey:?} is not a verifier key")));
        };
        let key = BASE64.decode(key64).map_err(|_| invalid("a verifier key's key is base64"))?;
        let id = u32::from_str_radix(id16, 16).map_err(|_| invalid("a verifier key's id is 8 hex digits"))?;
        if id16.len() != 8 || !signed_note::is_key_name_valid(name) || id != signed_note::key_id(name, &key) {
            return Err(invalid(format!("{vkey:?}: name or key id do not match")));
        }
        let Some((&COSIGNATURE_TYPE, public)) = key.split_first() else {
            return Err(invalid(format!("{vkey:?} is not a cosignature/v1 key (type 0x04)")));
        };
        let public: [u8; 32] = public.try_into().map_err(|_| invalid("an ed25519 key is 32 bytes"))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&public).map_err(invalid)?;
        Ok(Self { name: name.to_owned(), id, key })
    }
}

impl Verifier for CosignatureVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let (Some(time), Some(signature)) = (sig.get(..8), sig.get(8..)) else { return false };
        let Ok(time) = <[u8; 8]>::try_from(time).map(u64::from_be_bytes) else { return false };
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else { return false };
        time != 0 && time <= i64::MAX as u64 && self.key.verify_strict(&cosigned_message(time, msg), &signature).is_ok()
    }
}

/// The C2SP `tlog-witness` `add-checkpoint` request: the size the witness last cosigned (as the
/// log believes), the consistency proof from there, the checkpoint note.
#[derive(Debug, Clone, PartialEq)]
pub struct AddCheckpoint {
    pub old: u64,
    pub proof: Vec<Hash>,
    pub note: Vec<u8>,
}

fn parse_decimal(text: &str) -> Option<u64> {
    let ok = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    if ok { text.parse().ok() } else { None }
}

impl AddCheckpoint {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("old {}\n", self.old);
        for hash in &self.proof {
            out.push_str(&BASE64.encode(hash.0));
            out.push('\n');
        }
        out.push('\n');
        let mut out = out.into_bytes();
        out.extend_from_slice(&self.note);
        out
    }

    /// Parse a request body: exactly `old <size>`, at most 63 proof lines, a blank line, the
    /// note; bounded by [`MAX_REQUEST_BYTES`].
    pub fn parse(body: &[u8]) -> Result<Self, CheckpointError> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(invalid(format!("a request of {} bytes, at most {MAX_REQUEST_BYTES}", body.len())));
        }
        let text = std::str::from_utf8(body).map_err(|_| invalid("the request is not UTF-8"))?;
        let (head, note) = text.split_once("\n\n").ok_or_else(|| invalid("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .and_then(parse_decimal)
            .ok_or_else(|| invalid("the first line is \"old <size>\""))?;
        let mut proof = Vec::new();
        for line in lines {
            if proof.len() == MAX_PROOF_LINES {
                return Err(invalid(format!("more than {MAX_PROOF_LINES} proof lines")));
            }
            let bytes = BASE64.decode(line).map_err(|_| invalid("a proof line is one base64 hash"))?;
            proof.push(Hash(bytes.try_into().map_err(|_| invalid("a proof hash is 32 bytes"))?));
        }
        Ok(Self { old, proof, note: note.as_bytes().to_vec() })
    }
}

/// Why a witness refuses an `add-checkpoint`, with the HTTP status C2SP `tlog-witness` gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 404: not a log this witness knows.
    UnknownLog,
    /// 403: not signed by the log's key.
    NotSigned(String),
    /// 400: a malformed request, or an old size past the checkpoint.
    Malformed(String),
    /// 409 with `text/x.tlog.size`: the witness's size is another.
    StaleSize(u64),
    /// 422: the consistency proof does not verify.
    BadProof(String),
    /// 409: the same size as what the witness holds, another root (a fork).
    Fork,
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::UnknownLog => 404,
            Refusal::NotSigned(_) => 403,
            Refusal::Malformed(_) => 400,
            Refusal::StaleSize(_) | Refusal::Fork => 409,
            Refusal::BadProof(_) => 422,
        }
    }
}

/// What the witness holds for a log: the last checkpoint it cosigned.
#[derive(Debug, Clone, PartialEq)]
pub struct Witnessed {
    pub size: u64,
    pub root: Hash,
}

/// A witness's decision on `request` for a log it knows by `origin` and `log_key` (a
/// `signed-note` verifier key), holding `held` (`None`: never cosigned one): the checkpoint to
/// cosign and keep, or why not. The caller keeps the state, and replaces `held` atomically.
pub fn decide(
    request: &AddCheckpoint,
    origin: &str,
    log_key: &str,
    held: Option<&Witnessed>,
) -> Result<Checkpoint, Refusal> {
    let checkpoint =
        Checkpoint::from_bytes(Note::from_bytes(&request.note).map_err(|e| Refusal::Malformed(e.to_string()))?.text())
            .map_err(|e| Refusal::Malformed(e.to_string()))?;
    if checkpoint.origin() != origin {
        return Err(Refusal::UnknownLog);
    }
    crate::checkpoint::verify(&request.note, log_key).map_err(|e| Refusal::NotSigned(e.to_string()))?;
    if request.old > checkpoint.size() {
        return Err(Refusal::Malformed(format!(
            "old size {} is past the checkpoint's {}",
            request.old,
            checkpoint.size()
        )));
    }
    let held_size = held.map_or(0, |h| h.size);
    if request.old != held_size {
        return Err(Refusal::StaleSize(held_size));
    }
    match held.filter(|h| h.size > 0) {
        None => {
            if !request.proof.is_empty() {
                return Err(Refusal::BadProof("a proof from size 0 is empty".into()));
            }
        }
        Some(h) if h.size == checkpoint.size() => {
            if h.root != *checkpoint.hash() {
                return Err(Refusal::Fork);
            }
        }
        Some(h) => {
            tree::check_consistency(&request.proof, checkpoint.size(), *checkpoint.hash(), h.size, h.root)
                .map_err(|e| Refusal::BadProof(e.to_string()))?;
        }
    }
    Ok(checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::LogKey;
    use crate::tree::Tree;

    fn log() -> (LogKey, Tree) {
        let mut tree = Tree::new();
        for i in 0..20u32 {
            tree.append(&i.to_be_bytes()).unwrap();
        }
        (LogKey::new("example.org/log", SigningKey::from_seed([1; 32])).unwrap(), tree)
    }

    #[test]
    fn a_cosignature_verifies_with_its_key_only() {
        let (key, tree) = log();
        let note = key.sign(20, tree.root(20).unwrap()).unwrap();
        let mut witness = WitnessKey::new("witness.example.org/w1", SigningKey::from_seed([2; 32])).unwrap();
        let line = witness.cosign(&note, 1_700_000_000).unwrap();
        assert!(line.starts_with("\u{2014} witness.example.org/w1 ".as_bytes()));
        let cosigned = [note.clone(), line.clone()].concat();
        let verifier = CosignatureVerifier::new(&witness.verifier_key()).unwrap();
        let parsed = Note::from_bytes(&cosigned).unwrap();
        let list = signed_note::VerifierList::new(vec![Box::new(verifier)]);
        let (verified, _) = parsed.verify(&list).unwrap();
        assert_eq!(verified.len(), 1);

        // The cosignature of another checkpoint does not verify for this one.
        let other = key.sign(19, tree.root(19).unwrap()).unwrap();
        let moved = [other, line].concat();
        let verifier = CosignatureVerifier::new(&witness.verifier_key()).unwrap();
        let list = signed_note::VerifierList::new(vec![Box::new(verifier)]);
        assert!(Note::from_bytes(&moved).unwrap().verify(&list).is_err());
        // A log key is not a cosignature key, and a time of zero is refused.
        assert!(CosignatureVerifier::new(&key.verifier_key()).is_err());
        assert!(witness.cosign(&note, 0).is_err());
    }

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        let request = AddCheckpoint { old: 7, proof: vec![Hash([3; 32]), Hash([4; 32])], note: b"n\n\nx\n".to_vec() };
        assert_eq!(AddCheckpoint::parse(&request.to_bytes()).unwrap(), request);
        for bad in [
            &b"old 07\n\nnote\n"[..],
            b"old +7\n\nnote\n",
            b"old 7\nnot base64!\n\nnote\n",
            b"old 7\nAAAA\n\nnote\n",
            b"new 7\n\nnote\n",
            b"old 7\nnote\n",
        ] {
            assert!(AddCheckpoint::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let many = format!("old 1\n{}\nnote\n", format!("{}\n", BASE64.encode([0u8; 32])).repeat(64));
        assert!(AddCheckpoint::parse(many.as_bytes()).is_err());
    }

    #[test]
    fn a_witness_cosigns_only_consistent_growth() {
        let (key, tree) = log();
        let vkey = key.verifier_key();
        let at = |size: u64| key.sign(size, tree.root(size).unwrap()).unwrap();
        let first = AddCheckpoint { old: 0, proof: vec![], note: at(10) };
        let cp = decide(&first, "example.org/log", &vkey, None).unwrap();
        let held = Witnessed { size: cp.size(), root: *cp.hash() };

        // Growth with its proof is cosigned; the same checkpoint again too.
        let grow = AddCheckpoint { old: 10, proof: tree.prove_consistency(10, 20).unwrap(), note: at(20) };
        assert_eq!(decide(&grow, "example.org/log", &vkey, Some(&held)).unwrap().size(), 20);
        let same = AddCheckpoint { old: 10, proof: vec![], note: at(10) };
        assert!(decide(&same, "example.org/log", &vkey, Some(&held)).is_ok());

        // A stale old size: 409 with the witness's size.
        let stale = AddCheckpoint { old: 5, proof: tree.prove_consistency(5, 20).unwrap(), note: at(20) };
        assert_eq!(decide(&stale, "example.org/log", &vkey, Some(&held)), Err(Refusal::StaleSize(10)));
        // A proof that does not prove: 422.
        let mut bad = grow.clone();
        bad.proof[0].0[0] ^= 1;
        assert_eq!(decide(&bad, "example.org/log", &vkey, Some(&held)).unwrap_err().status(), 422);
        // Another tree of the same size (a fork): 409.
        let mut forked = Tree::new();
        for i in 0..10u32 {
            forked.append(&(i + 100).to_be_bytes()).unwrap();
        }
        let fork = AddCheckpoint { old: 10, proof: vec![], note: key.sign(10, forked.root(10).unwrap()).unwrap() };
        assert_eq!(decide(&fork, "example.org/log", &vkey, Some(&held)), Err(Refusal::Fork));
        // Not signed by the log: 403. Another origin: 404. Old past the checkpoint: 400.
        let stranger = LogKey::new("example.org/log", SigningKey::from_seed([9; 32])).unwrap();
        let unsigned =
            AddCheckpoint { old: 10, proof: vec![], note: stranger.sign(10, tree.root(10).unwrap()).unwrap() };
        assert_eq!(decide(&unsigned, "example.org/log", &vkey, Some(&held)).unwrap_err().status(), 403);
        assert_eq!(decide(&grow, "example.org/other", &vkey, Some(&held)), Err(Refusal::UnknownLog));
        let past = AddCheckpoint { old: 30, proof: vec![], note: at(20) };
        assert_eq!(decide(&past, "example.org/log", &vkey, Some(&held)).unwrap_err().status(), 400);
    }
}
