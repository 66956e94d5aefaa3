//! Device API bodies (device listener, `/device/v1/...`). Fixed schemas, unknown fields
//! refused, every list and string bounded by [`crate::limits`] checks in `validate`.

use serde::{Deserialize, Serialize};

use crate::GroupName;

/// Largest device API body.
pub const MAX_DEVICE_BODY: usize = 64 * 1024;
/// Most reports in one batch.
pub const MAX_REPORTS: usize = 256;
/// Most installed updates listed in an inventory.
pub const MAX_INSTALLED: usize = 1024;
/// Longest free-text field sent by a device.
pub const MAX_DEVICE_TEXT: usize = 256;

/// What the device says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub hostname: String,
    pub os: String,
    pub os_version: String,
    pub architecture: String,
    pub agent_version: String,
    /// Approval paths the agent has installed.
    #[serde(default)]
    pub installed: Vec<String>,
}

impl Inventory {
    pub fn validate(&self) -> Result<(), String> {
        for (field, value) in [
            ("hostname", &self.hostname),
            ("os", &self.os),
            ("os_version", &self.os_version),
            ("architecture", &self.architecture),
            ("agent_version", &self.agent_version),
        ] {
            if value.len() > MAX_DEVICE_TEXT || value.chars().any(char::is_control) {
                return Err(format!("inventory.{field}: at most {MAX_DEVICE_TEXT} bytes, no control characters"));
            }
        }
        if self.installed.len() > MAX_INSTALLED || self.installed.iter().any(|i| i.len() > MAX_DEVICE_TEXT) {
            return Err(format!("inventory.installed: at most {MAX_INSTALLED} entries"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// An enrollment token; without one the device waits as pending for an administrator.
    #[serde(default)]
    pub token: Option<String>,
    /// The device's ed25519 public key, 64 hex characters.
    pub public_key: String,
    /// The groups the device's own configuration names (used when no token decides them).
    #[serde(default)]
    pub groups: Vec<GroupName>,
    pub inventory: Inventory,
    /// Hex ed25519 signature over [`enrollment_message`] by the device key: proof that the
    /// caller holds the key it enrolls.
    pub signature: String,
}

/// The bytes a device signs to enroll its key for these groups.
pub fn enrollment_message(public_key: &str, groups: &[GroupName]) -> Vec<u8> {
    let groups: Vec<&str> = groups.iter().map(GroupName::as_str).collect();
    format!("ringfence device enrollment v1\n{public_key}\n{}\n", groups.join(",")).into_bytes()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnrollState {
    Accepted,
    Pending,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    pub device_id: String,
    pub state: EnrollState,
    pub groups: Vec<GroupName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRequest {
    pub device_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeResponse {
    pub nonce: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub device_id: String,
    pub nonce: String,
    /// Hex ed25519 signature over [`session_message`].
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionResponse {
    pub token: String,
    pub expires_at: i64,
}

/// The bytes a device signs to open a session: bound to this protocol, the device and the
/// one-time nonce, so a signature is good for one session of one device only.
pub fn session_message(device_id: &str, nonce: &str) -> Vec<u8> {
    format!("ringfence device session v1\n{device_id}\n{nonce}\n").into_bytes()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckinRequest {
    pub inventory: Inventory,
    /// The timestamp version the device trusts (0 if none).
    pub timestamp_version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckinResponse {
    /// Whether the repository has a newer timestamp than the device holds.
    pub changed: bool,
    /// The timestamp version the server serves now.
    pub timestamp_version: u64,
    /// Seconds until the next check-in, before jitter.
    pub poll_seconds: u64,
    /// The version of the signed rollout holds the server serves now (0: none). Only a hint
    /// to look again (a device that failed an update may have been asked to retry it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rollouts_version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportState {
    Downloading,
    Downloaded,
    Installing,
    Installed,
    Failed,
    RolledBack,
    RebootRequired,
    NotApplicable,
    Refused,
    /// Removed, as an uninstall approval asked.
    Uninstalled,
    /// Approved, but waiting for a prerequisite update to be installed first.
    Waiting,
}

impl ReportState {
    pub const ALL: [ReportState; 11] = [
        ReportState::Downloading,
        ReportState::Downloaded,
        ReportState::Installing,
        ReportState::Installed,
        ReportState::Failed,
        ReportState::RolledBack,
        ReportState::RebootRequired,
        ReportState::NotApplicable,
        ReportState::Refused,
        ReportState::Uninstalled,
        ReportState::Waiting,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReportState::Downloading => "downloading",
            ReportState::Downloaded => "downloaded",
            ReportState::Installing => "installing",
            ReportState::Installed => "installed",
            ReportState::Failed => "failed",
            ReportState::RolledBack => "rolled_back",
            ReportState::RebootRequired => "reboot_required",
            ReportState::NotApplicable => "not_applicable",
            ReportState::Refused => "refused",
            ReportState::Uninstalled => "uninstalled",
            ReportState::Waiting => "waiting",
        }
    }
}

/// One state transition of one update on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    /// Chosen by the device, unique per device: a repeated batch is stored once.
    pub id: String,
    /// The approval path (or, for refusals, the path or role concerned).
    pub target: String,
    pub state: ReportState,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Unix seconds on the device.
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportBatch {
    pub reports: Vec<StatusReport>,
    /// Hex ed25519 signature by the device key over [`report_batch_message`]: the server keeps
    /// it with the reports, so what a device claimed can be checked against its key later.
    pub signature: String,
}

/// The first line of what a device signs for a report batch.
const REPORT_BATCH_HEADER: &str = "ringfence device reports v1";

/// What a device signs for a batch: a header line, its id, then the reports as JSON (their
/// serialization by this type, which both the agent and the server use).
pub fn report_batch_message(device_id: &str, reports: &[StatusReport]) -> Vec<u8> {
    let mut out = format!("{REPORT_BATCH_HEADER}\n{device_id}\n").into_bytes();
    // Serializing these plain structs cannot fail; an empty list stands in if it ever did.
    out.extend(serde_json::to_vec(reports).unwrap_or_else(|_| b"[]".to_vec()));
    out
}

/// The device id and reports a signed batch message holds (for checking evidence).
pub fn parse_report_batch_message(message: &[u8]) -> Option<(String, Vec<StatusReport>)> {
    let text = std::str::from_utf8(message).ok()?;
    let rest = text.strip_prefix(REPORT_BATCH_HEADER)?.strip_prefix('\n')?;
    let (device_id, json) = rest.split_once('\n')?;
    let reports = crate::api::parse_body_limited(json.as_bytes(), MAX_DEVICE_BODY).ok()?;
    Some((device_id.to_owned(), reports))
}

impl ReportBatch {
    pub fn validate(&self) -> Result<(), String> {
        if self.reports.len() > MAX_REPORTS {
            return Err(format!("reports: at most {MAX_REPORTS} per batch"));
        }
        if self.signature.len() != 128 || !self.signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("signature: 128 hex characters".into());
        }
        for r in &self.reports {
            let id_ok =
                !r.id.is_empty() && r.id.len() <= 64 && r.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !id_ok {
                return Err("reports[].id: 1 to 64 characters of A-Z, a-z, 0-9, '-'".into());
            }
            if r.target.len() > MAX_DEVICE_TEXT || r.reason.as_ref().is_some_and(|s| s.len() > 1024) {
                return Err("reports[]: target at most 256 bytes, reason at most 1024".into());
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsAck {
    pub accepted: u64,
    pub duplicates: u64,
    /// Reports on approval paths of groups this device does not follow: not kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ignored: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Admin: create an enrollment token scoped to groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentTokenRequest {
    pub groups: Vec<GroupName>,
    pub expires_in_secs: u64,
    pub max_uses: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentTokenCreated {
    pub id: String,
    pub token: String,
    pub expires_at: i64,
}

/// Admin: accept a device's key before it enrolls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreauthorizeRequest {
    pub public_key: String,
    pub groups: Vec<GroupName>,
}

/// Most device keys accepted by one [`PreauthorizeBatch`] (about 100 bytes each, well inside
/// the admin body limit).
pub const MAX_PREAUTHORIZE: usize = 5_000;

/// Admin: accept many device keys before they enroll (importing a fleet), all or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreauthorizeBatch {
    pub devices: Vec<PreauthorizeRequest>,
}

/// One device of a [`PreauthorizeBatch`] as stored: the id it enrolls and opens sessions with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreauthorizedDevice {
    pub id: String,
    pub public_key: String,
}

/// The answer to a [`PreauthorizeBatch`], in the order of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreauthorizedDevices {
    pub devices: Vec<PreauthorizedDevice>,
}

/// Admin: a device as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceInfo {
    pub id: String,
    pub state: String,
    pub groups: Vec<String>,
    pub hostname: String,
    pub public_key: String,
    pub inventory: Inventory,
    pub enrolled_at: i64,
    pub last_checkin: Option<i64>,
    pub timestamp_version: Option<u64>,
    /// The newest report per target.
    pub updates: Vec<StatusReport>,
}

/// What the server kept for a device's newest report on one approval path: the report, and
/// the batch message and signature it arrived in, to check against the device's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportEvidence {
    pub device_id: String,
    /// The device's public key (hex ed25519), as enrolled.
    pub public_key: String,
    pub report: StatusReport,
    /// The signed batch message, exactly as signed ([`report_batch_message`]).
    pub message: String,
    pub signature: String,
}

// A downstream replica and its upstream (`/replica/v1/` on the upstream's device listener,
// authenticated with a token whose only scope is `replicate`).

/// Largest body a replica sends its upstream.
pub const MAX_REPLICA_BODY: usize = 4 << 20;
/// Most report batches forwarded in one request.
pub const MAX_FORWARDED_BATCHES: usize = 32;
/// Most devices asked about in one request.
pub const MAX_DEVICE_QUESTIONS: usize = 1000;

/// A device's report batch exactly as the device signed it: the message of
/// [`report_batch_message`] (it names the device) and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardedBatch {
    pub message: String,
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardedReports {
    pub batches: Vec<ForwardedBatch>,
}

impl ForwardedReports {
    pub fn validate(&self) -> Result<(), String> {
        if self.batches.len() > MAX_FORWARDED_BATCHES {
            return Err(format!("batches: at most {MAX_FORWARDED_BATCHES}"));
        }
        for b in &self.batches {
            if b.message.len() > MAX_DEVICE_BODY {
                return Err(format!("batches[].message: at most {MAX_DEVICE_BODY} bytes"));
            }
            if b.signature.len() != 128 || !b.signature.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err("batches[].signature: 128 hex characters".into());
            }
        }
        Ok(())
    }
}

/// What became of each forwarded batch, in order: stored (its counts), or refused for good
/// (the device is unknown or not accepted upstream, or the batch is not its signature) —
/// a refused batch is not sent again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardedAck {
    pub results: Vec<ForwardedResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardedResult {
    #[serde(default)]
    pub ack: Option<ReportsAck>,
    #[serde(default)]
    pub refused: Option<String>,
}

/// The devices a replica asks its upstream about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuestion {
    pub ids: Vec<String>,
}

impl DeviceQuestion {
    pub fn validate(&self) -> Result<(), String> {
        if self.ids.len() > MAX_DEVICE_QUESTIONS
            || self.ids.iter().any(|i| i.is_empty() || i.len() > 64 || !i.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!("ids: at most {MAX_DEVICE_QUESTIONS} device ids"));
        }
        Ok(())
    }
}

/// A device as the upstream knows it (absent from the answer: the upstream does not know it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceIdentity {
    pub id: String,
    pub public_key: String,
    /// `accepted`, `pending`, `rejected` or `revoked`.
    pub state: String,
    pub groups: Vec<GroupName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceAnswers {
    pub devices: Vec<DeviceIdentity>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse_body_limited;

    #[test]
    fn what_a_replica_sends_is_bounded_and_strict() {
        let sig = "a".repeat(128);
        let batch =
            |message: &str, signature: &str| ForwardedBatch { message: message.into(), signature: signature.into() };
        assert!(ForwardedReports { batches: vec![batch("m", &sig)] }.validate().is_ok());
        let many = ForwardedReports { batches: vec![batch("m", &sig); MAX_FORWARDED_BATCHES + 1] };
        assert!(many.validate().unwrap_err().contains("at most"));
        let long = ForwardedReports { batches: vec![batch(&"x".repeat(MAX_DEVICE_BODY + 1), &sig)] };
        assert!(long.validate().unwrap_err().contains("message"));
        assert!(ForwardedReports { batches: vec![batch("m", "zz")] }.validate().unwrap_err().contains("signature"));
        assert!(DeviceQuestion { ids: vec!["ab12".into()] }.validate().is_ok());
        assert!(DeviceQuestion { ids: vec!["../x".into()] }.validate().is_err());
        assert!(DeviceQuestion { ids: vec![String::new()] }.validate().is_err());
        assert!(DeviceQuestion { ids: vec!["ab".into(); MAX_DEVICE_QUESTIONS + 1] }.validate().is_err());
        let unknown = br#"{"ids": [], "$type": "x"}"#;
        assert!(parse_body_limited::<DeviceQuestion>(unknown, MAX_REPLICA_BODY).is_err());
        assert!(parse_body_limited::<ForwardedReports>(&vec![b' '; MAX_REPLICA_BODY + 1], MAX_REPLICA_BODY).is_err());
    }
}
