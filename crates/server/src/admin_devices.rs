//! Admin routes for devices: enrollment tokens, the device list with each device's update
//! states, pre-authorisation, accept / reject / revoke. The work is `domain::devices`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ringfence_proto::device::{EnrollmentTokenRequest, PreauthorizeBatch, PreauthorizeRequest};

use crate::AppState;
use crate::admin::json_body;
use crate::caller::{Caller, needs};
use crate::domain::devices::{DeviceAction, DeviceState};
use crate::error::{ApiError, ApiResult};

type Shared = State<Arc<AppState>>;

pub fn routes() -> axum::Router<Arc<AppState>> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/v1/enrollment-tokens", post(create_enrollment_token))
        .route("/api/v1/devices", get(list_devices).post(preauthorize))
        .route("/api/v1/devices/preauthorize", post(preauthorize_many))
        .route("/api/v1/devices/{id}/{action}", post(change_state))
        .route("/api/v1/devices/{id}/evidence", get(evidence))
}

async fn create_enrollment_token(State(state): Shared, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(needs::ADMIN)?;
    let request: EnrollmentTokenRequest = json_body(body).await?;
    let created = state.devices.create_enrollment_token(&request, &caller.actor(), crate::unix_now()).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `GET /api/v1/devices?limit=N&after=ID&state=S`: one page, ordered by id.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceQuery {
    limit: Option<u64>,
    after: Option<String>,
    state: Option<String>,
}

async fn list_devices(
    State(state): Shared,
    caller: Caller,
    query: Result<axum::extract::Query<DeviceQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    caller.require(needs::FLEET)?;
    let query = crate::admin::query(query)?;
    let page = crate::admin::PageQuery { limit: query.limit, after: query.after.clone() };
    let (limit, after) = page.checked()?;
    let device_state = match query.state.as_deref() {
        None => None,
        Some(s) => Some(
            DeviceState::parse(s)
                .ok_or_else(|| ApiError::BadRequest("state: pending, accepted, rejected or revoked".into()))?,
        ),
    };
    Ok(Json(state.devices.list(after, limit, device_state).await?).into_response())
}

async fn preauthorize(State(state): Shared, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(needs::ADMIN)?;
    let request: PreauthorizeRequest = json_body(body).await?;
    let device = state.devices.preauthorize(&request, &caller.actor(), crate::unix_now()).await?;
    Ok((StatusCode::CREATED, Json(device)).into_response())
}

/// Many device keys at once (importing a fleet): all accepted or none.
async fn preauthorize_many(State(state): Shared, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(needs::ADMIN)?;
    let batch: PreauthorizeBatch = json_body(body).await?;
    let devices = state.devices.preauthorize_many(&batch, &caller.actor(), crate::unix_now()).await?;
    Ok((StatusCode::CREATED, Json(devices)).into_response())
}

async fn change_state(
    State(state): Shared,
    caller: Caller,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Response> {
    caller.require(needs::ADMIN)?;
    let action = DeviceAction::parse(&action).ok_or(ApiError::NotFound)?;
    let device = state.devices.change_state(&id, action, &caller.actor(), crate::unix_now()).await?;
    Ok(Json(device).into_response())
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EvidenceQuery {
    target: String,
}

/// `GET /api/v1/devices/{id}/evidence?target=approvals/...`: the device's newest report on the
/// approval path, with the batch it signed it in.
async fn evidence(
    State(state): Shared,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<EvidenceQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    caller.require(needs::FLEET)?;
    let query = crate::admin::query(query)?;
    Ok(Json(state.devices.evidence(&id, &query.target).await?).into_response())
}
