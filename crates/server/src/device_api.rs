//! The device API on the device listener: enrollment, sessions, check-in, status reports.
//!
//! Enrollment and session opening are the only routes that read a body before the caller
//! is authenticated; those bodies are small fixed schemas ([`MAX_DEVICE_BODY`]) and a refusal
//! changes nothing. Every other route needs a live session of an accepted device.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rand_core::{OsRng, RngCore};
use ringfence_proto::GroupName;
use ringfence_proto::api::parse_body_limited;
use ringfence_proto::device::{
    ChallengeRequest, ChallengeResponse, CheckinRequest, CheckinResponse, EnrollRequest, EnrollResponse, EnrollState,
    MAX_DEVICE_BODY, ReportBatch, ReportsAck, SessionRequest, SessionResponse, enrollment_message, session_message,
};
use ringfence_store::{
    CheckinRecord, DeviceRecord, DeviceState, DeviceStore, PendingLimits, PendingRefusal, ReportLimits, ReportRecord,
    Store,
};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::admin::read_body;
use crate::error::{ApiError, ApiResult};

type Shared = State<Arc<AppState>>;

/// Prefix of device session secrets.
pub const SESSION_PREFIX: &str = "rfds_";
/// Prefix of enrollment token secrets.
pub const ENROLLMENT_PREFIX: &str = "rfet_";

/// Seconds a shed request is told to wait.
const RETRY_AFTER_SECS: u64 = 5;

pub fn routes() -> axum::Router<Arc<AppState>> {
    use axum::routing::post;
    axum::Router::new()
        .route("/device/v1/enroll", post(enroll))
        .route("/device/v1/challenge", post(challenge))
        .route("/device/v1/session", post(session))
        .route("/device/v1/checkin", post(checkin))
        .route("/device/v1/reports", post(reports))
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Seconds a caller over a storage bound is told to wait.
const RETRY_LATER_SECS: u64 = 60;

/// The address a request came from, put into every request by the listener.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::IpAddr);

/// A device-API slot. Taken only after the body has arrived, so a slow sender holds a
/// connection (bounded per source and by the read deadline) but never a slot.
fn permit(state: &AppState) -> ApiResult<tokio::sync::SemaphorePermit<'_>> {
    state.device_permits.try_acquire().map_err(|_| ApiError::Busy { retry_after_secs: RETRY_AFTER_SECS })
}

/// The key an address is bounded under: an IPv4 address, or the /64 of an IPv6 address (one
/// host holds a whole /64), IPv4-mapped addresses as IPv4.
pub fn source_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

fn source_of(peer: Option<Extension<PeerAddr>>) -> String {
    peer.map_or_else(|| "unknown".to_owned(), |Extension(PeerAddr(ip))| source_key(ip))
}

/// Read and parse a device-API body within `devices.body_read_secs`, holding one of the
/// bounded body-read permits meanwhile (`503` when none is left).
async fn device_body<T: DeserializeOwned>(
    state: &AppState,
    permits: &tokio::sync::Semaphore,
    body: Body,
) -> ApiResult<T> {
    let _reading = permits.try_acquire().map_err(|_| ApiError::Busy { retry_after_secs: RETRY_AFTER_SECS })?;
    let deadline = std::time::Duration::from_secs(state.config.devices.body_read_secs.max(1));
    let bytes =
        tokio::time::timeout(deadline, read_body(body, MAX_DEVICE_BODY)).await.map_err(|_| ApiError::Timeout)??;
    parse_body_limited(&bytes, MAX_DEVICE_BODY).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let secret = value.strip_prefix("Bearer ")?;
    (secret.len() <= 128).then_some(secret)
}

/// The accepted device whose live session the request carries.
pub async fn session_device(state: &AppState, headers: &HeaderMap, now: i64) -> ApiResult<DeviceRecord> {
    let secret = bearer(headers).filter(|s| s.starts_with(SESSION_PREFIX)).ok_or(ApiError::Unauthorized)?;
    let hash = ringfence_trust::sha256_hex(secret.as_bytes());
    state.repo.store.session_device(&hash, now).await?.ok_or(ApiError::Unauthorized)
}

fn parse_public_key(hex_key: &str) -> ApiResult<ringfence_trust::PublicKey> {
    let bytes = hex::decode(hex_key).map_err(|_| ApiError::BadRequest("public_key: 64 hex characters".into()))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| ApiError::BadRequest("public_key: 32 bytes".into()))?;
    let key = ed25519_dalek_key(bytes)?;
    Ok(key)
}

fn ed25519_dalek_key(bytes: [u8; 32]) -> ApiResult<ringfence_trust::PublicKey> {
    let tuf = ringfence_proto::tuf::Key {
        keytype: "ed25519".into(),
        scheme: "ed25519".into(),
        keyval: ringfence_proto::tuf::KeyVal { public: hex::encode(bytes), unrecognized: Default::default() },
        unrecognized: Default::default(),
    };
    ringfence_trust::PublicKey::from_tuf(&tuf).map_err(|e| ApiError::BadRequest(format!("public_key: {e}")))
}

async fn enroll(State(state): Shared, peer: Option<Extension<PeerAddr>>, body: Body) -> ApiResult<Response> {
    let source = source_of(peer);
    if let Err(retry_after_secs) = state.enroll_throttle.take(&source, std::time::Instant::now()) {
        return Err(ApiError::TooMany { what: "too many enrollment attempts from this address", retry_after_secs });
    }
    let request: EnrollRequest = device_body(&state, &state.anonymous_body_permits, body).await?;
    let _permit = permit(&state)?;
    request.inventory.validate().map_err(ApiError::BadRequest)?;
    let key = parse_public_key(&request.public_key)?;
    let signature = hex::decode(&request.signature).map_err(|_| ApiError::Unauthorized)?;
    key.verify(&enrollment_message(&request.public_key, &request.groups), &signature)
        .map_err(|_| ApiError::Unauthorized)?;
    let public_key = request.public_key.to_ascii_lowercase();
    let now = crate::unix_now();
    let store = &state.repo.store;
    let inventory = serde_json::to_string(&request.inventory).map_err(ApiError::internal)?;

    // A key an administrator authorised beforehand, or a device enrolling again.
    if let Some(existing) = store.device_by_key(&public_key).await? {
        let groups = existing.groups.iter().filter_map(|g| GroupName::parse(g).ok()).collect();
        let answer = match existing.state {
            DeviceState::Accepted => EnrollState::Accepted,
            DeviceState::Pending => EnrollState::Pending,
            DeviceState::Rejected | DeviceState::Revoked => return Err(ApiError::Forbidden("enroll")),
        };
        // Only a pre-authorised record that never enrolled takes the caller's description:
        // without proof of the key, nobody rewrites an enrolled device's record.
        if existing.hostname.is_empty() {
            store.complete_enrollment(&existing.id, &request.inventory.hostname, &inventory, now).await?;
        }
        return Ok(Json(EnrollResponse { device_id: existing.id, state: answer, groups }).into_response());
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
                return Err(ApiError::Unauthorized);
            }
            let hash = ringfence_trust::sha256_hex(token.as_bytes());
            // The device names its groups; a token admits it only to groups it is scoped to.
            if groups.is_empty() {
                return Err(ApiError::BadRequest("groups: name the groups the device follows".into()));
            }
            // Checked before the token is used, so a refused request does not spend a use.
            let scoped = store.enrollment_token(&hash).await?.ok_or(ApiError::Unauthorized)?;
            if let Some(outside) = groups.iter().find(|g| !scoped.groups.contains(g)) {
                return Err(ApiError::BadRequest(format!("groups: the token does not admit group {outside}")));
            }
            device.state = DeviceState::Accepted;
            // The use is spent in the same transaction as the insert: a failed insert spends
            // nothing.
            if !store.enroll_with_token(&hash, now, &device).await? {
                return Err(ApiError::Unauthorized);
            }
        }
        None => {
            // A pending record keeps what an administrator needs to decide, not the whole
            // inventory (which the first check-in after acceptance brings).
            let summary = ringfence_proto::device::Inventory { installed: Vec::new(), ..request.inventory.clone() };
            device.inventory = serde_json::to_string(&summary).map_err(ApiError::internal)?;
            let limits = PendingLimits {
                max_pending: state.config.devices.max_pending,
                max_per_source: state.config.devices.max_pending_per_source,
            };
            let retry_after_secs = RETRY_LATER_SECS;
            match store.insert_pending_device(&device, &source, limits).await? {
                Ok(()) => {}
                Err(PendingRefusal::TooManyFromSource) => {
                    return Err(ApiError::TooMany {
                        what: "too many pending enrollments from this address",
                        retry_after_secs,
                    });
                }
                Err(PendingRefusal::TooManyPending) => {
                    return Err(ApiError::TooMany { what: "too many pending enrollments", retry_after_secs });
                }
            }
        }
    }
    let device_state = device.state;
    let detail = format!("{} ({}) groups {:?}", device.hostname, device_state.as_str(), groups);
    state.repo.audit(&format!("device {}", device.id), "enroll", &detail, now).await?;
    let answer = if device_state == DeviceState::Accepted { EnrollState::Accepted } else { EnrollState::Pending };
    let groups = groups.iter().filter_map(|g| GroupName::parse(g).ok()).collect();
    Ok(Json(EnrollResponse { device_id: device.id, state: answer, groups }).into_response())
}

fn session_rate(state: &AppState, peer: Option<Extension<PeerAddr>>) -> ApiResult<()> {
    state.session_throttle.take(&source_of(peer), std::time::Instant::now()).map_err(|retry_after_secs| {
        ApiError::TooMany { what: "too many challenge and session requests from this address", retry_after_secs }
    })
}

async fn challenge(State(state): Shared, peer: Option<Extension<PeerAddr>>, body: Body) -> ApiResult<Response> {
    session_rate(&state, peer)?;
    let request: ChallengeRequest = device_body(&state, &state.anonymous_body_permits, body).await?;
    let _permit = permit(&state)?;
    let now = crate::unix_now();
    let store = &state.repo.store;
    // Unknown and not-accepted devices get the same answer: no oracle for device ids.
    let device = store.device(&request.device_id).await?.filter(|d| d.state == DeviceState::Accepted);
    let device = device.ok_or(ApiError::Unauthorized)?;
    let nonce = random_hex(32);
    let expires_at = now + state.config.devices.challenge_secs;
    store.insert_challenge(&nonce, &device.id, expires_at, state.config.devices.max_challenges_per_device).await?;
    Ok(Json(ChallengeResponse { nonce, expires_at }).into_response())
}

async fn session(State(state): Shared, peer: Option<Extension<PeerAddr>>, body: Body) -> ApiResult<Response> {
    session_rate(&state, peer)?;
    let request: SessionRequest = device_body(&state, &state.anonymous_body_permits, body).await?;
    let _permit = permit(&state)?;
    let now = crate::unix_now();
    let store = &state.repo.store;
    let device = store
        .device(&request.device_id)
        .await?
        .filter(|d| d.state == DeviceState::Accepted)
        .ok_or(ApiError::Unauthorized)?;
    let key = parse_public_key(&device.public_key)?;
    let signature = hex::decode(&request.signature).map_err(|_| ApiError::Unauthorized)?;
    key.verify(&session_message(&device.id, &request.nonce), &signature).map_err(|_| ApiError::Unauthorized)?;
    // Consumed only after the signature verified, and only once: a replay finds it gone.
    if !store.take_challenge(&request.nonce, &device.id, now).await? {
        return Err(ApiError::Unauthorized);
    }
    let token = format!("{SESSION_PREFIX}{}", random_hex(32));
    let expires_at = now + state.config.devices.session_secs;
    store.insert_session(&ringfence_trust::sha256_hex(token.as_bytes()), &device.id, expires_at).await?;
    Ok(Json(SessionResponse { token, expires_at }).into_response())
}

async fn checkin(State(state): Shared, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    // The session first (headers only): a caller without one is refused before its body is read.
    let now = crate::unix_now();
    let device = session_device(&state, &headers, now).await?;
    let request: CheckinRequest = device_body(&state, &state.session_body_permits, body).await?;
    let _permit = permit(&state)?;
    if i64::try_from(request.timestamp_version).is_err() {
        return Err(ApiError::BadRequest("timestamp_version: out of range".into()));
    }
    request.inventory.validate().map_err(ApiError::BadRequest)?;
    let current = state.repo.store.latest_metadata("timestamp").await?.map_or(0, |t| t.version);
    let inventory = serde_json::to_string(&request.inventory).map_err(ApiError::internal)?;
    // Written behind (see `checkins`): a check-in never waits for the write lock.
    state.checkins.record(CheckinRecord {
        device_id: device.id.clone(),
        at: now,
        timestamp_version: request.timestamp_version,
        inventory,
    });
    let answer = CheckinResponse {
        changed: current > request.timestamp_version,
        timestamp_version: current,
        poll_seconds: state.config.devices.poll_seconds,
    };
    Ok(Json(answer).into_response())
}

async fn reports(State(state): Shared, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    // Session and rate first (headers only): a refused batch costs no body parsing.
    let now = crate::unix_now();
    let device = session_device(&state, &headers, now).await?;
    if let Err(retry_after_secs) = state.report_throttle.take(&device.id, std::time::Instant::now()) {
        return Err(ApiError::TooMany { what: "too many report batches from this device", retry_after_secs });
    }
    let batch: ReportBatch = device_body(&state, &state.session_body_permits, body).await?;
    let _permit = permit(&state)?;
    batch.validate().map_err(ApiError::BadRequest)?;
    let records: Vec<ReportRecord> = batch
        .reports
        .iter()
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
        // At least one whole batch, so the retry of a batch whose answer was lost finds every
        // report of it and stores nothing twice.
        history: state.config.devices.report_history.max(ringfence_proto::device::MAX_REPORTS as u64),
        max_targets: state.config.devices.max_targets_per_device,
    };
    let done = state.repo.store.insert_reports(&device.id, &records, now, limits).await?;
    Ok(Json(ReportsAck { accepted: done.accepted, duplicates: done.duplicates }).into_response())
}
