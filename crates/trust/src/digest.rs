//! The target and metadata hashes a client can check: sha256 and sha512.

use std::collections::BTreeMap;

use sha2::Digest;

/// Algorithms this client computes, by their TUF names.
pub const SUPPORTED: [&str; 2] = ["sha256", "sha512"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("the {0} hash does not match")]
    Mismatch(String),
    #[error("none of the listed hash algorithms ({0}) is supported (sha256, sha512)")]
    NoneSupported(String),
}

/// Lower-case hex digests of one byte string, computed incrementally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub sha256: String,
    pub sha512: String,
}

/// Feeds bytes into every supported hash at once (one pass over a download).
#[derive(Default, Clone)]
pub struct Hasher {
    sha256: sha2::Sha256,
    sha512: sha2::Sha512,
    length: u64,
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        self.sha512.update(bytes);
        self.length += bytes.len() as u64;
    }

    /// Length seen and the digests.
    pub fn finish(self) -> (u64, Digests) {
        let digests =
            Digests { sha256: hex::encode(self.sha256.finalize()), sha512: hex::encode(self.sha512.finalize()) };
        (self.length, digests)
    }
}

impl std::io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Digests {
    pub fn of(bytes: &[u8]) -> Self {
        let mut h = Hasher::default();
        h.update(bytes);
        h.finish().1
    }

    fn get(&self, algorithm: &str) -> Option<&str> {
        match algorithm {
            "sha256" => Some(&self.sha256),
            "sha512" => Some(&self.sha512),
            _ => None,
        }
    }

    /// Check every supported algorithm `listed` names (hex compared case-insensitively);
    /// algorithms this client does not know are skipped, but at least one must be known.
    pub fn check(&self, listed: &BTreeMap<String, String>) -> Result<(), DigestError> {
        let mut checked = 0;
        for (algorithm, expected) in listed {
            let Some(actual) = self.get(algorithm) else { continue };
            if !expected.eq_ignore_ascii_case(actual) {
                return Err(DigestError::Mismatch(algorithm.clone()));
            }
            checked += 1;
        }
        if checked == 0 {
            let names: Vec<&str> = listed.keys().map(String::as_str).collect();
            return Err(DigestError::NoneSupported(names.join(", ")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(a, h)| ((*a).to_owned(), (*h).to_owned())).collect()
    }

    #[test]
    fn every_listed_supported_hash_is_checked() {
        let d = Digests::of(b"abc");
        let sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let sha512 = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                      2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";
        assert_eq!(d.check(&listed(&[("sha256", sha256)])), Ok(()));
        assert_eq!(d.check(&listed(&[("sha512", sha512)])), Ok(()));
        assert_eq!(d.check(&listed(&[("sha256", sha256), ("sha512", sha512), ("blake2b", "00")])), Ok(()));
        // One right and one wrong: refused, whichever comes first.
        assert_eq!(
            d.check(&listed(&[("sha256", sha256), ("sha512", &"0".repeat(128))])),
            Err(DigestError::Mismatch("sha512".into()))
        );
        assert_eq!(
            d.check(&listed(&[("sha256", &"0".repeat(64)), ("sha512", sha512)])),
            Err(DigestError::Mismatch("sha256".into()))
        );
        assert!(matches!(d.check(&listed(&[("blake2b", "00")])), Err(DigestError::NoneSupported(_))));
        assert!(matches!(d.check(&BTreeMap::new()), Err(DigestError::NoneSupported(_))));
    }
}
