//! Checkpoints: C2SP `tlog-checkpoint` tree heads (origin, size, root hash), signed as a C2SP
//! `signed-note` with the log's ed25519 key. The key's name is the log's origin; its id is the
//! first four bytes of SHA-256(name || "\n" || 0x01 || public key), as `signed-note` says.

use signed_note::{Note, Signer, StandardVerifier, VerifierList};
use thiserror::Error;
use tlog_tiles::{Checkpoint, Hash};

use ringfence_trust::SigningKey;

/// Largest signed checkpoint accepted (a checkpoint is a few hundred bytes; witnesses add a
/// line each).
pub const MAX_CHECKPOINT_BYTES: usize = 16 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("checkpoint: {0}")]
    Invalid(String),
}

fn invalid(message: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Invalid(message.to_string())
}

/// The log's signing key, named by the log's origin (e.g. `updates.example.org/ringfence`).
pub struct LogKey {
    origin: String,
    key: SigningKey,
    public: ed25519_dalek::VerifyingKey,
    id: u32,
}

fn public_of(key: &SigningKey) -> Result<ed25519_dalek::VerifyingKey, CheckpointError> {
    let hex_key = key.public().to_tuf().keyval.public;
    let bytes: [u8; 32] =
        hex::decode(hex_key).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| invalid("not an ed25519 key"))?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(invalid)
}

impl LogKey {
    pub fn new(origin: &str, key: SigningKey) -> Result<Self, CheckpointError> {
        if !signed_note::is_key_name_valid(origin) {
            return Err(invalid(format!("{origin:?} is not a key name (no spaces or plus signs)")));
        }
        let public = public_of(&key)?;
        let id = signed_note::key_id(origin, &[&[1u8][..], public.as_bytes()].concat());
        Ok(Self { origin: origin.to_owned(), key, public, id })
    }

    /// The verifier key as `signed-note` writes it (`<name>+<id>+<base64 key>`): what
    /// witnesses and auditors are given.
    pub fn verifier_key(&self) -> String {
        signed_note::new_ed25519_verifier_key(&self.origin, &self.public)
    }

    /// Sign the checkpoint of a tree of `size` records with `root`.
    pub fn sign(&self, size: u64, root: Hash) -> Result<Vec<u8>, CheckpointError> {
        let checkpoint = Checkpoint::new(&self.origin, size, root, "").map_err(invalid)?;
        let mut note = Note::new(&checkpoint.to_bytes(), &[]).map_err(invalid)?;
        note.add_sigs(&[self]).map_err(invalid)?;
        Ok(note.to_bytes())
    }
}

impl Signer for LogKey {
    fn name(&self) -> &str {
        &self.origin
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(self.key.sign(msg))
    }
}

/// Verify a signed checkpoint against the log's verifier key: the note's signature by that key
/// (other signatures, say a witness's, are kept apart), and the checkpoint's origin being the
/// key's name. Returns the checkpoint.
pub fn verify(note: &[u8], verifier_key: &str) -> Result<Checkpoint, CheckpointError> {
    if note.len() > MAX_CHECKPOINT_BYTES {
        return Err(invalid(format!("{} bytes, at most {MAX_CHECKPOINT_BYTES}", note.len())));
    }
    let verifier = StandardVerifier::new(verifier_key).map_err(invalid)?;
    let origin = signed_note::Verifier::name(&verifier).to_owned();
    let note = Note::from_bytes(note).map_err(invalid)?;
    note.verify(&VerifierList::new(vec![Box::new(verifier)])).map_err(invalid)?;
    let checkpoint = Checkpoint::from_bytes(note.text()).map_err(invalid)?;
    if checkpoint.origin() != origin {
        return Err(invalid(format!("origin {:?}, the key is {origin:?}'s", checkpoint.origin())));
    }
    Ok(checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_verifies_and_nothing_else_does() {
        let key = LogKey::new("updates.example.org/ringfence", SigningKey::from_seed([9; 32])).unwrap();
        let root = Hash([7; 32]);
        let note = key.sign(42, root).unwrap();
        let text = String::from_utf8(note.clone()).unwrap();
        assert!(text.starts_with("updates.example.org/ringfence\n42\n"), "{text}");
        assert!(text.contains("\n\n\u{2014} updates.example.org/ringfence "), "{text}");
        let checkpoint = verify(&note, &key.verifier_key()).unwrap();
        assert_eq!((checkpoint.size(), checkpoint.hash()), (42, &root));

        // Another size, another key, another origin, or a note too long: refused.
        assert!(verify(text.replacen("\n42\n", "\n43\n", 1).as_bytes(), &key.verifier_key()).is_err());
        let other = LogKey::new("updates.example.org/ringfence", SigningKey::from_seed([8; 32])).unwrap();
        assert!(verify(&note, &other.verifier_key()).is_err());
        let elsewhere = LogKey::new("elsewhere.example.org/log", SigningKey::from_seed([9; 32])).unwrap();
        assert!(verify(&elsewhere.sign(42, root).unwrap(), &key.verifier_key()).is_err());
        assert!(verify(&vec![b'a'; MAX_CHECKPOINT_BYTES + 1], &key.verifier_key()).is_err());
        assert!(LogKey::new("two words", SigningKey::from_seed([9; 32])).is_err());
    }

    #[test]
    fn the_key_id_is_the_signed_note_one() {
        let key = LogKey::new("example.org/log", SigningKey::from_seed([3; 32])).unwrap();
        let vkey = key.verifier_key();
        let mut parts = vkey.split('+');
        assert_eq!(parts.next(), Some("example.org/log"));
        assert_eq!(u32::from_str_radix(parts.next().unwrap(), 16).unwrap(), Signer::key_id(&key));
    }
}
