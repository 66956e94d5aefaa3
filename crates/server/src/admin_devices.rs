//! Admin routes for devices: enrollment tokens, the device list with each device's update
//! states, pre-authorisation, accept / reject / revoke.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ringfence_proto::api::Scope;
use ringfence_proto::device::{
    DeviceInfo, EnrollmentTokenCreated, EnrollmentTokenRequest, Inventory, PreauthorizeRequest, ReportState,
    StatusReport,
};
use ringfence_store::{DevicePage, DeviceRecord, DeviceState, DeviceStore, EnrollmentTokenRecord};

use crate::AppState;
use crate::admin::json_body;
use crate::caller::Caller;
use crate::device_api::{ENROLLMENT_PREFIX, random_hex};
use crate::error::{ApiError, ApiResult};

type Shared = State<Arc<AppState>>;

pub fn routes() -> axum::Router<Arc<AppState>> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/v1/enrollment-tokens", post(create_enrollment_token))
        .route("/api/v1/devices", get(list_devices).post(preauthorize))
        .route("/api/v1/devices/{id}/{action}", post(change_state))
}

/// Longest an enrollment token may live.
const MAX_ENROLLMENT_TOKEN_SECS: u64 = 90 * 86_400;

async fn create_enrollment_token(State(state): Shared, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(&[Scope::Admin])?;
    let request: EnrollmentTokenRequest = json_body(body).await?;
    if request.groups.is_empty() || request.groups.len() > 16 {
        return Err(ApiError::BadRequest("groups: 1 to 16 groups".into()));
    }
    if request.expires_in_secs == 0 || request.expires_in_secs > MAX_ENROLLMENT_TOKEN_SECS {
        return Err(ApiError::BadRequest(format!("expires_in_secs: 1 to {MAX_ENROLLMENT_TOKEN_SECS}")));
    }
    if request.max_uses == 0 || request.max_uses > 1_000_000 {
        return Err(ApiError::BadRequest("max_uses: 1 to 1000000".into()));
    }
    let now = crate::unix_now();
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
    state.repo.store.insert_enrollment_token(&record).await?;
    audit(
        &state,
        &caller,
        "enrollment-token",
        format!("{} for {:?}, {} uses", record.id, record.groups, record.max_uses),
    )
    .await?;
    let created = EnrollmentTokenCreated { id: record.id, token, expires_at: record.expires_at };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn audit(state: &AppState, caller: &Caller, action: &str, detail: String) -> ApiResult<()> {
    state.repo.audit(&caller.actor(), action, &detail, crate::unix_now()).await
}

fn report_state(s: &str) -> Option<ReportState> {
    use ReportState::*;
    [Downloading, Downloaded, Installing, Installed, Failed, RolledBack, RebootRequired, NotApplicable, Refused]
        .into_iter()
        .find(|r| r.as_str() == s)
}

async fn device_info(state: &AppState, d: DeviceRecord) -> ApiResult<DeviceInfo> {
    let mut newest: BTreeMap<String, StatusReport> = BTreeMap::new();
    for r in state.repo.store.device_update_states(&d.id).await? {
        let Some(report_state) = report_state(&r.state) else { continue };
        newest.insert(
            r.target.clone(),
            StatusReport {
                id: r.id,
                target: r.target,
                state: report_state,
                reason: r.reason,
                exit_code: r.exit_code,
                at: r.at,
            },
        );
    }
    // A check-in not yet written is newer than the stored record.
    let mut d = d;
    if let Some(c) = state.checkins.get(&d.id) {
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
    caller.require(&[Scope::Read])?;
    let query = crate::admin::query(query)?;
    let page = crate::admin::PageQuery { limit: query.limit, after: query.after.clone() };
    let (limit, after) = page.checked()?;
    let after = after.to_owned();
    let device_state = match query.state.as_deref() {
        None => None,
        Some(s) => Some(
            DeviceState::parse(s)
                .ok_or_else(|| ApiError::BadRequest("state: pending, accepted, rejected or revoked".into()))?,
        ),
    };
    let page = DevicePage { after: Some(after), limit, state: device_state };
    let mut out = Vec::new();
    for d in state.repo.store.list_devices(&page).await? {
        out.push(device_info(&state, d).await?);
    }
    Ok(Json(out).into_response())
}

async fn preauthorize(State(state): Shared, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(&[Scope::Admin])?;
    let request: PreauthorizeRequest = json_body(body).await?;
    let bytes = hex::decode(&request.public_key).ok().filter(|b| b.len() == 32);
    if bytes.is_none() {
        return Err(ApiError::BadRequest("public_key: 64 hex characters".into()));
    }
    let now = crate::unix_now();
    let device = DeviceRecord {
        id: random_hex(16),
        public_key: request.public_key.to_ascii_lowercase(),
        state: DeviceState::Accepted,
        groups: request.groups.iter().map(|g| g.to_string()).collect(),
        hostname: String::new(),
        inventory: "{}".into(),
        enrolled_at: now,
        last_checkin: None,
        timestamp_version: None,
    };
    state.repo.store.insert_device(&device).await?;
    audit(&state, &caller, "preauthorize", format!("device {} groups {:?}", device.id, device.groups)).await?;
    Ok((StatusCode::CREATED, Json(device_info(&state, device).await?)).into_response())
}

async fn change_state(
    State(state): Shared,
    caller: Caller,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Response> {
    caller.require(&[Scope::Admin])?;
    let new_state = match action.as_str() {
        "accept" => DeviceState::Accepted,
        "reject" => DeviceState::Rejected,
        "revoke" => DeviceState::Revoked,
        _ => return Err(ApiError::NotFound),
    };
    if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::NotFound);
    }
    let device = state.repo.store.device(&id).await?.ok_or(ApiError::NotFound)?;
    let allowed = match new_state {
        DeviceState::Accepted | DeviceState::Rejected => device.state == DeviceState::Pending,
        _ => device.state != DeviceState::Revoked,
    };
    if !allowed {
        return Err(ApiError::Conflict(format!("device {id} is {}", device.state.as_str())));
    }
    state.repo.store.set_device_state(&id, new_state).await?;
    audit(&state, &caller, &action, format!("device {id}")).await?;
    let device = state.repo.store.device(&id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(device_info(&state, device).await?).into_response())
}
