//! TUF 1.0 metadata (<https://theupdateframework.github.io/specification/latest/>).
//!
//! Field names follow the specification. Each object keeps the fields this version does not
//! know in `unrecognized`, so a document re-encoded to canonical JSON is the one that was
//! signed. Signatures are always checked over the `signed` object as it was received (see
//! `ringfence_trust::envelope`), never over a re-serialisation of these structs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The specification version Ringfence writes.
pub const SPEC_VERSION: &str = "1.0.31";

pub type Unrecognized = BTreeMap<String, Value>;

/// A signature as it appears in a metadata file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub keyid: String,
    /// Hex-encoded signature bytes.
    pub sig: String,
}

/// A public key as it appears in root or in delegations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub keytype: String,
    pub scheme: String,
    pub keyval: KeyVal,
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVal {
    /// Hex for ed25519, PEM SubjectPublicKeyInfo for ecdsa.
    pub public: String,
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

/// The key ids and threshold of a top-level role in root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: u64,
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    #[serde(rename = "_type")]
    pub type_: String,
    pub spec_version: String,
    pub consistent_snapshot: bool,
    pub version: u64,
    pub expires: String,
    pub keys: BTreeMap<String, Key>,
    pub roles: BTreeMap<String, RoleKeys>,
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

/// A target file: its length and hashes, plus Ringfence's `custom` fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFile {
    pub length: u64,
    pub hashes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Value>,
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegatedRole {
    pub name: String,
    pub keyids: Vec<String>,
    pub threshold: u64,
    pub terminating: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hash_prefixes: Option<Vec<String>>,
    /// Ringfence's group hierarchy: on an `approvals.<g>` delegation of top-level targets, the
    /// group `<g>` inherits approvals from (signed with top-level targets, so only its offline
    /// key holders can re-parent a group). An extension field: other TUF clients keep it in
    /// the signed bytes and ignore it.
    #[serde(rename = "x-ringfence-parent", default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegations {
    pub keys: BTreeMap<String, Key>,
    pub roles: Vec<DelegatedRole>,
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    #[serde(rename = "_type")]
    pub type_: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: String,
    pub targets: BTreeMap<String, TargetFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Delegations>,
    /// Ringfence's maintenance windows, on a group's approval role only (signed by its
    /// approvers): devices of the group install only inside one, unless a deadline passed.
    /// An extension field other TUF clients keep in the signed bytes and ignore.
    #[serde(rename = "x-ringfence-windows", default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<Vec<Window>>,
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

/// A recurring maintenance window: on `days` (`mon` … `sun`), from `start` to `end` (`HH:MM`,
/// local time in `tz`, an IANA time zone name; an `end` before `start` runs past midnight).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub days: Vec<String>,
    pub start: String,
    pub end: String,
    pub tz: String,
}

/// An entry of snapshot or timestamp `meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(rename = "_type")]
    pub type_: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: String,
    pub meta: BTreeMap<String, MetaFile>,
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    #[serde(rename = "_type")]
    pub type_: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: String,
    pub meta: BTreeMap<String, MetaFile>,
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

/// The `custom` object of a published file: what its publisher signs besides the bytes, so
/// that a server cannot change how a file is installed or where it applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedCustom {
    pub update_id: String,
    pub installer: crate::api::Installer,
    #[serde(default)]
    pub applicability: crate::api::Applicability,
    /// Updates (by id) that must be installed first: the agent waits, and says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prerequisites: Vec<String>,
}

/// The `custom` object Ringfence puts on an approval target entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalCustom {
    pub action: ApprovalAction,
    /// RFC 3339 UTC deadline after which the install is enforced, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Why, in the approvers' words (a change ticket), signed with the approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A staged rollout the approvers signed: which share of the group's devices may install
    /// from when. No schedule: every device at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Vec<RolloutStage>>,
    /// The update this file belongs to.
    pub update_id: String,
    /// SHA-256 of the canonical JSON of the publisher's whole target entry (length, hashes,
    /// and its `custom`: installer, arguments, health check, applicability). Approvers sign
    /// how the file is installed, not only its bytes.
    pub published_entry_sha256: String,
}

/// A stage of a signed rollout: from `not_before` (RFC 3339 UTC), `percent` of the group's
/// devices (by a stable hash of each device's key and the update) may install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStage {
    pub percent: u8,
    pub not_before: String,
}

/// What an approval tells the devices of its group to do with the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalAction {
    /// Install it (by the deadline, when there is one).
    Install,
    /// Remove it where it is installed.
    Uninstall,
    /// Not for this group: overrides what the group would inherit from its parent.
    Decline,
}

impl ApprovalAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalAction::Install => "install",
            ApprovalAction::Uninstall => "uninstall",
            ApprovalAction::Decline => "decline",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [ApprovalAction::Install, ApprovalAction::Uninstall, ApprovalAction::Decline]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// The server's live hold on rollouts, signed with the online timestamp key and served beside
/// the repository (`/repo/rollouts.json`): per approval path, the largest share (percent) of
/// the group's devices it lets install now. Agents take the smaller of this and what the
/// approvers signed, so the server can hold a rollout back, never widen it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutHolds {
    #[serde(rename = "_type")]
    pub type_: String,
    pub version: u64,
    pub expires: String,
    pub holds: BTreeMap<String, u8>,
    /// Per approval path, how many times an operator asked devices that failed it to try
    /// again: a device whose failure predates the count it saw starts its attempts afresh
    /// (the same approved bytes, only on a device the rollout already admitted).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retries: BTreeMap<String, u64>,
}
