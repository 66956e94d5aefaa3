//! What an upstream answers its downstream replicas, on the device listener under
//! `/replica/v1/`: enrollment of a device through a replica, the state of the devices a
//! replica keeps, and the devices' signed report batches it forwards. Each request carries a
//! token whose only scope is `replicate` (an admin token is refused here, and a replica token
//! is good for nothing on the admin listener); the bodies are fixed schemas, bounded.
//!
//! A replica cannot speak for a device: a forwarded batch is stored only if it verifies under
//! the key the device enrolled with here, exactly as if the device had sent it, and only for an
//! accepted device. A replica can delay or drop its devices' reports, never forge or alter one.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use ringfence_proto::RoleName;
use ringfence_proto::api::{ApprovalRequest, Scope, SignatureUpload, parse_body_limited};
use ringfence_proto::device::{
    DeviceAnswers, DeviceQuestion, EnrollRequest, ForwardedAck, ForwardedBatch, ForwardedReports, ForwardedResult,
    MAX_DEVICE_BODY, MAX_REPLICA_BODY, ReportBatch, ReportsAck, parse_report_batch_message,
};
use ringfence_proto::limits::MAX_ADMIN_BODY;
use ringfence_proto::names::RoleKind;

use crate::AppState;
use crate::domain::Error;
use crate::error::{ApiError, ApiResult};

type Shared = State<Arc<AppState>>;

pub fn routes() -> axum::Router<Arc<AppState>> {
    use axum::routing::post;
    axum::Router::new()
        .route("/replica/v1/enroll", post(enroll))
        .route("/replica/v1/devices", post(devices))
        .route("/replica/v1/reports", post(reports))
        // What a site's administrators and approvers do for the groups the replica owns
        // (`PUT /api/v1/replicas/{name}/groups`), relayed by the replica's admin API.
        .route("/replica/v1/approvals", post(approve))
        .route("/replica/v1/pending", axum::routing::get(list_pending))
        .route("/replica/v1/pending/{role}", axum::routing::get(get_pending))
        .route("/replica/v1/pending/{role}/signatures", post(add_signatures))
        .route("/replica/v1/log/pending/{role}/{version}/{sha256}/{old}", axum::routing::get(pending_proof))
}

/// Who acts through a replica, for the audit trail: the replica, and the site's caller as the
/// replica names it (its word; at most 64 printable characters).
fn relayed_actor(name: &str, headers: &HeaderMap) -> String {
    let site = headers
        .get("x-ringfence-actor")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64 && !v.chars().any(char::is_control))
        .unwrap_or("unnamed");
    format!("replica {name} for {site}")
}

/// The approval role `role` names, if it is one of a group replica `name` owns.
async fn owned_role(state: &AppState, name: &str, role: &str) -> ApiResult<RoleName> {
    let role = RoleName::parse(role).map_err(|_| ApiError::NotFound)?;
    let RoleKind::Approval(group) = role.kind() else {
        return Err(ApiError::from(Error::Forbidden("a replica relays approval roles only".into())));
    };
    if !state.devices.replica_groups(name).await?.contains(&group) {
        return Err(ApiError::from(Error::Forbidden(format!("replica {name} does not approve for {group}"))));
    }
    Ok(role)
}

async fn approve(State(state): Shared, headers: HeaderMap, request: Body) -> ApiResult<Response> {
    let name = replica(&state, &headers).await?;
    let request: ApprovalRequest = body(&state, request, MAX_ADMIN_BODY).await?;
    if !state.devices.replica_groups(&name).await?.contains(&request.group) {
        return Err(ApiError::from(Error::Forbidden(format!("replica {name} does not approve for {}", request.group))));
    }
    // A group the server's online keys approve for would publish the replica's proposal at
    // once, with no approver of the site: never through a replica (looked at each time, as
    // top-level targets can change).
    let groups = state.repo.groups().await?;
    if groups.iter().any(|g| g.name == request.group && g.auto_approve) {
        return Err(ApiError::from(Error::Forbidden(format!(
            "{} is approved by this server's online keys: a replica does not propose for it",
            request.group
        ))));
    }
    let outcome = state.repo.approve(request, &relayed_actor(&name, &headers), crate::unix_now()).await?;
    Ok(Json(outcome).into_response())
}

/// The pending versions of the approval roles of the groups the replica owns.
async fn list_pending(State(state): Shared, headers: HeaderMap) -> ApiResult<Response> {
    let name = replica(&state, &headers).await?;
    let owned: std::collections::BTreeSet<String> =
        state.devices.replica_groups(&name).await?.iter().map(|g| g.approval_role().to_string()).collect();
    let mut pending = state.repo.list_pending().await?;
    pending.retain(|p| owned.contains(p.role.as_str()));
    Ok(Json(pending).into_response())
}

async fn get_pending(State(state): Shared, headers: HeaderMap, Path(role): Path<String>) -> ApiResult<Response> {
    let name = replica(&state, &headers).await?;
    let role = owned_role(&state, &name, &role).await?;
    let bytes = state.repo.pending_bytes(&role).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

async fn add_signatures(
    State(state): Shared,
    headers: HeaderMap,
    Path(role): Path<String>,
    request: Body,
) -> ApiResult<Response> {
    let name = replica(&state, &headers).await?;
    let role = owned_role(&state, &name, &role).await?;
    let upload: SignatureUpload = body(&state, request, MAX_ADMIN_BODY).await?;
    let outcome = state.repo.add_signatures(&role, upload, &relayed_actor(&name, &headers), crate::unix_now()).await?;
    Ok(Json(outcome).into_response())
}

async fn pending_proof(
    State(state): Shared,
    headers: HeaderMap,
    Path((role, version, sha256, old)): Path<(String, u64, String, u64)>,
) -> ApiResult<Response> {
    let name = replica(&state, &headers).await?;
    let role = owned_role(&state, &name, &role).await?;
    let sha256 = ringfence_proto::Sha256Hex::parse(&sha256).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let bytes = state.log.pending_proof(role.as_str(), version, sha256.as_str(), old).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

/// The replica's name (its token's), if the request carries a live token whose only scope is
/// `replicate`.
pub async fn replica(state: &AppState, headers: &HeaderMap) -> ApiResult<String> {
    let value = headers.get(axum::http::header::AUTHORIZATION).ok_or(ApiError::Unauthorized)?;
    let secret = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or(ApiError::Unauthorized)?;
    if secret.len() > 128 {
        return Err(ApiError::Unauthorized);
    }
    let holder = state.tokens.authenticate(secret, crate::unix_now()).await?;
    if holder.scopes != [Scope::Replicate] {
        return Err(ApiError::Unauthorized);
    }
    Ok(holder.name)
}

/// A body of at most `limit` bytes, read within the device listener's body deadline.
async fn body<T: serde::de::DeserializeOwned>(state: &AppState, body: Body, limit: usize) -> ApiResult<T> {
    let deadline = std::time::Duration::from_secs(state.config.devices.body_read_secs.max(1) * 4);
    let bytes =
        tokio::time::timeout(deadline, crate::admin::read_body(body, limit)).await.map_err(|_| ApiError::Timeout)??;
    parse_body_limited(&bytes, limit).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// A device enrolling through a replica: the device's own signed request, with the upstream's
/// enrollment token, handled as if it came straight (the enrollment's source names the replica).
async fn enroll(State(state): Shared, headers: HeaderMap, request: Body) -> ApiResult<Response> {
    let name = replica(&state, &headers).await?;
    let request: EnrollRequest = body(&state, request, MAX_DEVICE_BODY).await?;
    let source = crate::domain::devices::replica_source(&name);
    let answer = state.devices.enroll(&request, &source, crate::unix_now()).await?;
    Ok(Json(answer).into_response())
}

/// The devices among those asked about that this server knows, with their state.
async fn devices(State(state): Shared, headers: HeaderMap, request: Body) -> ApiResult<Response> {
    let name = replica(&state, &headers).await?;
    let question: DeviceQuestion = body(&state, request, MAX_REPLICA_BODY).await?;
    question.validate().map_err(ApiError::BadRequest)?;
    let mut devices = Vec::new();
    for id in &question.ids {
        devices.extend(state.devices.identity(id, &name).await?);
    }
    Ok(Json(DeviceAnswers { devices }).into_response())
}

/// Forwarded report batches: each stored as if its device had sent it, or refused for good.
async fn reports(State(state): Shared, headers: HeaderMap, request: Body) -> ApiResult<Response> {
    let name = replica(&state, &headers).await?;
    let request: ForwardedReports = body(&state, request, MAX_REPLICA_BODY).await?;
    request.validate().map_err(ApiError::BadRequest)?;
    let now = crate::unix_now();
    let mut results = Vec::new();
    for batch in &request.batches {
        results.push(match forwarded(&state, &name, batch, now).await {
            Ok(ack) => {
                state.metrics.reports_ingested(ack.accepted);
                ForwardedResult { ack: Some(ack), refused: None }
            }
            Err(e @ (Error::Invalid(_) | Error::NotFound | Error::Forbidden(_) | Error::Conflict(_))) => {
                tracing::warn!(replica = %name, error = %e, "a forwarded report batch refused");
                ForwardedResult { ack: None, refused: Some(e.to_string()) }
            }
            // Anything else (the database away, say): the whole request fails and is sent again.
            Err(e) => return Err(e.into()),
        });
    }
    Ok(Json(ForwardedAck { results }).into_response())
}

async fn forwarded(state: &AppState, replica: &str, batch: &ForwardedBatch, now: i64) -> Result<ReportsAck, Error> {
    let (device_id, reports) = parse_report_batch_message(batch.message.as_bytes())
        .ok_or_else(|| Error::Invalid("not a device's report batch".into()))?;
    // Only the replica the device enrolled through speaks for it.
    let device = state.devices.replica_device(&device_id, replica).await?;
    let batch = ReportBatch { reports, signature: batch.signature.clone() };
    let follows = state.repo.followed_groups(&device.groups).await?;
    state.devices.report(&device, &batch, &follows, now).await
}
