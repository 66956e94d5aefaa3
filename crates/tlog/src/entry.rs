//! Log entries: one per event, in a fixed, versioned text format.
//!
//! ```text
//! ringfence-log-entry/1
//! metadata
//! role targets
//! version 7
//! sha256 <64 hex>
//! length 1234
//! ```
//!
//! The first line names the format and its version, the second the kind; then one
//! `<field> <value>` line per field, in the order the kind lists them, each ending in `\n`.
//! Values are non-empty and drawn from `A-Z a-z 0-9 . _ : , @ + / = -` (lists are
//! comma-separated), so an entry has exactly one encoding and parsing is a strict match.

use thiserror::Error;

/// First line of every entry (format and version).
pub const FORMAT: &str = "ringfence-log-entry/1";
/// Largest encoded entry accepted.
pub const MAX_ENTRY_BYTES: usize = 4096;

/// What the log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A metadata version the server published (root versions included: a key rotation is a
    /// new root version): its role, version, and the SHA-256 and length of its exact bytes.
    Metadata { role: String, version: u64, sha256: String, length: u64 },
    /// A role version prepared and waiting for signatures.
    Pending { role: String, version: u64, sha256: String },
    /// A signature received for a pending version: whose key, the signature, and the SHA-256
    /// of the signed bytes (the canonical `signed` part).
    Signature { role: String, version: u64, key_id: String, signature: String, signed_sha256: String },
    /// An enrollment token created: its id, groups, expiry (Unix seconds) and uses.
    EnrollmentToken { id: String, groups: Vec<String>, expires: i64, uses: u64 },
    /// A device accepted, with the public key it proves itself with.
    DeviceAccepted { id: String, public_key: String },
    /// A device revoked.
    DeviceRevoked { id: String },
    /// An admin token created: id, name and scopes.
    AdminToken { id: String, name: String, scopes: Vec<String> },
    /// An admin token revoked.
    AdminTokenRevoked { id: String },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("log entry: {0}")]
    Malformed(String),
}

fn malformed(message: impl Into<String>) -> EntryError {
    EntryError::Malformed(message.into())
}

fn value_ok(value: &str) -> bool {
    !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b',' | b'@' | b'+' | b'/' | b'=' | b'-')
        })
}

impl Entry {
    fn kind(&self) -> &'static str {
        match self {
            Entry::Metadata { .. } => "metadata",
            Entry::Pending { .. } => "pending",
            Entry::Signature { .. } => "signature",
            Entry::EnrollmentToken { .. } => "enrollment-token",
            Entry::DeviceAccepted { .. } => "device-accepted",
            Entry::DeviceRevoked { .. } => "device-revoked",
            Entry::AdminToken { .. } => "admin-token",
            Entry::AdminTokenRevoked { .. } => "admin-token-revoked",
        }
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        match self {
            Entry::Metadata { role, version, sha256, length } => vec![
                ("role", role.clone()),
                ("version", version.to_string()),
                ("sha256", sha256.clone()),
                ("length", length.to_string()),
            ],
            Entry::Pending { role, version, sha256 } => {
                vec![("role", role.clone()), ("version", version.to_string()), ("sha256", sha256.clone())]
            }
            Entry::Signature { role, version, key_id, signature, signed_sha256 } => vec![
                ("role", role.clone()),
                ("version", version.to_string()),
                ("key-id", key_id.clone()),
                ("signature", signature.clone()),
                ("signed-sha256", signed_sha256.clone()),
            ],
            Entry::EnrollmentToken { id, groups, expires, uses } => vec![
                ("id", id.clone()),
                ("groups", groups.join(",")),
                ("expires", expires.to_string()),
                ("uses", uses.to_string()),
            ],
            Entry::DeviceAccepted { id, public_key } => vec![("id", id.clone()), ("public-key", public_key.clone())],
            Entry::DeviceRevoked { id } | Entry::AdminTokenRevoked { id } => vec![("id", id.clone())],
            Entry::AdminToken { id, name, scopes } => {
                vec![("id", id.clone()), ("name", name.clone()), ("scopes", scopes.join(","))]
            }
        }
    }

    /// The entry's one encoding; refused if a value is empty, has a character outside the
    /// format's set, or the whole passes [`MAX_ENTRY_BYTES`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, EntryError> {
        let mut out = format!("{FORMAT}\n{}\n", self.kind());
        for (name, value) in self.fields() {
            if !value_ok(&value) {
                return Err(malformed(format!("{} {name}: {value:?} is not a value of the format", self.kind())));
            }
            out.push_str(&format!("{name} {value}\n"));
        }
        if out.len() > MAX_ENTRY_BYTES {
            return Err(malformed(format!("{} bytes, at most {MAX_ENTRY_BYTES}", out.len())));
        }
        Ok(out.into_bytes())
    }

    /// Parse an entry: exactly the encoding [`Entry::to_bytes`] gives, nothing else.
    pub fn parse(bytes: &[u8]) -> Result<Entry, EntryError> {
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(malformed(format!("{} bytes, at most {MAX_ENTRY_BYTES}", bytes.len())));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| malformed("not UTF-8"))?;
        let body = text.strip_suffix('\n').ok_or_else(|| malformed("does not end in a newline"))?;
        let mut lines = body.split('\n');
        if lines.next() != Some(FORMAT) {
            return Err(malformed(format!("not a {FORMAT} entry")));
        }
        let kind = lines.next().ok_or_else(|| malformed("no kind"))?;
        let mut values = Vec::new();
        for line in lines {
            let (name, value) = line.split_once(' ').ok_or_else(|| malformed(format!("line {line:?}")))?;
            if !value_ok(value) {
                return Err(malformed(format!("{name}: {value:?} is not a value of the format")));
            }
            values.push((name, value));
        }
        let mut fields = values.into_iter();
        let mut take = |want: &str| -> Result<String, EntryError> {
            match fields.next() {
                Some((name, value)) if name == want => Ok(value.to_owned()),
                Some((name, _)) => Err(malformed(format!("{kind}: {name} where {want} belongs"))),
                None => Err(malformed(format!("{kind}: no {want}"))),
            }
        };
        let number = |s: String| s.parse::<u64>().map_err(|_| malformed(format!("{s:?} is not a number")));
        let list = |s: String| s.split(',').map(str::to_owned).collect::<Vec<_>>();
        let entry = match kind {
            "metadata" => Entry::Metadata {
                role: take("role")?,
                version: number(take("version")?)?,
                sha256: take("sha256")?,
                length: number(take("length")?)?,
            },
            "pending" => {
                Entry::Pending { role: take("role")?, version: number(take("version")?)?, sha256: take("sha256")? }
            }
            "signature" => Entry::Signature {
                role: take("role")?,
                version: number(take("version")?)?,
                key_id: take("key-id")?,
                signature: take("signature")?,
                signed_sha256: take("signed-sha256")?,
            },
            "enrollment-token" => Entry::EnrollmentToken {
                id: take("id")?,
                groups: list(take("groups")?),
                expires: take("expires")?.parse().map_err(|_| malformed("expires: not a number"))?,
                uses: number(take("uses")?)?,
            },
            "device-accepted" => Entry::DeviceAccepted { id: take("id")?, public_key: take("public-key")? },
            "device-revoked" => Entry::DeviceRevoked { id: take("id")? },
            "admin-token" => Entry::AdminToken { id: take("id")?, name: take("name")?, scopes: list(take("scopes")?) },
            "admin-token-revoked" => Entry::AdminTokenRevoked { id: take("id")? },
            other => return Err(malformed(format!("unknown kind {other:?}"))),
        };
        if fields.next().is_some() {
            return Err(malformed(format!("{kind}: more fields than the kind has")));
        }
        // One encoding only: what was parsed must encode to exactly these bytes.
        if entry.to_bytes()? != bytes {
            return Err(malformed("not in the format's one encoding"));
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Entry> {
        vec![
            Entry::Metadata { role: "targets".into(), version: 7, sha256: "ab".repeat(32), length: 1234 },
            Entry::Pending { role: "approvals.pilot".into(), version: 3, sha256: "cd".repeat(32) },
            Entry::Signature {
                role: "approvals.production".into(),
                version: 3,
                key_id: "ef".repeat(32),
                signature: "01".repeat(64),
                signed_sha256: "cd".repeat(32),
            },
            Entry::EnrollmentToken {
                id: "tok1".into(),
                groups: vec!["pilot".into(), "eu".into()],
                expires: 1_800_000_000,
                uses: 10,
            },
            Entry::DeviceAccepted { id: "0a".repeat(16), public_key: "12".repeat(32) },
            Entry::DeviceRevoked { id: "0a".repeat(16) },
            Entry::AdminToken {
                id: "adm1".into(),
                name: "ci-publisher".into(),
                scopes: vec!["publish".into(), "approve".into()],
            },
            Entry::AdminTokenRevoked { id: "adm1".into() },
        ]
    }

    #[test]
    fn every_kind_round_trips_in_one_encoding() {
        for entry in all() {
            let bytes = entry.to_bytes().unwrap();
            assert!(bytes.starts_with(b"ringfence-log-entry/1\n"));
            assert_eq!(Entry::parse(&bytes).unwrap(), entry);
        }
        let bytes = all()[0].to_bytes().unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            format!(
                "ringfence-log-entry/1\nmetadata\nrole targets\nversion 7\nsha256 {}\nlength 1234\n",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let good = String::from_utf8(all()[0].to_bytes().unwrap()).unwrap();
        let bad = [
            good.replace("ringfence-log-entry/1", "ringfence-log-entry/2"),
            good.replace("metadata", "metadatum"),
            good.replace("version 7", "version 07"),
            good.replace("version 7", "version -7"),
            good.replace("role targets\nversion 7", "version 7\nrole targets"),
            good.replace("length 1234\n", ""),
            format!("{good}extra 1\n"),
            good.trim_end().to_owned(),
            good.replace("role targets", "role tar gets"),
            good.replace("role targets", "role "),
            good.replace("\n", "\r\n"),
            "x".repeat(MAX_ENTRY_BYTES + 1),
        ];
        for b in bad {
            assert!(Entry::parse(b.as_bytes()).is_err(), "{b:?}");
        }
        let spaced = Entry::AdminToken { id: "a".into(), name: "two words".into(), scopes: vec!["read".into()] };
        assert!(spaced.to_bytes().is_err(), "a value with a space has no encoding");
    }
}
