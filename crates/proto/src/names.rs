//! Validated names: parsed once at the edge, then passed around as these types.
//!
//! Everything is ASCII, so no Unicode normalisation question arises when names are signed,
//! compared or turned into file names.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::{MAX_NAME, MAX_TARGET_PATH};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {max} characters")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} contains {found:?}; allowed are {allowed}")]
    BadChar { what: &'static str, found: char, allowed: &'static str },
    #[error("{what} {value:?}: {reason}")]
    Invalid { what: &'static str, value: String, reason: &'static str },
}

fn check_chars(what: &'static str, s: &str, ok: fn(u8) -> bool, allowed: &'static str) -> Result<(), NameError> {
    match s.chars().find(|c| !c.is_ascii() || !ok(*c as u8)) {
        Some(found) => Err(NameError::BadChar { what, found, allowed }),
        None => Ok(()),
    }
}

fn check_len(what: &'static str, s: &str, max: usize) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { what });
    }
    if s.len() > max {
        return Err(NameError::TooLong { what, max });
    }
    Ok(())
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn is_simple_name_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

fn parse_simple_name(what: &'static str, s: &str) -> Result<String, NameError> {
    check_len(what, s, MAX_NAME)?;
    check_chars(what, s, is_simple_name_char, "a-z, 0-9 and '-'")?;
    if s.starts_with('-') {
        return Err(NameError::Invalid { what, value: s.into(), reason: "must not start with '-'" });
    }
    Ok(s.to_owned())
}

/// A device group name such as `production`: `a-z`, `0-9`, `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupName(String);
string_newtype!(GroupName);

impl GroupName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        parse_simple_name("group name", s).map(Self)
    }

    /// Name of the TUF role that holds this group's approvals.
    pub fn approval_role(&self) -> RoleName {
        RoleName(format!("approvals.{}", self.0))
    }

    /// Path pattern of that role: `approvals/<group>/<publisher>/<file>`.
    pub fn approval_pattern(&self) -> String {
        format!("approvals/{}/*/*", self.0)
    }
}

/// A publisher (product line) name such as `acme`: `a-z`, `0-9`, `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublisherName(String);
string_newtype!(PublisherName);

impl PublisherName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        parse_simple_name("publisher name", s).map(Self)
    }

    /// Name of the publisher's TUF role, which delegates to its hashed bins.
    pub fn role(&self) -> RoleName {
        RoleName(format!("publisher.{}", self.0))
    }

    /// Path pattern the top-level targets role delegates to the publisher.
    pub fn pattern(&self) -> String {
        format!("{}/*", self.0)
    }

    /// Name of the hashed bin holding targets whose path hash starts with `prefix`.
    pub fn bin_role(&self, prefix: &str) -> RoleName {
        RoleName(format!("publisher.{}.{}", self.0, prefix))
    }
}

/// A TUF role name: a top-level role or `publisher.<name>[.<bin>]` / `approvals.<group>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoleName(String);
string_newtype!(RoleName);

/// What a role name says about the role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleKind {
    Root,
    Targets,
    Snapshot,
    Timestamp,
    Publisher(PublisherName),
    PublisherBin(PublisherName, String),
    Approval(GroupName),
}

impl RoleName {
    pub const ROOT: &'static str = "root";
    pub const TARGETS: &'static str = "targets";
    pub const SNAPSHOT: &'static str = "snapshot";
    pub const TIMESTAMP: &'static str = "timestamp";

    pub fn parse(s: &str) -> Result<Self, NameError> {
        Self::kind_of(s)?;
        Ok(Self(s.to_owned()))
    }

    pub fn root() -> Self {
        Self(Self::ROOT.into())
    }
    pub fn targets() -> Self {
        Self(Self::TARGETS.into())
    }
    pub fn snapshot() -> Self {
        Self(Self::SNAPSHOT.into())
    }
    pub fn timestamp() -> Self {
        Self(Self::TIMESTAMP.into())
    }

    pub fn kind(&self) -> RoleKind {
        // Parsed on construction, so this cannot fail; fall back to the least powerful reading.
        Self::kind_of(&self.0).unwrap_or(RoleKind::Timestamp)
    }

    fn kind_of(s: &str) -> Result<RoleKind, NameError> {
        const WHAT: &str = "role name";
        check_len(WHAT, s, 2 * MAX_NAME + 16)?;
        let invalid = |reason| NameError::Invalid { what: WHAT, value: s.into(), reason };
        let mut parts = s.split('.');
        let kind = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("root"), None, ..) => RoleKind::Root,
            (Some("targets"), None, ..) => RoleKind::Targets,
            (Some("snapshot"), None, ..) => RoleKind::Snapshot,
            (Some("timestamp"), None, ..) => RoleKind::Timestamp,
            (Some("publisher"), Some(p), None, _) => RoleKind::Publisher(PublisherName::parse(p)?),
            (Some("publisher"), Some(p), Some(bin), None) => {
                if bin.is_empty()
                    || bin.len() > 8
                    || !bin.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(invalid("a bin suffix is 1 to 8 lower-case hex digits"));
                }
                RoleKind::PublisherBin(PublisherName::parse(p)?, bin.to_owned())
            }
            (Some("approvals"), Some(g), None, _) => RoleKind::Approval(GroupName::parse(g)?),
            _ => {
                return Err(invalid(
                    "expected root, targets, snapshot, timestamp, publisher.<name>[.<bin>] or approvals.<group>",
                ));
            }
        };
        Ok(kind)
    }

    /// True for roles the server signs itself with its online keys.
    pub fn is_top_level_online(&self) -> bool {
        matches!(self.kind(), RoleKind::Snapshot | RoleKind::Timestamp)
    }
}

fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'~')
}

/// A target path: ASCII segments of `A-Z a-z 0-9 . _ - + ~` joined by `/`; no empty, `.` or
/// `..` segment and no segment starting with `.`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetPath(String);
string_newtype!(TargetPath);

impl TargetPath {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        const WHAT: &str = "target path";
        check_len(WHAT, s, MAX_TARGET_PATH)?;
        check_chars(WHAT, s, |b| b == b'/' || is_path_char(b), "A-Z, a-z, 0-9, '.', '_', '-', '+', '~' and '/'")?;
        for segment in s.split('/') {
            if segment.is_empty() {
                return Err(NameError::Invalid { what: WHAT, value: s.into(), reason: "has an empty segment" });
            }
            if segment.starts_with('.') {
                return Err(NameError::Invalid {
                    what: WHAT,
                    value: s.into(),
                    reason: "a segment must not start with '.' (no '.', '..' or hidden names)",
                });
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// `<publisher>/<file>` for a published file.
    pub fn published(publisher: &PublisherName, file_name: &str) -> Result<Self, NameError> {
        if file_name.contains('/') {
            return Err(NameError::Invalid {
                what: "file name",
                value: file_name.into(),
                reason: "must not contain '/'",
            });
        }
        Self::parse(&format!("{publisher}/{file_name}"))
    }

    /// `approvals/<group>/<publisher path>`: the path of an approval of this published file.
    pub fn approval(&self, group: &GroupName) -> Result<Self, NameError> {
        Self::parse(&format!("approvals/{group}/{}", self.0))
    }

    /// The publisher this published path belongs to, if it has the `<publisher>/<file>` shape.
    pub fn publisher(&self) -> Option<PublisherName> {
        let (publisher, file) = self.0.split_once('/')?;
        if file.contains('/') {
            return None;
        }
        PublisherName::parse(publisher).ok()
    }

    /// For `approvals/<group>/<publisher>/<file>`: the group and the published path.
    pub fn split_approval(&self) -> Option<(GroupName, TargetPath)> {
        let rest = self.0.strip_prefix("approvals/")?;
        let (group, published) = rest.split_once('/')?;
        let published = TargetPath::parse(published).ok()?;
        published.publisher()?;
        Some((GroupName::parse(group).ok()?, published))
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// Consistent-snapshot name: `<dir>/<sha256>.<file name>`.
    pub fn hash_prefixed(&self, sha256: &Sha256Hex) -> String {
        match self.0.rsplit_once('/') {
            Some((dir, file)) => format!("{dir}/{sha256}.{file}"),
            None => format!("{sha256}.{}", self.0),
        }
    }
}

/// A SHA-256 digest as 64 lower-case hex characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Hex(String);
string_newtype!(Sha256Hex);

impl Sha256Hex {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        const WHAT: &str = "sha256";
        if s.len() != 64 {
            return Err(NameError::Invalid {
                what: WHAT,
                value: s.chars().take(80).collect(),
                reason: "must be 64 hex characters",
            });
        }
        check_chars(WHAT, s, |b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b), "0-9 and a-f")?;
        Ok(Self(s.to_owned()))
    }

    pub fn from_digest(digest: &[u8; 32]) -> Self {
        Self(hex_lower(digest))
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_paths_refuse_traversal_and_non_ascii() {
        assert!(TargetPath::parse("acme/agent-1.2.3_amd64.deb").is_ok());
        for bad in ["", "/abs", "a//b", "a/../b", "..", "a/.hidden", "caf\u{e9}/x", "a\\b", "a/b/", "a b"] {
            assert!(TargetPath::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn role_names_map_to_kinds() {
        assert_eq!(
            RoleName::parse("approvals.production").map(|r| r.kind()),
            Ok(RoleKind::Approval(GroupName::parse("production").unwrap()))
        );
        assert!(matches!(RoleName::parse("publisher.acme.3f").map(|r| r.kind()), Ok(RoleKind::PublisherBin(_, _))));
        for bad in ["", "Root", "publisher", "publisher.acme.xyz", "approvals.a.b", "other", "../root"] {
            assert!(RoleName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn approval_paths_round_trip() {
        let published = TargetPath::parse("acme/app.bin").unwrap();
        let group = GroupName::parse("pilot").unwrap();
        let approval = published.approval(&group).unwrap();
        assert_eq!(approval.as_str(), "approvals/pilot/acme/app.bin");
        assert_eq!(approval.split_approval(), Some((group, published)));
    }
}
