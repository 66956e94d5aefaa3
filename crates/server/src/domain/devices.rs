//! The fleet: enrollment, sessions, check-ins, status reports, and the device list with each
//! device's update states.
//!
//! Every enrollment is signed by the device key over `proto::device::enrollment_message`, so
//! nobody enrolls or looks up a key they do not hold. A session is opened by signing
//! `proto::device::session_message` over a one-time nonce, consumed only after the signature
//! verified. What a caller may make the server hold is bounded here (pending enrollments per
//! source and in all, live challenges per device, report history and targets per device);
//! request rates and body reads are bounded by the listener before a call reaches this layer.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand_core::{OsRng, RngCore};
use ringfence_proto::GroupName;
use ringfence_proto::api::{ForgottenDevice, StaleDevice};
use ringfence_proto::device::{
    ChallengeResponse, CheckinRequest, CheckinResponse, DeviceInfo, EnrollRequest, EnrollResponse, EnrollState,
    EnrollmentTokenCreated, EnrollmentTokenRequest, Inventory, MAX_PREAUTHORIZE, PreauthorizeBatch,
    PreauthorizeRequest, PreauthorizedDevice, PreauthorizedDevices, ReportBatch, ReportEvidence, ReportState,
    ReportsAck, SessionRequest, SessionResponse, StatusReport, enrollment_message, report_batch_message,
    session_message,
};
use ringfence_store::{
    AuditRecord, CheckinRecord, Database, DevicePage, DeviceRecord, EnrollmentTokenRecord, PendingLimits,
    PendingRefusal, ReportLimits, ReportRecord, SignedBatch, StoreError,
};

pub use ringfence_store::DeviceState;

/// Groups one device may be placed in by an administrator (as an enrollment token may name).
const MAX_DEVICE_GROUPS: usize = 16;

use ringfence_tlog::entry::Entry;

use super::audit::Audit;
use super::checkins::CheckinBuffer;
use super::error::{Error, Result};
use crate::config::DevicesConfig;

/// Prefix of device session secrets.
pub const SESSION_PREFIX: &str = "rfds_";
/// Prefix of enrollment token secrets.
pub const ENROLLMENT_PREFIX: &str = "rfet_";

/// Longest an enrollment token may live.
const MAX_ENROLLMENT_TOKEN_SECS: u64 = 90 * 86_400;

/// Signed report batches kept per device: many times what a device's retained reports take
/// (about 200 bytes each), far below what batches padded with duplicates could make it hold.
const MAX_BATCH_BYTES: u64 = 8 << 20;

/// Seconds a caller over a storage bound is told to wait.
const RETRY_LATER_SECS: u64 = 60;

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// How long "no device is accepted" is believed without asking the database again.
const NONE_ACCEPTED_BELIEVED: std::time::Duration = std::time::Duration::from_secs(1);

/// An accepted device with a live session: what the device API acts for.
#[derive(Debug, Clone)]
pub struct SessionDevice {
    pub id: String,
    /// Its public key (hex), which signs its report batches.
    pub public_key: String,
    /// The groups it enrolled in (the server's record).
    pub groups: Vec<String>,
}

/// What an administrator does to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAction {
    Accept,
    Reject,
    Revoke,
}

impl DeviceAction {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "accept" => Some(DeviceAction::Accept),
            "reject" => Some(DeviceAction::Reject),
            "revoke" => Some(DeviceAction::Revoke),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            DeviceAction::Accept => "accept",
            DeviceAction::Reject => "reject",
            DeviceAction::Revoke => "revoke",
        }
    }

    /// The state the action leads to, and whether it may be taken from `from`: accept and
    /// reject decide a pending device; revoke ends any device not yet revoked.
    fn transition(self, from: DeviceState) -> Option<DeviceState> {
        match self {
            DeviceAction::Accept if from == DeviceState::Pending => Some(DeviceState::Accepted),
            DeviceAction::Reject if from == DeviceState::Pending => Some(DeviceState::Rejected),
            DeviceAction::Revoke if from != DeviceState::Revoked => Some(DeviceState::Revoked),
            _ => None,
        }
    }
}

fn parse_public_key(hex_key: &str) -> Result<ringfence_trust::PublicKey> {
    let bytes = hex::decode(hex_key).map_err(|_| Error::invalid("public_key: 64 hex characters"))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| Error::invalid("public_key: 32 bytes"))?;
    let tuf = ringfence_proto::tuf::Key {
        keytype: "ed25519".into(),
        scheme: "ed25519".into(),
        keyval: ringfence_proto::tuf::KeyVal { public: hex::encode(bytes), unrecognized: Default::default() },
        unrecognized: Default::default(),
    };
    ringfence_trust::PublicKey::from_tuf(&tuf).map_err(|e| Error::Invalid(format!("public_key: {e}")))
}

fn verify(key: &ringfence_trust::PublicKey, message: &[u8], signature_hex: &str) -> Result<()> {
    let signature = hex::decode(signature_hex).map_err(|_| Error::Unauthenticated)?;
    key.verify(message, &signature).map_err(|_| Error::Unauthenticated)
}

fn group_names(groups: &[String]) -> Vec<GroupName> {
    groups.iter().filter_map(|g| GroupName::parse(g).ok()).collect()
}

pub struct Devices {
    db: Arc<dyn Database>,
    audit: Audit,
    config: DevicesConfig,
    /// Check-ins waiting to be written (every second, in one transaction).
    checkins: CheckinBuffer,
    /// Once a device is accepted, the repository stays closed to callers without a session
    /// (kept, so a read does not ask the database each time; stricter while it lasts).
    accepted_seen: std::sync::atomic::AtomicBool,
    /// Verified sessions (with one writer only).
    sessions: super::sessions::SessionCache,
    /// When the database last said no device is accepted: believed for a second (a device this
    /// node accepts closes the repository at once; one another node accepts, within a second).
    none_accepted_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// A replica: report batches wait to be forwarded; devices are accepted upstream.
    replica: bool,
}

/// Devices one site compliance report looks at, at most.
pub const SITE_DEVICES: u64 = 100_000;

/// How the enrollment source of a device enrolled through a replica begins.
pub const REPLICA_SOURCE: &str = "replica ";

/// The enrollment source recorded for devices replica `name` enrolled.
pub fn replica_source(name: &str) -> String {
    format!("{REPLICA_SOURCE}{name}")
}

impl Devices {
    /// `one_writer`: this node alone changes devices (the embedded database), so verified
    /// sessions may be kept in memory.
    /// `replica`: this server is a replica, whose devices' report batches are forwarded to its
    /// upstream and whose devices are accepted there, not here.
    pub fn new(db: Arc<dyn Database>, audit: Audit, config: DevicesConfig, one_writer: bool, replica: bool) -> Self {
        Self {
            db,
            audit,
            config,
            replica,
            checkins: CheckinBuffer::default(),
            accepted_seen: Default::default(),
            none_accepted_at: Default::default(),
            sessions: super::sessions::SessionCache::new(one_writer),
        }
    }

    // ---- the device API ----

    /// Enroll a device that proved it holds its key. A key already known (pre-authorised, or
    /// enrolling again) gets its record's state, `Forbidden` if rejected or revoked; a token
    /// admits the device, accepted, to the groups it is scoped to; without one the device
    /// waits as pending, within the pending bounds for `source` and in all.
    pub async fn enroll(&self, request: &EnrollRequest, source: &str, now: i64) -> Result<EnrollResponse> {
        request.inventory.validate().map_err(Error::Invalid)?;
        let key = parse_public_key(&request.public_key)?;
        verify(&key, &enrollment_message(&request.public_key, &request.groups), &request.signature)?;
        let public_key = request.public_key.to_ascii_lowercase();
        let inventory = serde_json::to_string(&request.inventory).map_err(Error::internal)?;

        if let Some(existing) = self.db.device_by_key(&public_key).await? {
            let state = match existing.state {
                DeviceState::Accepted => EnrollState::Accepted,
                DeviceState::Pending => EnrollState::Pending,
                DeviceState::Rejected | DeviceState::Revoked => {
                    return Err(Error::Forbidden(format!("this device is {}", existing.state.as_str())));
                }
            };
            // Only a pre-authorised record that never enrolled takes the caller's description:
            // without proof of the key, nobody rewrites an enrolled device's record.
            if existing.hostname.is_empty() {
                self.db.complete_enrollment(&existing.id, &request.inventory.hostname, &inventory, now).await?;
            }
            return Ok(EnrollResponse { device_id: existing.id, state, groups: group_names(&existing.groups) });
        }

        let groups: Vec<String> = request.groups.iter().map(|g| g.to_string()).collect();
        let mut device = DeviceRecord {
            id: random_hex(16),
            public_key,
            state: DeviceState::Pending,
            groups: groups.clone(),
            hostname: request.inventory.hostname.clone(),
            inventory,
            enrolled_at: now,
            last_checkin: None,
            timestamp_version: None,
        };
        match &request.token {
            Some(token) => {
                if token.len() > 128 || !token.starts_with(ENROLLMENT_PREFIX) {
                    return Err(Error::Unauthenticated);
                }
                let hash = ringfence_trust::sha256_hex(token.as_bytes());
                // The device names its groups; a token admits it only to groups it is scoped to.
                if groups.is_empty() {
                    return Err(Error::invalid("groups: name the groups the device follows"));
                }
                // Checked before the token is used, so a refused request does not spend a use.
                let scoped = self.db.enrollment_token(&hash).await?.ok_or(Error::Unauthenticated)?;
                if let Some(outside) = groups.iter().find(|g| !scoped.groups.contains(g)) {
                    return Err(Error::Invalid(format!("groups: the token does not admit group {outside}")));
                }
                device.state = DeviceState::Accepted;
                // The use is spent in the same transaction as the insert: a failed insert
                // spends nothing.
                // A device enrolled through a replica is that replica's: only it may forward the
                // device's reports and ask about it.
                let via = source.starts_with(REPLICA_SOURCE).then_some(source);
                if !self.db.enroll_with_token(&hash, now, &device, via).await? {
                    return Err(Error::Unauthenticated);
                }
            }
            None => {
                // A pending record keeps what an administrator needs to decide, not the whole
                // inventory (which the first check-in after acceptance brings).
                let summary = Inventory { installed: Vec::new(), ..request.inventory.clone() };
                device.inventory = serde_json::to_string(&summary).map_err(Error::internal)?;
                let limits = PendingLimits {
                    max_pending: self.config.max_pending,
                    max_per_source: self.config.max_pending_per_source,
                };
                let what = match self.db.insert_pending_device(&device, source, limits).await? {
                    Ok(()) => None,
                    Err(PendingRefusal::TooManyFromSource) => Some("too many pending enrollments from this address"),
                    Err(PendingRefusal::TooManyPending) => Some("too many pending enrollments"),
                };
                if let Some(what) = what {
                    return Err(Error::Bounded { what, retry_after_secs: RETRY_LATER_SECS });
                }
            }
        }
        if device.state == DeviceState::Accepted {
            let entry = Entry::DeviceAccepted { id: device.id.clone(), public_key: device.public_key.clone() };
            super::log::enqueue(&*self.db, &[entry]).await?;
            self.accepted_one();
        }
        let detail = format!("{} ({}) groups {:?}", device.hostname, device.state.as_str(), groups);
        self.audit.record(&format!("device {}", device.id), "enroll", &detail, now).await?;
        let state = if device.state == DeviceState::Accepted { EnrollState::Accepted } else { EnrollState::Pending };
        Ok(EnrollResponse { device_id: device.id, state, groups: group_names(&groups) })
    }

    /// A one-time nonce for an accepted device. Unknown and not-accepted devices get the same
    /// answer: no oracle for device ids.
    pub async fn challenge(&self, device_id: &str, now: i64) -> Result<ChallengeResponse> {
        let device = self.db.device(device_id).await?.filter(|d| d.state == DeviceState::Accepted);
        let device = device.ok_or(Error::Unauthenticated)?;
        let nonce = random_hex(32);
        let expires_at = now + self.config.challenge_secs;
        self.db.insert_challenge(&nonce, &device.id, expires_at, self.config.max_challenges_per_device).await?;
        Ok(ChallengeResponse { nonce, expires_at })
    }

    /// A session for a device that signed one of its live nonces.
    pub async fn open_session(&self, request: &SessionRequest, now: i64) -> Result<SessionResponse> {
        let device = self
            .db
            .device(&request.device_id)
            .await?
            .filter(|d| d.state == DeviceState::Accepted)
            .ok_or(Error::Unauthenticated)?;
        let key = parse_public_key(&device.public_key)?;
        verify(&key, &session_message(&device.id, &request.nonce), &request.signature)?;
        // Consumed only after the signature verified, and only once: a replay finds it gone.
        if !self.db.take_challenge(&request.nonce, &device.id, now).await? {
            return Err(Error::Unauthenticated);
        }
        let token = format!("{SESSION_PREFIX}{}", random_hex(32));
        let expires_at = now + self.config.session_secs;
        self.db.insert_session(&ringfence_trust::sha256_hex(token.as_bytes()), &device.id, expires_at).await?;
        Ok(SessionResponse { token, expires_at })
    }

    /// Compliance of the devices enrolled through replica `name`: devices by state, and per
    /// target their newest reported states (at most [`SITE_DEVICES`] devices looked at).
    pub async fn site_compliance(&self, name: &str) -> Result<ringfence_proto::api::SiteCompliance> {
        let source = replica_source(name);
        let mut devices: BTreeMap<String, u64> = BTreeMap::new();
        let mut targets: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut after = None;
        let mut seen = 0u64;
        let truncated = loop {
            let page = ringfence_store::DevicePage { after, limit: 500, state: None, source: Some(source.clone()) };
            let batch = self.db.list_devices(&page).await?;
            let Some(last) = batch.last().map(|d| d.id.clone()) else { break false };
            for d in &batch {
                *devices.entry(d.state.as_str().to_owned()).or_default() += 1;
                for r in self.db.device_update_states(&d.id).await? {
                    *targets.entry(r.target).or_default().entry(r.state).or_default() += 1;
                }
            }
            seen += batch.len() as u64;
            if seen >= SITE_DEVICES {
                break true;
            }
            after = Some(last);
        };
        let targets =
            targets.into_iter().map(|(target, states)| ringfence_proto::api::SiteTarget { target, states }).collect();
        Ok(ringfence_proto::api::SiteCompliance { site: name.to_owned(), devices, targets, truncated })
    }

    /// The groups replica `name` may relay approvals for.
    pub async fn replica_groups(&self, name: &str) -> Result<Vec<GroupName>> {
        Ok(self.db.replica_groups(name).await?.iter().filter_map(|g| GroupName::parse(g).ok()).collect())
    }

    /// Set the groups replica `name` may relay approvals for (audited).
    pub async fn set_replica_groups(&self, name: &str, groups: &[GroupName], actor: &str, now: i64) -> Result<()> {
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(Error::Invalid("replica name: 1 to 128 characters, no control characters".into()));
        }
        if groups.len() > ringfence_proto::api::MAX_REPLICA_GROUPS {
            return Err(Error::Invalid(format!("groups: at most {}", ringfence_proto::api::MAX_REPLICA_GROUPS)));
        }
        let names: Vec<String> = groups.iter().map(ToString::to_string).collect();
        self.db.set_replica_groups(name, &names).await?;
        let detail = format!("replica {name} may approve for: {}", names.join(", "));
        self.audit.record(actor, "replica-groups", &detail, now).await
    }

    /// A device enrolled through replica `replica`, as this server knows it (None: unknown, or
    /// not that replica's).
    pub async fn identity(&self, id: &str, replica: &str) -> Result<Option<ringfence_proto::device::DeviceIdentity>> {
        if self.db.device_source(id).await?.as_deref() != Some(replica_source(replica).as_str()) {
            return Ok(None);
        }
        let Some(d) = self.db.device(id).await? else { return Ok(None) };
        let groups = d.groups.iter().filter_map(|g| GroupName::parse(g).ok()).collect();
        Ok(Some(ringfence_proto::device::DeviceIdentity {
            id: d.id,
            public_key: d.public_key,
            state: d.state.as_str().to_owned(),
            groups,
        }))
    }

    /// The accepted device `id` enrolled through replica `replica`, as a session would name it:
    /// for a report batch that replica forwards (the batch must then verify under this device's
    /// key, as any other).
    pub async fn replica_device(&self, id: &str, replica: &str) -> Result<SessionDevice> {
        if self.db.device_source(id).await?.as_deref() != Some(replica_source(replica).as_str()) {
            return Err(Error::NotFound);
        }
        match self.db.device(id).await? {
            Some(d) if d.state == ringfence_store::DeviceState::Accepted => {
                Ok(SessionDevice { id: d.id, public_key: d.public_key, groups: d.groups })
            }
            Some(_) => Err(Error::Forbidden(format!("device {id} is not accepted"))),
            None => Err(Error::NotFound),
        }
    }

    /// The accepted device whose live session `secret` is.
    ///
    /// With one writer (the embedded database) a verified session is kept in memory until it
    /// expires; leaving `accepted` (revoke, reject) or being forgotten drops every kept session
    /// at once, in the same call that changes the device.
    pub async fn session_device(&self, secret: &str, now: i64) -> Result<SessionDevice> {
        if secret.len() > 128 || !secret.starts_with(SESSION_PREFIX) {
            return Err(Error::Unauthenticated);
        }
        let hash = ringfence_trust::sha256_hex(secret.as_bytes());
        if let Some(kept) = self.sessions.get(&hash, now) {
            return Ok(kept);
        }
        let read_at = self.sessions.generation();
        let (device, until) = self.db.session_device_until(&hash, now).await?.ok_or(Error::Unauthenticated)?;
        let device = SessionDevice { id: device.id, public_key: device.public_key, groups: device.groups };
        self.sessions.put(hash, device.clone(), until, read_at);
        Ok(device)
    }

    /// Whether any device is accepted (the repository then needs a session to read, when
    /// `repository.access = "devices"`).
    ///
    /// Once true it stays true for this process: a fleet whose every device was revoked keeps
    /// needing sessions until a restart, which only refuses more.
    pub async fn any_accepted(&self) -> Result<bool> {
        use std::sync::atomic::Ordering;
        if self.accepted_seen.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let recent = |at: &Option<std::time::Instant>| at.is_some_and(|t| t.elapsed() < NONE_ACCEPTED_BELIEVED);
        if self.none_accepted_at.lock().is_ok_and(|at| recent(&at)) {
            return Ok(false);
        }
        let asked = std::time::Instant::now();
        let any = self.db.has_accepted_devices().await?;
        if any {
            self.accepted_seen.store(true, Ordering::Relaxed);
        } else if let Ok(mut at) = self.none_accepted_at.lock() {
            *at = Some(asked);
        }
        Ok(any)
    }

    /// Keep verified sessions in memory until a moment, or stop (on a shared database: only
    /// while this node hears the other nodes' changes).
    pub fn keep_sessions_in_memory(&self, keep: super::kept::Keep) {
        self.sessions.keep_until(keep);
    }

    /// Devices or sessions changed behind this server's back (a test playing a thief who writes
    /// the database, a restore): forget the sessions kept in memory.
    pub fn changed_elsewhere(&self) {
        self.sessions.drop_all();
    }

    /// A device accepted here: the repository needs a session from now on.
    fn accepted_one(&self) {
        self.accepted_seen.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Record a check-in (written behind, see `checkins`: a check-in never waits for the
    /// database's write lock) and say whether the repository changed since the device's view.
    /// `current_timestamp`: the newest timestamp version the repository serves;
    /// `rollouts_version`: the newest signed holds document's.
    pub async fn check_in(
        &self,
        device: &SessionDevice,
        request: &CheckinRequest,
        (current_timestamp, rollouts_version): (u64, u64),
        now: i64,
    ) -> Result<CheckinResponse> {
        if i64::try_from(request.timestamp_version).is_err() {
            return Err(Error::invalid("timestamp_version: out of range"));
        }
        request.inventory.validate().map_err(Error::Invalid)?;
        let inventory = serde_json::to_string(&request.inventory).map_err(Error::internal)?;
        self.checkins.record(CheckinRecord {
            device_id: device.id.clone(),
            at: now,
            timestamp_version: request.timestamp_version,
            inventory,
        });
        Ok(CheckinResponse {
            changed: current_timestamp > request.timestamp_version,
            timestamp_version: current_timestamp,
            poll_seconds: self.config.poll_seconds,
            rollouts_version,
        })
    }

    /// Store a batch of status reports signed by the device's key (kept with them); a report
    /// id already stored counts as a duplicate. A batch the key did not sign is refused whole.
    /// Reports on approval paths of groups outside `follows` (the device's groups and their
    /// ancestors) are not kept: a device only speaks for approvals it follows.
    pub async fn report(
        &self,
        device: &SessionDevice,
        batch: &ReportBatch,
        follows: &std::collections::BTreeSet<String>,
        now: i64,
    ) -> Result<ReportsAck> {
        batch.validate().map_err(Error::Invalid)?;
        let message = report_batch_message(&device.id, &batch.reports);
        let key = parse_public_key(&device.public_key)?;
        verify(&key, &message, &batch.signature)
            .map_err(|_| Error::Forbidden("the report batch is not signed by this device's key".into()))?;
        let signed = SignedBatch { message, signature: batch.signature.to_ascii_lowercase() };
        let followed = |target: &str| match target.strip_prefix("approvals/") {
            Some(rest) => rest.split('/').next().is_some_and(|group| follows.contains(group)),
            None => true,
        };
        let ignored = batch.reports.iter().filter(|r| !followed(&r.target)).count() as u64;
        let records: Vec<ReportRecord> = batch
            .reports
            .iter()
            .filter(|r| followed(&r.target))
            .map(|r| ReportRecord {
                id: r.id.clone(),
                target: r.target.clone(),
                state: r.state.as_str().to_owned(),
                reason: r.reason.clone(),
                exit_code: r.exit_code,
                at: r.at,
            })
            .collect();
        let limits = ReportLimits {
            // At least one whole batch, so the retry of a batch whose answer was lost finds
            // every report of it and stores nothing twice.
            history: self.config.report_history.max(ringfence_proto::device::MAX_REPORTS as u64),
            max_targets: self.config.max_targets_per_device,
            max_batch_bytes: MAX_BATCH_BYTES,
            forward: self.replica,
        };
        let done = self.db.insert_reports(&device.id, &records, &signed, now, limits).await?;
        Ok(ReportsAck { accepted: done.accepted, duplicates: done.duplicates, ignored })
    }

    /// What the server kept for a device's newest report on `target`: the report and the
    /// batch the device signed it in, with the device's key, for anyone to check.
    pub async fn evidence(&self, id: &str, target: &str) -> Result<ReportEvidence> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) || target.len() > 512 {
            return Err(Error::NotFound);
        }
        let device = self.db.device(id).await?.ok_or(Error::NotFound)?;
        let (r, batch) = self.db.report_evidence(id, target).await?.ok_or(Error::NotFound)?;
        let state = ReportState::parse(&r.state).ok_or_else(|| Error::internal(format!("stored state {}", r.state)))?;
        let report =
            StatusReport { id: r.id, target: r.target, state, reason: r.reason, exit_code: r.exit_code, at: r.at };
        let message = String::from_utf8(batch.message).map_err(Error::internal)?;
        Ok(ReportEvidence {
            device_id: device.id,
            public_key: device.public_key,
            report,
            message,
            signature: batch.signature,
        })
    }

    // ---- administration ----

    /// An enrollment token admitting devices to `groups`, for a time and a number of uses.
    pub async fn create_enrollment_token(
        &self,
        request: &EnrollmentTokenRequest,
        actor: &str,
        now: i64,
    ) -> Result<EnrollmentTokenCreated> {
        if request.groups.is_empty() || request.groups.len() > MAX_DEVICE_GROUPS {
            return Err(Error::invalid("groups: 1 to 16 groups"));
        }
        if request.expires_in_secs == 0 || request.expires_in_secs > MAX_ENROLLMENT_TOKEN_SECS {
            return Err(Error::Invalid(format!("expires_in_secs: 1 to {MAX_ENROLLMENT_TOKEN_SECS}")));
        }
        if request.max_uses == 0 || request.max_uses > 1_000_000 {
            return Err(Error::invalid("max_uses: 1 to 1000000"));
        }
        let token = format!("{ENROLLMENT_PREFIX}{}", random_hex(32));
        let record = EnrollmentTokenRecord {
            id: random_hex(8),
            secret_sha256: ringfence_trust::sha256_hex(token.as_bytes()),
            groups: request.groups.iter().map(|g| g.to_string()).collect(),
            expires_at: now + request.expires_in_secs as i64,
            max_uses: request.max_uses,
            uses: 0,
            created_at: now,
        };
        self.db.insert_enrollment_token(&record).await?;
        let entry = Entry::EnrollmentToken {
            id: record.id.clone(),
            groups: record.groups.clone(),
            expires: record.expires_at,
            uses: record.max_uses,
        };
        super::log::enqueue(&*self.db, &[entry]).await?;
        let detail = format!("{} for {:?}, {} uses", record.id, record.groups, record.max_uses);
        self.audit.record(actor, "enrollment-token", &detail, now).await?;
        Ok(EnrollmentTokenCreated { id: record.id, token, expires_at: record.expires_at })
    }

    /// One page of devices ordered by id, each with the newest report per target.
    pub async fn list(&self, after: &str, limit: u64, state: Option<DeviceState>) -> Result<Vec<DeviceInfo>> {
        let page = DevicePage { after: Some(after.to_owned()), limit, state, source: None };
        let mut out = Vec::new();
        for d in self.db.list_devices(&page).await? {
            out.push(self.info(d).await?);
        }
        Ok(out)
    }

    /// Devices whose id starts with `query` (when it is lower-case hex) or whose host name is
    /// `query`, in `state` if given, ordered by id after `after`, at most `limit`, each with its newest reports.
    pub async fn find(
        &self,
        query: &str,
        state: Option<DeviceState>,
        after: &str,
        limit: u64,
    ) -> Result<Vec<DeviceInfo>> {
        let id_prefix = if !query.is_empty() && query.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            query
        } else {
            // Matches no id: ids are hex.
            "-"
        };
        let mut out = Vec::new();
        for id in self.db.find_devices(id_prefix, query, state.map_or("", |s| s.as_str()), after, limit).await? {
            if let Some(d) = self.db.device(&id).await? {
                out.push(self.info(d).await?);
            }
        }
        Ok(out)
    }

    /// A device's reports as kept (at most the configured history), newest first.
    pub async fn history(&self, id: &str) -> Result<Vec<StatusReport>> {
        let mut out: Vec<StatusReport> = self
            .db
            .device_reports(id)
            .await?
            .into_iter()
            .filter_map(|r| {
                let state = ReportState::parse(&r.state)?;
                Some(StatusReport {
                    id: r.id,
                    target: r.target,
                    state,
                    reason: r.reason,
                    exit_code: r.exit_code,
                    at: r.at,
                })
            })
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.at));
        Ok(out)
    }

    /// One device with its newest reports, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<DeviceInfo>> {
        match self.db.device(id).await? {
            Some(d) => Ok(Some(self.info(d).await?)),
            None => Ok(None),
        }
    }

    /// Register a device key an administrator vouches for: accepted before it ever enrolls (a
    /// batch of one, see [`Devices::preauthorize_many`]).
    pub async fn preauthorize(&self, request: &PreauthorizeRequest, actor: &str, now: i64) -> Result<DeviceInfo> {
        let batch = PreauthorizeBatch { devices: vec![request.clone()] };
        let stored = self.preauthorize_many(&batch, actor, now).await?;
        let id = stored.devices.into_iter().next().map(|d| d.id).ok_or(Error::NotFound)?;
        let device = self.db.device(&id).await?.ok_or(Error::NotFound)?;
        self.info(device).await
    }

    /// Register many device keys an administrator vouches for, all or none: at most
    /// [`MAX_PREAUTHORIZE`], no key twice, none already known (`Conflict`, nothing stored).
    /// The log entries that record them are queued in the same transaction; one audit record
    /// names how many and the groups.
    pub async fn preauthorize_many(
        &self,
        batch: &PreauthorizeBatch,
        actor: &str,
        now: i64,
    ) -> Result<PreauthorizedDevices> {
        if batch.devices.is_empty() || batch.devices.len() > MAX_PREAUTHORIZE {
            return Err(Error::invalid(format!("devices: 1 to {MAX_PREAUTHORIZE} per request")));
        }
        if let Some(n) = batch.devices.iter().position(|d| d.groups.len() > MAX_DEVICE_GROUPS) {
            return Err(Error::invalid(format!("devices[{n}].groups: at most {MAX_DEVICE_GROUPS}")));
        }
        let mut seen = std::collections::HashSet::new();
        let mut devices = Vec::with_capacity(batch.devices.len());
        let mut entries = Vec::with_capacity(batch.devices.len());
        let mut groups: BTreeMap<String, u64> = BTreeMap::new();
        for (n, request) in batch.devices.iter().enumerate() {
            parse_public_key(&request.public_key).map_err(|e| Error::invalid(format!("devices[{n}]: {e}")))?;
            let public_key = request.public_key.to_ascii_lowercase();
            if !seen.insert(public_key.clone()) {
                return Err(Error::invalid(format!("devices[{n}].public_key: listed twice")));
            }
            for g in &request.groups {
                *groups.entry(g.to_string()).or_default() += 1;
            }
            let device = DeviceRecord {
                id: random_hex(16),
                public_key,
                state: DeviceState::Accepted,
                groups: request.groups.iter().map(|g| g.to_string()).collect(),
                hostname: String::new(),
                inventory: "{}".into(),
                enrolled_at: now,
                last_checkin: None,
                timestamp_version: None,
            };
            let entry = Entry::DeviceAccepted { id: device.id.clone(), public_key: device.public_key.clone() };
            entries.push(entry.to_bytes().map_err(Error::internal)?);
            devices.push(device);
        }
        let first = devices.first().map(|d| d.id.as_str()).unwrap_or_default();
        let detail = format!("{} devices (first {first}), groups {groups:?}", devices.len());
        let audit = AuditRecord { at: now, actor: actor.into(), action: "preauthorize".into(), detail };
        match self.db.insert_devices(&devices, &entries, &audit).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                // Say which key (the refused batch changed nothing; this only reads).
                for (n, d) in devices.iter().enumerate() {
                    if self.db.device_by_key(&d.public_key).await?.is_some() {
                        return Err(Error::Conflict(format!("devices[{n}].public_key: a device with this key exists")));
                    }
                }
                return Err(Error::Conflict("a device with one of these keys or ids exists".into()));
            }
            Err(e) => return Err(e.into()),
        }
        self.accepted_one();
        let devices = devices.into_iter().map(|d| PreauthorizedDevice { id: d.id, public_key: d.public_key }).collect();
        Ok(PreauthorizedDevices { devices })
    }

    /// Accept, reject or revoke a device; `Conflict` when its state does not allow it.
    /// Leaving `accepted` ends the device's sessions at once.
    pub async fn change_state(&self, id: &str, action: DeviceAction, actor: &str, now: i64) -> Result<DeviceInfo> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::NotFound);
        }
        let device = self.db.device(id).await?.ok_or(Error::NotFound)?;
        if self.replica && action == DeviceAction::Accept {
            return Err(Error::Conflict(
                "this server is a replica: its devices are accepted at its upstream (it follows within a sync)".into(),
            ));
        }
        let Some(next) = action.transition(device.state) else {
            return Err(Error::Conflict(format!("device {id} is {}", device.state.as_str())));
        };
        {
            // Revocation (or rejection) takes effect at once: no kept session outlives it.
            let _changing = self.sessions.changing();
            self.db.set_device_state(id, next).await?;
        }
        let entry = match next {
            DeviceState::Accepted => {
                Some(Entry::DeviceAccepted { id: id.to_owned(), public_key: device.public_key.clone() })
            }
            DeviceState::Revoked => Some(Entry::DeviceRevoked { id: id.to_owned() }),
            _ => None,
        };
        if next == DeviceState::Accepted {
            self.accepted_one();
        }
        if let Some(entry) = entry {
            super::log::enqueue(&*self.db, &[entry]).await?;
        }
        self.audit.record(actor, action.as_str(), &format!("device {id}"), now).await?;
        let device = self.db.device(id).await?.ok_or(Error::NotFound)?;
        self.info(device).await
    }

    async fn info(&self, d: DeviceRecord) -> Result<DeviceInfo> {
        let mut newest: BTreeMap<String, StatusReport> = BTreeMap::new();
        for r in self.db.device_update_states(&d.id).await? {
            let Some(state) = ReportState::parse(&r.state) else { continue };
            let report = StatusReport {
                id: r.id,
                target: r.target.clone(),
                state,
                reason: r.reason,
                exit_code: r.exit_code,
                at: r.at,
            };
            newest.insert(r.target, report);
        }
        // A check-in not yet written is newer than the stored record.
        let mut d = d;
        if let Some(c) = self.checkins.get(&d.id) {
            d.last_checkin = Some(c.at);
            d.timestamp_version = Some(c.timestamp_version);
            d.inventory = c.inventory;
        }
        let inventory: Inventory = serde_json::from_str(&d.inventory).unwrap_or_default();
        Ok(DeviceInfo {
            id: d.id,
            state: d.state.as_str().into(),
            groups: d.groups,
            hostname: d.hostname,
            public_key: d.public_key,
            inventory,
            enrolled_at: d.enrolled_at,
            last_checkin: d.last_checkin,
            timestamp_version: d.timestamp_version,
            updates: newest.into_values().collect(),
        })
    }

    /// Accepted devices whose last check-in is more than `days` days before `now` (or that
    /// never checked in), by id. Check-ins still buffered are written first, so a device that
    /// just checked in is never listed.
    pub async fn stale(&self, days: u64, now: i64, after: &str, limit: u64) -> Result<Vec<StaleDevice>> {
        self.flush_checkins().await?;
        let before = now.saturating_sub(i64::try_from(days.saturating_mul(86_400)).unwrap_or(i64::MAX));
        Ok(self
            .db
            .devices_not_seen_since(before, after, limit)
            .await?
            .into_iter()
            .map(|d| StaleDevice { id: d.id, hostname: d.hostname, groups: d.groups, last_checkin: d.last_checkin })
            .collect())
    }

    /// Devices (any state but pending) last seen more than `days` days before `now`: a
    /// cleanup forgets them and everything kept about them (a device that comes back enrolls
    /// again).
    pub async fn forgettable(&self, days: u32, now: i64) -> Result<Vec<ForgottenDevice>> {
        self.flush_checkins().await?;
        let before = now - i64::from(days) * 86_400;
        Ok(self
            .db
            .devices_last_seen_before(before, 10_000)
            .await?
            .into_iter()
            .map(|d| ForgottenDevice { id: d.id, hostname: d.hostname, state: d.state, last_seen: d.last_seen })
            .collect())
    }

    pub async fn forget(&self, id: &str, actor: &str, now: i64) -> Result<()> {
        {
            let _changing = self.sessions.changing();
            self.db.delete_device(id).await?;
        }
        self.audit.record(actor, "forget", &format!("device {id}"), now).await
    }

    // ---- background work ----

    /// Write buffered check-ins; on failure they are kept for the next attempt.
    pub async fn flush_checkins(&self) -> Result<usize> {
        Ok(self.checkins.flush(self.db.as_ref()).await?)
    }

    /// Delete expired sessions and challenges, and pending devices older than
    /// `devices.pending_expiry_secs`; returns how many rows.
    pub async fn sweep(&self, now: i64) -> Result<u64> {
        let pending_before = now - self.config.pending_expiry_secs.max(60);
        Ok(self.db.sweep_expired(now, pending_before).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_move_only_from_the_states_that_allow_them() {
        use DeviceAction::*;
        use DeviceState::*;
        assert_eq!(Accept.transition(Pending), Some(Accepted));
        assert_eq!(Reject.transition(Pending), Some(Rejected));
        assert_eq!(Accept.transition(Rejected), None);
        assert_eq!(Accept.transition(Revoked), None);
        assert_eq!(Reject.transition(Accepted), None);
        for from in [Pending, Accepted, Rejected] {
            assert_eq!(Revoke.transition(from), Some(Revoked));
        }
        assert_eq!(Revoke.transition(Revoked), None);
        assert_eq!(DeviceAction::parse("accept"), Some(Accept));
        assert_eq!(DeviceAction::parse("delete"), None);
    }
}
