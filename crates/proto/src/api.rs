//! Admin API bodies. Every request body is a fixed schema with `deny_unknown_fields`; the
//! server bounds its size and nesting before parsing.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::limits::{MAX_ADMIN_BODY, MAX_JSON_DEPTH, check_json_depth};

use crate::names::{GroupName, PublisherName, RoleName, Sha256Hex, TargetPath};
use crate::tuf::{ApprovalAction, Signature};

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Upload content and publish updates.
    Publish,
    /// Propose approvals and upload approver signatures.
    Approve,
    /// Read the catalog, pending roles and status.
    Read,
    /// Manage tokens and upload offline-signed top-level metadata.
    Admin,
    /// A downstream replica's token, good on the device listener's `/replica/v1/` routes only
    /// (and only when it has no other scope): read the repository, enroll devices through the
    /// replica, read the state of its devices, forward their signed report batches.
    Replicate,
}

impl Scope {
    pub const ALL: [Scope; 5] = [Scope::Publish, Scope::Approve, Scope::Read, Scope::Admin, Scope::Replicate];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Approve => "approve",
            Scope::Read => "read",
            Scope::Admin => "admin",
            Scope::Replicate => "replicate",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Days until the token is refused: 1 to [`MAX_TOKEN_DAYS`], [`DEFAULT_TOKEN_DAYS`] when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<u64>,
}

/// An admin token's lifetime unless its creator chose one.
pub const DEFAULT_TOKEN_DAYS: u64 = 90;
/// The longest lifetime an admin token may have.
pub const MAX_TOKEN_DAYS: u64 = 730;

/// Replace a token by a new one with the same name and scopes: the old one keeps working for
/// `grace_minutes` (default 60, at most a week; 0 ends it at once), so whatever uses it can
/// move to the new one without downtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRotation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_minutes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreated {
    pub id: String,
    /// The secret; shown once, stored only as a hash.
    pub token: String,
    pub scopes: Vec<Scope>,
    /// Refused from this time on (Unix seconds; 0 from a server older than token expiry).
    #[serde(default)]
    pub expires_at: i64,
}

/// A token as listed to administrators: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: i64,
    pub revoked: bool,
    /// Refused from this time on (Unix seconds; 0 from a server older than token expiry).
    #[serde(default)]
    pub expires_at: i64,
}

/// Answer to a content upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobUploaded {
    pub sha256: Sha256Hex,
    pub length: u64,
}

/// A file of an update, referring to uploaded content by hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateFile {
    /// File name; the target path becomes `<publisher>/<name>`.
    pub name: String,
    pub sha256: Sha256Hex,
    pub length: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    Security,
    Critical,
    Feature,
    Bugfix,
    Driver,
    Tool,
}

impl Classification {
    pub const ALL: [Classification; 6] = [
        Classification::Security,
        Classification::Critical,
        Classification::Feature,
        Classification::Bugfix,
        Classification::Driver,
        Classification::Tool,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Security => "security",
            Classification::Critical => "critical",
            Classification::Feature => "feature",
            Classification::Bugfix => "bugfix",
            Classification::Driver => "driver",
            Classification::Tool => "tool",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Important,
    Moderate,
    Low,
    Unspecified,
}

impl Severity {
    pub const ALL: [Severity; 5] =
        [Severity::Critical, Severity::Important, Severity::Moderate, Severity::Low, Severity::Unspecified];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Important => "important",
            Severity::Moderate => "moderate",
            Severity::Low => "low",
            Severity::Unspecified => "unspecified",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Where an update applies; evaluated by the agent. Empty lists mean "any".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applicability {
    #[serde(default)]
    pub os: Vec<String>,
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Lowest OS version (inclusive), if any.
    #[serde(default)]
    pub min_os_version: Option<String>,
    /// Highest OS version (inclusive), if any.
    #[serde(default)]
    pub max_os_version: Option<String>,
    /// Update ids that must not be installed for this one to apply.
    #[serde(default)]
    pub not_installed: Vec<String>,
    /// Products that must be installed (Windows: an uninstall entry whose key, such as an MSI
    /// product code, or display name is this, compared without regard to case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products_installed: Vec<String>,
    /// Products that must not be installed, matched the same way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products_absent: Vec<String>,
}

/// What an installer's exit code means, as its publisher says (`exe` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitMeaning {
    Installed,
    RebootRequired,
    NotApplicable,
    Failed,
}

/// One row of a publisher's exit-code table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitCodeRule {
    /// The process exit code; Windows codes such as `0x80240017` are written as unsigned
    /// decimal (2149842967).
    pub code: u32,
    pub means: ExitMeaning,
}

/// At most this many rows in an exit-code table.
pub const MAX_EXIT_CODES: usize = 32;

/// An `msi` installer argument: a Windows Installer property `NAME=VALUE` (such as
/// `ALLUSERS=1`), NAME of letters, digits, `_` and `.` not starting with a digit or `.` and not
/// `TRANSFORMS`, `PATCH`, `SOURCELIST` or `MSIPATCHREMOVE`, VALUE without quotes or control characters and not ending in a
/// backslash (the agent writes it as `NAME="VALUE"`). Nothing else reaches msiexec's command
/// line: no switch (`/x`, `/l`), no quote that could end the value, no unsigned file.
pub fn is_msi_property(arg: &str) -> bool {
    let Some((name, value)) = arg.split_once('=') else { return false };
    let mut name_chars = name.chars();
    name_chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name_chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !MSI_FILE_PROPERTIES.contains(&name.to_ascii_uppercase().as_str())
        && !value.chars().any(|c| c == '"' || c.is_control())
        && !value.ends_with('\\')
}

/// Properties that make msiexec read or remember another file or source (a transform, a patch,
/// a source list for later repairs) whose bytes nobody signed: refused as `msi` arguments.
const MSI_FILE_PROPERTIES: [&str; 4] = ["TRANSFORMS", "PATCH", "SOURCELIST", "MSIPATCHREMOVE"];

/// `{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}` in hex digits: the form of an MSI product code.
pub fn is_product_code(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) else { return false };
    let groups: Vec<&str> = inner.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Installer {
    /// Update module name, e.g. `file`, `script`, `deb`.
    pub module: String,
    #[serde(default)]
    pub arguments: Vec<String>,
    /// The device must reboot to finish the installation.
    #[serde(default)]
    pub reboot_required: bool,
    /// A command (argument vector) run after installing; the update is installed only if it
    /// exits 0, else it is rolled back where the module can and reported failed.
    #[serde(default)]
    pub health_check: Vec<String>,
    /// `exe`: what the installer's exit codes mean. Without a row for a code: 0 installed,
    /// anything else failed (a vendor's 3010 means "reboot required" only if this table says so).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exit_codes: Vec<ExitCodeRule>,
    /// `msi`: the package's product code, by which it is uninstalled (`msiexec /x`) and checked
    /// among the installed products after an install. Without it, uninstall goes by the package
    /// file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_code: Option<String>,
}

/// The catalog entry of an update, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateManifest {
    pub id: String,
    pub publisher: PublisherName,
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub product: String,
    pub classification: Classification,
    pub severity: Severity,
    #[serde(default)]
    pub kb: Vec<String>,
    #[serde(default)]
    pub cves: Vec<String>,
    /// `YYYY-MM-DD`.
    pub release_date: String,
    #[serde(default)]
    pub supersedes: Vec<String>,
    #[serde(default)]
    pub prerequisites: Vec<String>,
    #[serde(default)]
    pub applicability: Applicability,
    pub installer: Installer,
    pub files: Vec<UpdateFile>,
}

/// Answer to a publish: the target paths and the role versions waiting for signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishOutcome {
    pub update_id: String,
    pub targets: Vec<TargetPath>,
    /// Roles published at once (signed by online keys).
    pub published: Vec<RoleVersion>,
    /// Roles waiting for offline signatures.
    pub pending: Vec<RoleVersion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleVersion {
    pub role: RoleName,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    pub group: GroupName,
    /// Every file of the update with this id (or give `target`).
    #[serde(default)]
    pub update: Option<String>,
    /// One published path, `<publisher>/<file>` (or give `update`).
    #[serde(default)]
    pub target: Option<TargetPath>,
    pub action: ApprovalAction,
    #[serde(default)]
    pub deadline: Option<String>,
    /// Why (a change ticket): at most [`MAX_REASON`] printable characters, signed with the
    /// approval.
    #[serde(default)]
    pub reason: Option<String>,
    /// A staged rollout: which share of the group may install from when (signed with the
    /// approval; devices take their place from their own key).
    #[serde(default)]
    pub rollout: Option<Vec<crate::tuf::RolloutStage>>,
}

/// Longest approval reason.
pub const MAX_REASON: usize = 256;

/// The files an approval or a withdrawal is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalSubject {
    /// Every file of the update with this id.
    Update(String),
    /// One published path, `<publisher>/<file>`.
    Target(TargetPath),
}

/// Exactly one of `update` and `target`.
fn subject(update: &Option<String>, target: &Option<TargetPath>) -> Result<ApprovalSubject, &'static str> {
    match (update, target) {
        (Some(u), None) => Ok(ApprovalSubject::Update(u.clone())),
        (None, Some(t)) => Ok(ApprovalSubject::Target(t.clone())),
        _ => Err("give exactly one of update and target"),
    }
}

impl ApprovalRequest {
    pub fn subject(&self) -> Result<ApprovalSubject, &'static str> {
        subject(&self.update, &self.target)
    }
}

impl WithdrawalRequest {
    pub fn subject(&self) -> Result<ApprovalSubject, &'static str> {
        subject(&self.update, &self.target)
    }
}

/// Take a group's approval of an update (or of one file) back: its entries leave the group's
/// approval role in one new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawalRequest {
    pub group: GroupName,
    #[serde(default)]
    pub update: Option<String>,
    #[serde(default)]
    pub target: Option<TargetPath>,
}

/// A computer group as the offline-signed top-level targets defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupInfo {
    pub name: GroupName,
    /// The group it inherits approvals from.
    #[serde(default)]
    pub parent: Option<GroupName>,
    /// Key ids of its approvers, and how many must sign.
    pub approvers: Vec<String>,
    pub threshold: u64,
    /// Whether the server's online auto-approver key meets the threshold (it then approves
    /// by rules without waiting for people).
    pub auto_approve: bool,
    /// The nearest ancestor the server approves for online, if any: what it approves there,
    /// this group inherits unless it overrides it.
    #[serde(default)]
    pub inherits_auto_approval_from: Option<GroupName>,
    /// Its maintenance windows, as its published approval role has them.
    #[serde(default)]
    pub windows: Vec<crate::tuf::Window>,
}

/// Signatures over the pending version of a role, made offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureUpload {
    pub version: u64,
    pub signatures: Vec<Signature>,
}

/// Where a role stands after a proposal or a signature upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleState {
    pub role: RoleName,
    pub version: u64,
    pub published: bool,
    /// Distinct valid signatures from the role's keys so far.
    pub valid_signatures: u64,
    pub threshold: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingSummary {
    pub role: RoleName,
    pub version: u64,
    pub created_at: i64,
    /// Key ids whose valid signatures the pending version carries.
    #[serde(default)]
    pub signed_by: Vec<String>,
    /// Key ids that may sign it and have not yet.
    #[serde(default)]
    pub waiting_for: Vec<String>,
    /// How many valid signatures publish it.
    #[serde(default)]
    pub threshold: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleExpiry {
    pub role: RoleName,
    pub version: u64,
    pub expires: String,
    /// True when the server cannot renew this role itself.
    pub offline: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// `ok` or `warn`.
    pub status: String,
    pub warnings: Vec<String>,
    pub roles: Vec<RoleExpiry>,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: String,
}

/// Why a request body was refused; the message names the field where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    TooDeep(crate::limits::TooDeep),
    #[error("invalid body: field `{field}`: {message}")]
    Field { field: String, message: String },
    #[error("invalid body: {0}")]
    Invalid(String),
}

/// Parse an admin API body into `T`: at most [`MAX_ADMIN_BODY`] bytes, at most
/// [`MAX_JSON_DEPTH`] levels, nothing after the value, unknown fields refused by `T`'s schema.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    parse_body_limited(bytes, MAX_ADMIN_BODY)
}

/// [`parse_body`] with another size limit.
pub fn parse_body_limited<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, BodyError> {
    if bytes.len() > max {
        return Err(BodyError::TooLarge(max));
    }
    check_json_depth(bytes, MAX_JSON_DEPTH).map_err(BodyError::TooDeep)?;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let field = e.path().to_string();
        let message = e.into_inner().to_string();
        if field.is_empty() || field == "." { BodyError::Invalid(message) } else { BodyError::Field { field, message } }
    })?;
    deserializer.end().map_err(|e| BodyError::Invalid(e.to_string()))?;
    Ok(value)
}

/// One approved file's compliance in one group: how many of the group's devices (its own and
/// its descendants') report it in each state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplianceRow {
    /// The published path, `<publisher>/<file>`.
    pub target: TargetPath,
    #[serde(default)]
    pub update_id: Option<String>,
    /// What the group's published approval says (none when it was withdrawn and reports
    /// remain).
    #[serde(default)]
    pub action: Option<ApprovalAction>,
    #[serde(default)]
    pub deadline: Option<String>,
    pub installed: u64,
    pub needed: u64,
    pub failed: u64,
    pub not_applicable: u64,
    pub uninstalled: u64,
    /// Devices of the group that have not reported on it.
    pub no_status: u64,
}

/// A page of a group's compliance, by published path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplianceReport {
    pub group: GroupName,
    /// Accepted devices enrolled in the group or one of its descendants.
    pub devices: u64,
    pub rows: Vec<ComplianceRow>,
}

/// Where a CVE stands in one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CveGroup {
    pub group: GroupName,
    /// Whether the group's approvals install an update that fixes it.
    pub approved: bool,
    /// Devices of the group (and descendants) that reported a fixing update installed.
    pub installed: u64,
    pub devices: u64,
}

/// A device still exposed: its newest report on a fixing update is not `installed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposedDevice {
    pub device_id: String,
    pub hostname: String,
    /// The approval path it reported on.
    pub target: String,
    pub state: String,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CveReport {
    pub cve: String,
    /// The updates whose manifests say they fix it.
    pub updates: Vec<String>,
    pub groups: Vec<CveGroup>,
    /// A page of exposed devices, by device id.
    pub exposed: Vec<ExposedDevice>,
}

/// A device not seen for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaleDevice {
    pub id: String,
    pub hostname: String,
    pub groups: Vec<String>,
    #[serde(default)]
    pub last_checkin: Option<i64>,
}

/// A CVE id as `CVE-YYYY-NNNN…` (upper-case), at most 32 characters.
pub fn parse_cve(s: &str) -> Option<String> {
    let upper = s.trim().to_ascii_uppercase();
    let mut parts = upper.splitn(3, '-');
    let ok = parts.next() == Some("CVE")
        && parts.next().is_some_and(|y| y.len() == 4 && y.bytes().all(|b| b.is_ascii_digit()))
        && parts.next().is_some_and(|n| (4..=19).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(upper)
}

/// An automatic approval rule: updates that match are approved for `group` (signed at once when
/// the server's auto-approver key meets the group's threshold, otherwise prepared for its
/// approvers). Empty lists match anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRequest {
    pub group: GroupName,
    /// Only updates of these publishers.
    #[serde(default)]
    pub publishers: Vec<PublisherName>,
    #[serde(default)]
    pub products: Vec<String>,
    #[serde(default)]
    pub classifications: Vec<Classification>,
    #[serde(default)]
    pub severities: Vec<Severity>,
    /// Only once the update succeeded on another group for a while.
    #[serde(default)]
    pub after: Option<RuleAfter>,
    /// The approval's deadline, this many days after the rule approves.
    #[serde(default)]
    pub deadline_days: Option<u32>,
}

/// "N days after it succeeded on group X with at most F % failures".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleAfter {
    pub group: GroupName,
    pub days: u32,
    pub max_failure_percent: u8,
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleInfo {
    pub id: String,
    pub rule: RuleRequest,
    pub created_at: i64,
}

/// What a cleanup should do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupRequest {
    /// Report what would be removed, and remove nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Also forget devices (any state but pending) not seen for this many days.
    #[serde(default)]
    pub devices_not_seen_days: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemovedContent {
    pub sha256: String,
    pub length: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgottenDevice {
    pub id: String,
    pub hostname: String,
    pub state: String,
    /// Its last check-in, or its enrollment if it never checked in.
    pub last_seen: i64,
}

/// What a cleanup removed (or, dry, would remove).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupReport {
    pub dry_run: bool,
    pub content: Vec<RemovedContent>,
    pub content_bytes: u64,
    pub devices: Vec<ForgottenDevice>,
}

/// A group's maintenance windows, set by its approvers (a new version of its approval role).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowsRequest {
    /// Empty: no windows (install any time).
    pub windows: Vec<crate::tuf::Window>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// Start a rollout the server runs on top of an approval (it may hold it back, never widen it).
pub struct StartRollout {
    pub group: GroupName,
    pub update: String,
    /// Halt when more devices than this failed (or were stuck).
    #[serde(default)]
    pub max_failures: Option<u64>,
    /// Halt when failures pass this share of the devices that finished or are stuck.
    #[serde(default)]
    pub max_failure_percent: Option<u8>,
    /// A device on its way (downloading … installing) longer than this counts as failed.
    #[serde(default)]
    pub stuck_hours: Option<u32>,
    /// The server's own stages (growing shares ending at 100): each holds the rollout to its
    /// share until its devices succeeded and its soak time passed. None: one stage of 100.
    #[serde(default)]
    pub stages: Option<Vec<u8>>,
    /// Least time a stage runs before the next may start (default 24).
    #[serde(default)]
    pub soak_hours: Option<u32>,
    /// The share of a stage's devices that must have installed it to go on (default 95).
    #[serde(default)]
    pub success_percent: Option<u8>,
}

/// One stage of a server-run rollout: the devices whose place falls in it and how they fared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageCount {
    pub percent: u8,
    pub devices: u64,
    pub installed: u64,
    pub failed: u64,
}

/// A rollout as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStatus {
    pub group: GroupName,
    pub update: String,
    pub state: String,
    /// The share the approvers' schedule allows now.
    pub approved_share: u8,
    /// The share the server lets install now (never more than the approvers').
    pub share: u8,
    pub installed: u64,
    pub failed: u64,
    pub stuck: u64,
    pub needed: u64,
    pub reason: String,
    pub max_failures: u64,
    pub max_failure_percent: u8,
    pub stuck_hours: u64,
    /// The server's stages, the one it holds to (an index), and since when.
    pub stages: Vec<StageCount>,
    pub stage: usize,
    pub stage_since: String,
    pub soak_hours: u64,
    pub success_percent: u8,
    /// Times an operator asked the failed devices to try again.
    pub retries: u64,
}

/// One record of the audit trail with its sequence number (newer records have larger ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

/// The format name a bundle's `bundle.json` carries.
pub const BUNDLE_FORMAT: &str = "ringfence-bundle-v1";

/// `bundle.json` of an export bundle (`ringfence export --bundle`): what the directory holds.
/// Only an index: every file it describes is verified against signed metadata and the signed
/// log checkpoint on import, never trusted for what it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    pub format: String,
    pub created_at: i64,
    /// `log/entries` holds the log's entries from this index (the export's `--since`) up to
    /// `log_size`, the size of `log/checkpoint` (0 and 0: the upstream keeps no log).
    pub log_from: u64,
    pub log_size: u64,
    pub metadata_files: u64,
    pub content_files: u64,
    pub content_bytes: u64,
    /// The groups whose approved content the export was limited to (empty: all content).
    #[serde(default)]
    pub groups: Vec<crate::GroupName>,
    /// The products and classifications it was limited to (empty: any).
    #[serde(default)]
    pub products: Vec<String>,
    #[serde(default)]
    pub classifications: Vec<String>,
}

/// The groups a downstream replica (named as its `replicate` token is) may relay approvals and
/// their approvers' signatures for (`PUT /api/v1/replicas/{name}/groups`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaGroups {
    pub groups: Vec<GroupName>,
}

/// Most groups one replica may own.
pub const MAX_REPLICA_GROUPS: usize = 256;

/// Compliance of the devices enrolled through one downstream replica (a site), as the
/// upstream knows it from their forwarded reports (`GET /api/v1/reports/site/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteCompliance {
    pub site: String,
    /// Devices enrolled through it, by state (`accepted`, `pending`, …).
    pub devices: std::collections::BTreeMap<String, u64>,
    /// Per target reported on: devices by their newest state on it.
    pub targets: Vec<SiteTarget>,
    /// Whether the site has more devices than one report looks at (the first are counted).
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteTarget {
    pub target: String,
    pub states: std::collections::BTreeMap<String, u64>,
}
