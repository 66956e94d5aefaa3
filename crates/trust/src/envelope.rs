//! A signed metadata document: `{"signed": ..., "signatures": [...]}`.
//!
//! The `signed` object is kept exactly as received (as a JSON tree) and its canonical
//! encoding is what signatures are checked against, so fields this version does not know are
//! covered by the signature too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use ringfence_proto::limits::{MAX_JSON_DEPTH, check_json_depth};
use ringfence_proto::tuf::{Key, Signature};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical::{self, CanonicalError};
use crate::keys::{KeyError, PublicKey, SigningKey};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("metadata is {len} bytes, more than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed metadata: {0}")]
    Malformed(String),
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    #[error("expected a {expected} document, got {found:?}")]
    WrongType { expected: &'static str, found: String },
    #[error("role {role} has {valid} valid signatures of the {threshold} required")]
    ThresholdNotMet { role: String, valid: u64, threshold: u64 },
    #[error("role {role} has a threshold of 0, which would trust anything")]
    ZeroThreshold { role: String },
    #[error("role {role} lists key {keyid} that is not defined")]
    UnknownKey { role: String, keyid: String },
    #[error(transparent)]
    Key(#[from] KeyError),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope {
    signatures: Vec<Signature>,
    signed: Value,
}

/// A parsed metadata document of type `T` with the exact bytes that were signed.
#[derive(Debug, Clone)]
pub struct Envelope<T> {
    pub signed: T,
    pub signatures: Vec<Signature>,
    /// The `signed` object as a JSON tree: as received for a parsed document; for one built
    /// here, read back from the canonical bytes when first asked for (only the signer's review
    /// asks), so it always shows what is signed.
    signed_value: OnceLock<Value>,
    canonical_signed: Vec<u8>,
}

/// The `_type` every metadata struct carries.
pub trait MetadataType {
    const TYPE: &'static str;
    fn type_field(&self) -> &str;
    fn version(&self) -> u64;
    fn expires(&self) -> &str;
}

macro_rules! metadata_type {
    ($t:ty, $name:literal) => {
        impl MetadataType for $t {
            const TYPE: &'static str = $name;
            fn type_field(&self) -> &str {
                &self.type_
            }
            fn version(&self) -> u64 {
                self.version
            }
            fn expires(&self) -> &str {
                &self.expires
            }
        }
    };
}

metadata_type!(ringfence_proto::tuf::Root, "root");
metadata_type!(ringfence_proto::tuf::Targets, "targets");
metadata_type!(ringfence_proto::tuf::Snapshot, "snapshot");
metadata_type!(ringfence_proto::tuf::Timestamp, "timestamp");
metadata_type!(ringfence_proto::tuf::RolloutHolds, "ringfence-rollouts");

impl<T: DeserializeOwned + Serialize + MetadataType> Envelope<T> {
    /// Parse a document of at most `max_len` bytes.
    pub fn parse(bytes: &[u8], max_len: usize) -> Result<Self, EnvelopeError> {
        if bytes.len() > max_len {
            return Err(EnvelopeError::TooLarge { len: bytes.len(), max: max_len });
        }
        check_json_depth(bytes, MAX_JSON_DEPTH).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        let raw: RawEnvelope = serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        // The specification: a key id MUST be unique in the signatures array.
        let mut seen = BTreeSet::new();
        if let Some(dup) = raw.signatures.iter().find(|s| !seen.insert(s.keyid.as_str())) {
            return Err(EnvelopeError::Malformed(format!("key id {} signs twice", dup.keyid)));
        }
        if let Some(found) = raw.signed.get("_type").and_then(Value::as_str)
            && found != T::TYPE
        {
            return Err(EnvelopeError::WrongType { expected: T::TYPE, found: found.into() });
        }
        if raw.signed.pointer("/delegations/succinct_roles").is_some() {
            return Err(EnvelopeError::Malformed("succinct_roles delegations are not supported".into()));
        }
        let signed: T =
            serde_json::from_value(raw.signed.clone()).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if signed.type_field() != T::TYPE {
            return Err(EnvelopeError::WrongType { expected: T::TYPE, found: signed.type_field().into() });
        }
        crate::expiry::parse(signed.expires()).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        let canonical_signed = canonical::encode(&raw.signed)?;
        Ok(Self { signed, signatures: raw.signatures, signed_value: OnceLock::from(raw.signed), canonical_signed })
    }

    /// Build an unsigned envelope from our own struct. Its canonical bytes are made here, once:
    /// to change `signed` afterwards, build a new envelope.
    pub fn new(signed: T) -> Result<Self, EnvelopeError> {
        let canonical_signed = canonical::to_canonical(&signed).map_err(|e| match e {
            canonical::CanonicalEncodeError::Canonical(c) => EnvelopeError::Canonical(c),
            canonical::CanonicalEncodeError::Serialize(m) => EnvelopeError::Malformed(m),
        })?;
        Ok(Self { signed, signatures: Vec::new(), signed_value: OnceLock::new(), canonical_signed })
    }

    /// The `signed` object exactly as received (unknown fields included), or as signed when
    /// built here — even if `signed` was changed since.
    pub fn signed_value(&self) -> &Value {
        self.signed_value.get_or_init(|| tree_of_canonical(&self.canonical_signed))
    }

    /// The canonical bytes signatures are made over.
    pub fn canonical_signed(&self) -> &[u8] {
        &self.canonical_signed
    }

    /// Add (or replace) this key's signature.
    pub fn sign(&mut self, key: &SigningKey) {
        let keyid = key.key_id().to_string();
        let sig = hex::encode(key.sign(&self.canonical_signed));
        self.signatures.retain(|s| s.keyid != keyid);
        self.signatures.push(Signature { keyid, sig });
        self.signatures.sort_by(|a, b| a.keyid.cmp(&b.keyid));
    }

    /// Add signatures made elsewhere, replacing older ones by the same key ids. Unchecked here:
    /// thresholds are checked by [`Envelope::verify`].
    pub fn add_signatures(&mut self, signatures: &[Signature]) {
        for s in signatures {
            self.signatures.retain(|old| old.keyid != s.keyid);
            self.signatures.push(s.clone());
        }
        self.signatures.sort_by(|a, b| a.keyid.cmp(&b.keyid));
    }

    /// The document as served: canonical JSON of the whole envelope, control characters in
    /// strings escaped so that any JSON parser reads it (see [`escape_controls`]). Written from the parts
    /// at hand — `"signatures"` sorts before `"signed"`, and the signed part's canonical bytes
    /// are the ones signatures are made over — instead of copying and re-encoding the whole
    /// document (the publish path's largest cost at 100k targets).
    pub fn to_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::with_capacity(self.canonical_signed.len() + 32 + 180 * self.signatures.len());
        out.extend_from_slice(b"{\"signatures\":[");
        for (i, s) in self.signatures.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // {"keyid":…,"sig":…}: the fields in canonical (sorted) order.
            out.extend_from_slice(b"{\"keyid\":");
            canonical::write_string(&s.keyid, &mut out);
            out.extend_from_slice(b",\"sig\":");
            canonical::write_string(&s.sig, &mut out);
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"signed\":");
        out.extend_from_slice(&self.canonical_signed);
        out.push(b'}');
        Ok(escape_controls(out))
    }

    /// Count distinct public keys among those `keyids` name that made a valid signature; fail
    /// below `threshold`.
    pub fn verify(
        &self,
        role: &str,
        keys: &BTreeMap<String, Key>,
        keyids: &[String],
        threshold: u64,
    ) -> Result<u64, EnvelopeError> {
        verify_threshold(role, &self.canonical_signed, &self.signatures, keys, keyids, threshold)
    }

    /// Like [`Envelope::verify`] but only counts, never fails on the threshold.
    pub fn count_valid(&self, keys: &BTreeMap<String, Key>, keyids: &[String]) -> u64 {
        count_valid(&self.canonical_signed, &self.signatures, keys, keyids)
    }
}

/// Canonical JSON as ordinary JSON. Canonical JSON leaves control characters in strings
/// unescaped, which JSON parsers (serde_json, Python's, every TUF client's) refuse; outside
/// strings it has none, so escaping each such byte as `\u00XX` gives JSON of the same tree,
/// whose canonical form — what signatures cover — is the input again.
fn escape_controls(canonical: Vec<u8>) -> Vec<u8> {
    if !canonical.iter().any(|b| *b < 0x20) {
        return canonical;
    }
    let mut json = Vec::with_capacity(canonical.len() + 32);
    for b in canonical {
        if b < 0x20 {
            json.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            json.push(b);
        }
    }
    json
}

/// The JSON tree of canonical bytes made by this crate (which always parse; anything else
/// would show as `null`).
fn tree_of_canonical(canonical: &[u8]) -> Value {
    serde_json::from_slice(&escape_controls(canonical.to_vec())).unwrap_or(Value::Null)
}

/// Count the distinct public keys that made a valid signature over `message`, among the keys
/// `keyids` names. A key id is only the name the delegating metadata gives a key (it is not
/// recomputed: other implementations derive ids differently), so one key listed under two ids
/// counts once, and a key id signing twice counts once.
pub fn count_valid(message: &[u8], signatures: &[Signature], keys: &BTreeMap<String, Key>, keyids: &[String]) -> u64 {
    let authorised: BTreeSet<&str> = keyids.iter().map(String::as_str).collect();
    let mut counted_ids: BTreeSet<&str> = BTreeSet::new();
    let mut counted_keys: Vec<PublicKey> = Vec::new();
    for s in signatures {
        if !authorised.contains(s.keyid.as_str()) || counted_ids.contains(s.keyid.as_str()) {
            continue;
        }
        let Some(key) = keys.get(&s.keyid) else { continue };
        let Ok(public) = PublicKey::from_tuf(key) else { continue };
        let Ok(sig) = hex::decode(&s.sig) else { continue };
        if public.verify(message, &sig).is_ok() {
            counted_ids.insert(s.keyid.as_str());
            if !counted_keys.contains(&public) {
                counted_keys.push(public);
            }
        }
    }
    counted_keys.len() as u64
}

pub fn verify_threshold(
    role: &str,
    message: &[u8],
    signatures: &[Signature],
    keys: &BTreeMap<String, Key>,
    keyids: &[String],
    threshold: u64,
) -> Result<u64, EnvelopeError> {
    if threshold == 0 {
        return Err(EnvelopeError::ZeroThreshold { role: role.into() });
    }
    let valid = count_valid(message, signatures, keys, keyids);
    if valid < threshold {
        return Err(EnvelopeError::ThresholdNotMet { role: role.into(), valid, threshold });
    }
    Ok(valid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ringfence_proto::tuf::Timestamp;

    fn timestamp() -> Timestamp {
        Timestamp {
            type_: "timestamp".into(),
            spec_version: "1.0.31".into(),
            version: 1,
            expires: "2030-01-01T00:00:00Z".into(),
            meta: BTreeMap::new(),
            unrecognized: BTreeMap::new(),
        }
    }

    fn keyring(n: u8) -> (Vec<SigningKey>, BTreeMap<String, Key>, Vec<String>) {
        let keys: Vec<SigningKey> = (0..n).map(|i| SigningKey::from_seed([i + 1; 32])).collect();
        let map = keys.iter().map(|k| (k.key_id().to_string(), k.public().to_tuf())).collect();
        let ids = keys.iter().map(|k| k.key_id().to_string()).collect();
        (keys, map, ids)
    }

    #[test]
    fn unknown_fields_stay_signed() {
        let (keys, map, ids) = keyring(1);
        let mut env = Envelope::new(timestamp()).unwrap();
        env.sign(&keys[0]);
        let mut value: Value = serde_json::from_slice(&env.to_bytes().unwrap()).unwrap();
        // A field added after signing breaks the signature...
        value["signed"]["x-extra"] = Value::from("added");
        let tampered = Envelope::<Timestamp>::parse(&serde_json::to_vec(&value).unwrap(), 1 << 20).unwrap();
        assert!(matches!(
            tampered.verify("timestamp", &map, &ids, 1),
            Err(EnvelopeError::ThresholdNotMet { valid: 0, .. })
        ));
        // ...and one that was signed survives a parse and re-encode.
        let mut env = Envelope::new(timestamp()).unwrap();
        let mut value = env.signed_value().clone();
        value["x-extra"] = Value::from("kept");
        env.canonical_signed = canonical::encode(&value).unwrap();
        env.signed_value = OnceLock::from(value);
        env.sign(&keys[0]);
        let parsed = Envelope::<Timestamp>::parse(&env.to_bytes().unwrap(), 1 << 20).unwrap();
        assert_eq!(parsed.signed.unrecognized.get("x-extra"), Some(&Value::from("kept")));
        assert_eq!(parsed.verify("timestamp", &map, &ids, 1), Ok(1));
        assert_eq!(parsed.to_bytes().unwrap(), env.to_bytes().unwrap());
    }

    proptest! {
        /// The served bytes, written from their parts, are exactly the canonical JSON of the
        /// whole envelope (what `to_bytes` computed before it wrote them directly), whatever
        /// the key ids and signatures hold — quotes and backslashes included.
        #[test]
        fn served_bytes_are_the_canonical_encoding_of_the_envelope(
            signatures in prop::collection::vec(("[ -~]{0,20}", "[ -~]{0,20}"), 0..4),
            version in 1u64..u64::MAX / 2,
            extra in "(?s).{0,16}",
        ) {
            let mut t = timestamp();
            t.version = version;
            t.unrecognized.insert("x-extra".into(), Value::from(extra));
            let mut env = Envelope::new(t).unwrap();
            env.signatures = signatures.into_iter().map(|(keyid, sig)| Signature { keyid, sig }).collect();
            let whole = serde_json::json!({"signatures": env.signatures, "signed": env.signed_value()});
            prop_assert_eq!(env.to_bytes().unwrap(), escape_controls(canonical::encode(&whole).unwrap()));
            // What a verifier parses back is what was signed and served.
            if env.signatures.iter().map(|s| &s.keyid).collect::<BTreeSet<_>>().len() == env.signatures.len() {
                let parsed = Envelope::<Timestamp>::parse(&env.to_bytes().unwrap(), 1 << 20).unwrap();
                prop_assert_eq!(parsed.canonical_signed(), env.canonical_signed());
                prop_assert_eq!(parsed.to_bytes().unwrap(), env.to_bytes().unwrap());
            }
        }
    }

    #[test]
    fn the_tree_of_a_built_envelope_is_what_was_signed() {
        let mut t = timestamp();
        t.unrecognized.insert("note".into(), Value::from("line one\nline two\u{1}\t\"quoted\" \\ é"));
        let mut env = Envelope::new(t.clone()).unwrap();
        // Changed after it was built: what is signed (and shown) is what was built.
        env.signed.version = 99;
        assert_eq!(env.signed_value(), &serde_json::to_value(&t).unwrap());
        assert_eq!(canonical::encode(env.signed_value()).unwrap(), env.canonical_signed());
        // Served as JSON any parser reads, whose canonical form is what was signed.
        let (keys, map, ids) = keyring(1);
        env.sign(&keys[0]);
        let served = env.to_bytes().unwrap();
        assert!(!served.iter().any(|b| *b < 0x20), "no raw control characters");
        let parsed = Envelope::<Timestamp>::parse(&served, 1 << 20).unwrap();
        assert_eq!(parsed.canonical_signed(), env.canonical_signed());
        assert_eq!(parsed.verify("timestamp", &map, &ids, 1), Ok(1));
        assert_eq!(parsed.signed.unrecognized["note"], t.unrecognized["note"]);
    }

    #[test]
    fn wrong_type_and_unknown_envelope_fields_are_refused() {
        let env = Envelope::new(timestamp()).unwrap();
        let bytes = env.to_bytes().unwrap();
        assert!(matches!(
            Envelope::<ringfence_proto::tuf::Snapshot>::parse(&bytes, 1 << 20),
            Err(EnvelopeError::WrongType { expected: "snapshot", .. })
        ));
        let extra = br#"{"signatures":[],"signed":{},"$type":"System.Object"}"#;
        assert!(matches!(Envelope::<Timestamp>::parse(extra, 1 << 20), Err(EnvelopeError::Malformed(_))));
        assert!(matches!(Envelope::<Timestamp>::parse(&bytes, 10), Err(EnvelopeError::TooLarge { .. })));
    }

    #[test]
    fn a_key_id_signing_twice_is_refused() {
        let (keys, _, _) = keyring(1);
        let mut env = Envelope::new(timestamp()).unwrap();
        env.sign(&keys[0]);
        let mut value: Value = serde_json::from_slice(&env.to_bytes().unwrap()).unwrap();
        let sig = value["signatures"][0].clone();
        value["signatures"].as_array_mut().unwrap().push(sig);
        let err = Envelope::<Timestamp>::parse(&serde_json::to_vec(&value).unwrap(), 1 << 20).unwrap_err();
        assert!(matches!(&err, EnvelopeError::Malformed(m) if m.contains("signs twice")), "{err:?}");
    }

    #[test]
    fn key_ids_are_names_and_one_key_under_two_names_counts_once() {
        let (keys, _, _) = keyring(2);
        let mut env = Envelope::new(timestamp()).unwrap();
        // Ids as another implementation might assign them: not recomputable from the key.
        let map: BTreeMap<String, Key> = BTreeMap::from([
            ("alice".to_owned(), keys[0].public().to_tuf()),
            ("alice-again".to_owned(), keys[0].public().to_tuf()),
            ("bob".to_owned(), keys[1].public().to_tuf()),
        ]);
        let sig = |k: &SigningKey, env: &Envelope<Timestamp>| hex::encode(k.sign(env.canonical_signed()));
        env.signatures = vec![
            Signature { keyid: "alice".into(), sig: sig(&keys[0], &env) },
            Signature { keyid: "alice-again".into(), sig: sig(&keys[0], &env) },
        ];
        let ids: Vec<String> = map.keys().cloned().collect();
        assert_eq!(env.count_valid(&map, &ids), 1, "one key under two ids counts once");
        assert!(matches!(env.verify("t", &map, &ids, 2), Err(EnvelopeError::ThresholdNotMet { valid: 1, .. })));
        env.signatures.push(Signature { keyid: "bob".into(), sig: sig(&keys[1], &env) });
        assert_eq!(env.verify("t", &map, &ids, 2), Ok(2));
    }

    proptest! {
        /// The count is the number of distinct authorised keys with a valid signature, however
        /// signatures are duplicated, reordered or mixed with signatures by strangers.
        #[test]
        fn threshold_counts_each_key_once(
            signers in prop::collection::vec(0usize..5, 0..12),
            authorised in prop::collection::btree_set(0usize..5, 0..5),
            strangers in 0usize..3,
            threshold in 1u64..5,
        ) {
            let (keys, map, ids) = keyring(5);
            let mut env = Envelope::new(timestamp()).unwrap();
            let sigs: Vec<Signature> = signers.iter().map(|&i| Signature {
                keyid: ids[i].clone(),
                sig: hex::encode(keys[i].sign(env.canonical_signed())),
            }).collect();
            env.signatures = sigs;
            // Strangers sign under real key ids with keys of their own.
            for (s, id) in ids.iter().enumerate().take(strangers) {
                let k = SigningKey::from_seed([100 + s as u8; 32]);
                env.signatures.push(Signature { keyid: id.clone(), sig: hex::encode(k.sign(env.canonical_signed())) });
            }
            let authorised_ids: Vec<String> = authorised.iter().map(|&i| ids[i].clone()).collect();
            let expected = signers.iter().collect::<BTreeSet<_>>().into_iter().filter(|i| authorised.contains(i)).count() as u64;
            prop_assert_eq!(env.count_valid(&map, &authorised_ids), expected);
            let result = env.verify("timestamp", &map, &authorised_ids, threshold);
            prop_assert_eq!(result.is_ok(), expected >= threshold);
        }
    }
}
