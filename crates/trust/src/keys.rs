//! Public keys as TUF describes them, signing keys, and key files at rest.
//!
//! Ringfence signs with ed25519 only; it verifies ed25519, ecdsa-sha2-nistp256 (for hardware
//! keys) and rsassa-pss-sha256 (the specification's RSA scheme, which other TUF repositories
//! use). The key ids Ringfence writes are the SHA-256 of the canonical JSON of exactly
//! `{"keytype","scheme","keyval":{"public"}}`; the key ids it reads are names the delegating
//! metadata gives keys (other implementations compute them differently, or not at all), so a
//! threshold counts distinct public keys, never distinct ids (`envelope::count_valid`).

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use p256::pkcs8::DecodePublicKey;
use pkcs8::der::pem::LineEnding;
use rand_core::OsRng;
use ringfence_proto::tuf::{Key, KeyVal};
use serde_json::json;

use crate::canonical;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("unsupported key type {keytype:?} with scheme {scheme:?}")]
    Unsupported { keytype: String, scheme: String },
    #[error("malformed public key: {0}")]
    MalformedPublic(String),
    #[error("malformed signature")]
    MalformedSignature,
    #[error("signature does not verify")]
    BadSignature,
    #[error("key file: {0}")]
    KeyFile(String),
    #[error("key file is encrypted; a passphrase is needed")]
    PassphraseNeeded,
    #[error("wrong passphrase or damaged key file")]
    Decrypt,
}

/// SHA-256 of a key's canonical description, as 64 lower-case hex characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A public key Ringfence can verify with. Equal when the key material is equal, however it
/// was written.
#[derive(Clone)]
pub enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    EcdsaP256 {
        key: p256::ecdsa::VerifyingKey,
        pem: String,
    },
    /// RSASSA-PSS with SHA-256 and MGF1-SHA-256, salt as long as the digest (what
    /// securesystemslib, go-tuf and tough sign with).
    RsaPss {
        key: rsa::RsaPublicKey,
        pem: String,
    },
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PublicKey::Ed25519(a), PublicKey::Ed25519(b)) => a == b,
            (PublicKey::EcdsaP256 { key: a, .. }, PublicKey::EcdsaP256 { key: b, .. }) => a == b,
            (PublicKey::RsaPss { key: a, .. }, PublicKey::RsaPss { key: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

const ED25519: &str = "ed25519";
const ECDSA: &str = "ecdsa";
const ECDSA_P256: &str = "ecdsa-sha2-nistp256";
const RSA: &str = "rsa";
const RSA_PSS_SHA256: &str = "rsassa-pss-sha256";
/// Smallest RSA modulus accepted; the largest is the `rsa` crate's 4096 bits, which also
/// bounds the cost of one verification.
const RSA_MIN_BITS: usize = 2048;

impl PublicKey {
    /// Parse a key as it appears in metadata.
    pub fn from_tuf(key: &Key) -> Result<Self, KeyError> {
        match (key.keytype.as_str(), key.scheme.as_str()) {
            (ED25519, ED25519) => {
                let bytes = hex::decode(&key.keyval.public).map_err(|e| KeyError::MalformedPublic(e.to_string()))?;
                let bytes: [u8; 32] =
                    bytes.try_into().map_err(|_| KeyError::MalformedPublic("an ed25519 key is 32 bytes".into()))?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map_err(|e| KeyError::MalformedPublic(e.to_string()))?;
                Ok(PublicKey::Ed25519(key))
            }
            (ECDSA | ECDSA_P256, ECDSA_P256) => {
                let parsed = p256::ecdsa::VerifyingKey::from_public_key_pem(&key.keyval.public)
                    .map_err(|e| KeyError::MalformedPublic(e.to_string()))?;
                Ok(PublicKey::EcdsaP256 { key: parsed, pem: key.keyval.public.clone() })
            }
            (RSA, RSA_PSS_SHA256) => {
                use rsa::pkcs8::DecodePublicKey as _;
                use rsa::traits::PublicKeyParts as _;
                let parsed = rsa::RsaPublicKey::from_public_key_pem(&key.keyval.public)
                    .map_err(|e| KeyError::MalformedPublic(e.to_string()))?;
                if parsed.size() * 8 < RSA_MIN_BITS {
                    return Err(KeyError::MalformedPublic(format!("an RSA key needs at least {RSA_MIN_BITS} bits")));
                }
                Ok(PublicKey::RsaPss { key: parsed, pem: key.keyval.public.clone() })
            }
            (keytype, scheme) => Err(KeyError::Unsupported { keytype: keytype.into(), scheme: scheme.into() }),
        }
    }

    pub fn to_tuf(&self) -> Key {
        let (keytype, scheme, public) = match self {
            PublicKey::Ed25519(k) => (ED25519, ED25519, hex::encode(k.as_bytes())),
            PublicKey::EcdsaP256 { pem, .. } => (ECDSA, ECDSA_P256, pem.clone()),
            PublicKey::RsaPss { pem, .. } => (RSA, RSA_PSS_SHA256, pem.clone()),
        };
        Key {
            keytype: keytype.into(),
            scheme: scheme.into(),
            keyval: KeyVal { public, unrecognized: BTreeMap::new() },
            unrecognized: BTreeMap::new(),
        }
    }

    pub fn key_id(&self) -> KeyId {
        key_id_of(&self.to_tuf())
    }

    /// Verify a raw signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        match self {
            PublicKey::Ed25519(key) => {
                let sig = ed25519_dalek::Signature::from_slice(signature).map_err(|_| KeyError::MalformedSignature)?;
                key.verify_strict(message, &sig).map_err(|_| KeyError::BadSignature)
            }
            PublicKey::EcdsaP256 { key, .. } => {
                use p256::ecdsa::signature::Verifier;
                let sig = p256::ecdsa::Signature::from_der(signature).map_err(|_| KeyError::MalformedSignature)?;
                key.verify(message, &sig).map_err(|_| KeyError::BadSignature)
            }
            PublicKey::RsaPss { key, .. } => {
                use sha2::Digest as _;
                let digest = sha2::Sha256::digest(message);
                let scheme = rsa::Pss::new_with_salt::<sha2::Sha256>(32);
                key.verify(scheme, &digest, signature).map_err(|_| KeyError::BadSignature)
            }
        }
    }
}

/// The key id of `key`: SHA-256 over the canonical JSON of exactly keytype, scheme and
/// keyval.public.
pub fn key_id_of(key: &Key) -> KeyId {
    let value = json!({
        "keytype": key.keytype,
        "scheme": key.scheme,
        "keyval": { "public": key.keyval.public },
    });
    // Strings only: canonical encoding cannot fail on this value.
    let bytes = canonical::encode(&value).unwrap_or_default();
    KeyId(crate::sha256_hex(&bytes))
}

/// An ed25519 private key.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.key_id())
    }
}

const PEM_PLAIN: &str = "PRIVATE KEY";
const PEM_ENCRYPTED: &str = "ENCRYPTED PRIVATE KEY";

impl SigningKey {
    pub fn generate() -> Self {
        Self(ed25519_dalek::SigningKey::generate(&mut OsRng))
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey::Ed25519(self.0.verifying_key())
    }

    pub fn key_id(&self) -> KeyId {
        self.public().key_id()
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        use ed25519_dalek::Signer;
        self.0.sign(message).to_bytes().to_vec()
    }

    /// PKCS#8 PEM encrypted with `passphrase` (PBES2: scrypt and AES-256-CBC).
    pub fn to_encrypted_pem(&self, passphrase: &str) -> Result<String, KeyError> {
        let doc = self.0.to_pkcs8_der().map_err(|e| KeyError::KeyFile(e.to_string()))?;
        let info = pkcs8::PrivateKeyInfo::try_from(doc.as_bytes()).map_err(|e| KeyError::KeyFile(e.to_string()))?;
        let encrypted = info.encrypt(OsRng, passphrase.as_bytes()).map_err(|e| KeyError::KeyFile(e.to_string()))?;
        let pem = encrypted.to_pem(PEM_ENCRYPTED, LineEnding::LF).map_err(|e| KeyError::KeyFile(e.to_string()))?;
        Ok(pem.to_string())
    }

    /// Unencrypted PKCS#8 PEM: only for development keys and online keys the server must
    /// load unattended.
    pub fn to_unencrypted_pem(&self) -> Result<String, KeyError> {
        let doc = self.0.to_pkcs8_der().map_err(|e| KeyError::KeyFile(e.to_string()))?;
        let pem = doc.to_pem(PEM_PLAIN, LineEnding::LF).map_err(|e| KeyError::KeyFile(e.to_string()))?;
        Ok(pem.to_string())
    }

    /// Whether a PEM key file is encrypted.
    pub fn pem_is_encrypted(pem: &str) -> bool {
        pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    }

    /// Load a PKCS#8 PEM key, decrypting it with `passphrase` when it is encrypted.
    pub fn from_pem(pem: &str, passphrase: Option<&str>) -> Result<Self, KeyError> {
        if Self::pem_is_encrypted(pem) {
            let passphrase = passphrase.ok_or(KeyError::PassphraseNeeded)?;
            let (label, doc) = pkcs8::Document::from_pem(pem).map_err(|e| KeyError::KeyFile(e.to_string()))?;
            if label != PEM_ENCRYPTED {
                return Err(KeyError::KeyFile(format!("unexpected PEM label {label}")));
            }
            let info = pkcs8::EncryptedPrivateKeyInfo::try_from(doc.as_bytes())
                .map_err(|e| KeyError::KeyFile(e.to_string()))?;
            let secret = info.decrypt(passphrase.as_bytes()).map_err(|_| KeyError::Decrypt)?;
            let key = ed25519_dalek::SigningKey::from_pkcs8_der(secret.as_bytes())
                .map_err(|e| KeyError::KeyFile(e.to_string()))?;
            Ok(Self(key))
        } else {
            let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::KeyFile(e.to_string()))?;
            Ok(Self(key))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_covers_exactly_type_scheme_and_public() {
        let key = SigningKey::from_seed([7; 32]);
        let mut tuf = key.public().to_tuf();
        let id = key_id_of(&tuf);
        tuf.unrecognized.insert("x-owner".into(), json!("alice"));
        assert_eq!(key_id_of(&tuf), id);
        assert_eq!(PublicKey::from_tuf(&tuf).unwrap(), key.public());
    }

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let key = SigningKey::from_seed([1; 32]);
        let sig = key.sign(b"hello");
        assert_eq!(key.public().verify(b"hello", &sig), Ok(()));
        assert_eq!(key.public().verify(b"hellp", &sig), Err(KeyError::BadSignature));
        assert_eq!(SigningKey::from_seed([2; 32]).public().verify(b"hello", &sig), Err(KeyError::BadSignature));
        assert_eq!(key.public().verify(b"hello", &sig[..10]), Err(KeyError::MalformedSignature));
    }

    #[test]
    fn ecdsa_p256_keys_verify() {
        use p256::ecdsa::signature::Signer;
        use p256::pkcs8::EncodePublicKey;
        let secret = p256::ecdsa::SigningKey::from_slice(&[3; 32]).unwrap();
        let pem = secret.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
        let tuf = Key {
            keytype: "ecdsa".into(),
            scheme: "ecdsa-sha2-nistp256".into(),
            keyval: KeyVal { public: pem, unrecognized: BTreeMap::new() },
            unrecognized: BTreeMap::new(),
        };
        let public = PublicKey::from_tuf(&tuf).unwrap();
        let sig: p256::ecdsa::Signature = secret.sign(b"msg");
        assert_eq!(public.verify(b"msg", sig.to_der().as_bytes()), Ok(()));
        assert_eq!(public.verify(b"msh", sig.to_der().as_bytes()), Err(KeyError::BadSignature));
    }

    #[test]
    fn encrypted_key_files_need_the_passphrase() {
        let key = SigningKey::generate();
        let pem = key.to_encrypted_pem("correct horse").unwrap();
        assert!(SigningKey::pem_is_encrypted(&pem));
        assert!(!pem.contains(&hex::encode(key.0.to_bytes())));
        assert_eq!(SigningKey::from_pem(&pem, Some("correct horse")).unwrap().key_id(), key.key_id());
        assert!(matches!(SigningKey::from_pem(&pem, Some("wrong")), Err(KeyError::Decrypt)));
        assert!(matches!(SigningKey::from_pem(&pem, None), Err(KeyError::PassphraseNeeded)));
        let plain = key.to_unencrypted_pem().unwrap();
        assert_eq!(SigningKey::from_pem(&plain, None).unwrap().key_id(), key.key_id());
    }
}
