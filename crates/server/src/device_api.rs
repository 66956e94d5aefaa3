//! The device API on the device listener: enrollment, sessions, check-in, status reports.
//!
//! Enrollment and session opening are the only routes that read a body before the caller
//! is authenticated; those bodies are small fixed schemas ([`MAX_DEVICE_BODY`]) and a refusal
//! changes nothing. Every other route needs a live session of an accepted device. This layer
//! bounds rates and body reads and parses; `domain::devices` does the work.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ringfence_proto::api::parse_body_limited;
use ringfence_proto::device::{
    ChallengeRequest, CheckinRequest, EnrollRequest, MAX_DEVICE_BODY, ReportBatch, SessionRequest,
};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::admin::read_body;
use crate::domain::devices::SessionDevice;
use crate::error::{ApiError, ApiResult};

type Shared = State<Arc<AppState>>;

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

pub(crate) fn source_of(peer: Option<Extension<PeerAddr>>) -> String {
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

/// Read and drop what a refused request still sends (at most the largest device body, for at
/// most half a second, only while one of the refused requests' own permits is free), so that
/// closing the connection does not reset it before the client reads the refusal: a device
/// whose session ended must see its `401` (and open a new session), not a connection error.
/// Nothing read is parsed, and a flood of refused requests holds none of the permits devices
/// with a session read their bodies under.
async fn drain_refused(state: &AppState, body: Body) {
    let Ok(_reading) = state.refused_body_permits.try_acquire() else { return };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), read_body(body, MAX_DEVICE_BODY)).await;
}

/// [`session_device`], draining the body of a request it refuses (see [`drain_refused`]).
async fn session_device_or_drain(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    now: i64,
) -> ApiResult<(SessionDevice, Body)> {
    match session_device(state, headers, now).await {
        Ok(device) => Ok((device, body)),
        Err(e) => {
            drain_refused(state, body).await;
            Err(e)
        }
    }
}

/// The accepted device whose live session the request carries.
pub async fn session_device(state: &AppState, headers: &HeaderMap, now: i64) -> ApiResult<SessionDevice> {
    let secret = bearer(headers).ok_or(ApiError::Unauthorized)?;
    Ok(state.devices.session_device(secret, now).await?)
}

async fn enroll(State(state): Shared, peer: Option<Extension<PeerAddr>>, body: Body) -> ApiResult<Response> {
    let source = source_of(peer);
    if let Err(retry_after_secs) = state.enroll_throttle.take(&source, std::time::Instant::now()) {
        return Err(ApiError::TooMany { what: "too many enrollment attempts from this address", retry_after_secs });
    }
    let request: EnrollRequest = device_body(&state, &state.anonymous_body_permits, body).await?;
    // A replica enrolls its devices at its upstream, which keeps their keys (within a few
    // seconds, holding no device-API slot meanwhile).
    if let Some(upstream) = &state.upstream {
        return match crate::replica::enroll(&state, upstream, &request).await {
            Ok(crate::replica::EnrollOutcome::Done(answer)) => Ok(Json(answer).into_response()),
            // The upstream's refusal of the device is the device's answer; its being busy or
            // away is a retry later; anything else is the upstream failing the replica.
            Ok(crate::replica::EnrollOutcome::Refused { status: status @ (400 | 401 | 403 | 404 | 409), text }) => {
                let status = axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
                Ok((status, ringfence_trust::review::shown(&text)).into_response())
            }
            Ok(crate::replica::EnrollOutcome::Refused { status: 429 | 503, .. }) => {
                Err(ApiError::Busy { retry_after_secs: RETRY_AFTER_SECS })
            }
            Ok(crate::replica::EnrollOutcome::Refused { status, .. }) => {
                tracing::warn!(status, "the upstream failed an enrollment");
                Ok((axum::http::StatusCode::BAD_GATEWAY, "the upstream failed the enrollment").into_response())
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "enrolling a device at the upstream failed");
                Err(ApiError::Busy { retry_after_secs: RETRY_AFTER_SECS })
            }
        };
    }
    let _permit = permit(&state)?;
    Ok(Json(state.devices.enroll(&request, &source, crate::unix_now()).await?).into_response())
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
    Ok(Json(state.devices.challenge(&request.device_id, crate::unix_now()).await?).into_response())
}

async fn session(State(state): Shared, peer: Option<Extension<PeerAddr>>, body: Body) -> ApiResult<Response> {
    session_rate(&state, peer)?;
    let request: SessionRequest = device_body(&state, &state.anonymous_body_permits, body).await?;
    let _permit = permit(&state)?;
    Ok(Json(state.devices.open_session(&request, crate::unix_now()).await?).into_response())
}

async fn checkin(State(state): Shared, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    // The session first (headers only): a caller without one is refused before its body is
    // parsed (what it sends is only read and dropped, so the refusal reaches it).
    let now = crate::unix_now();
    let (device, body) = session_device_or_drain(&state, &headers, body, now).await?;
    let request: CheckinRequest = device_body(&state, &state.session_body_permits, body).await?;
    let _permit = permit(&state)?;
    // Never answer with a version older than the one this device already trusts while the
    // database has it (another node's commit this node has not heard of yet).
    let current =
        state.repo.served_version_after(&ringfence_proto::RoleName::timestamp(), request.timestamp_version).await?;
    let holds = state.repo.holds_version().await?;
    let answer = state.devices.check_in(&device, &request, (current, holds), now).await?;
    state.metrics.checkin();
    Ok(Json(answer).into_response())
}

async fn reports(State(state): Shared, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    // Session and rate first (headers only): a refused batch costs no body parsing (it is only
    // read and dropped, so the refusal reaches the device).
    let now = crate::unix_now();
    let (device, body) = session_device_or_drain(&state, &headers, body, now).await?;
    if let Err(retry_after_secs) = state.report_throttle.take(&device.id, std::time::Instant::now()) {
        drain_refused(&state, body).await;
        return Err(ApiError::TooMany { what: "too many report batches from this device", retry_after_secs });
    }
    let batch: ReportBatch = device_body(&state, &state.session_body_permits, body).await?;
    let _permit = permit(&state)?;
    let follows = state.repo.followed_groups(&device.groups).await?;
    let answer = state.devices.report(&device, &batch, &follows, now).await?;
    state.metrics.reports_ingested(batch.reports.len() as u64);
    // One event per batch at most (batches per device are rate-bounded).
    if let Some(failed) = batch.reports.iter().find(|r| r.state == ringfence_proto::device::ReportState::Failed) {
        let by = format!("device {}", device.id);
        let event = crate::domain::events::Event {
            device: Some(device.id.clone()),
            target: Some(failed.target.clone()),
            reason: failed.reason.clone(),
            ..crate::domain::events::Event::new("device_update_failed", &by, now)
        };
        state.events.emit(event).await;
    }
    Ok(Json(answer).into_response())
}
