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
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use ringfence_proto::api::{Scope, parse_body_limited};
use ringfence_proto::device::{
    DeviceAnswers, DeviceQuestion, EnrollRequest, ForwardedAck, ForwardedBatch, ForwardedReports, ForwardedResult,
    MAX_DEVICE_BODY, MAX_REPLICA_BODY, ReportBatch, ReportsAck, parse_report_batch_message,
};

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
