//! The admin listener (loopback by default): publishing, approvals, pending roles and
//! signatures, tokens. Every route but `/api/v1/health` needs a bearer token with the right
//! scope, and the token is checked before any byte of the body is read.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use ringfence_proto::RoleName;
use ringfence_proto::api::{Scope, TokenRequest};
use ringfence_proto::limits::{MAX_ADMIN_BODY, MAX_UPLOADED_METADATA};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::caller::{Caller, needs};
use crate::error::{ApiError, ApiResult};

type Shared = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/tokens", post(create_token).get(list_tokens))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/api/v1/tokens/{id}/rotate", post(rotate_token))
        .route("/api/v1/content", put(upload_content))
        .route("/api/v1/updates", post(publish_update).get(list_updates))
        .route("/api/v1/approvals", post(approve))
        .route("/api/v1/withdrawals", post(withdraw))
        .route("/api/v1/groups", get(list_groups))
        .route("/api/v1/groups/{group}/windows", put(set_windows))
        .route("/api/v1/rules", post(add_rule).get(list_rules))
        .route("/api/v1/rules/{id}", axum::routing::delete(remove_rule))
        .route("/api/v1/cleanup", post(cleanup))
        .route("/api/v1/rollouts", post(start_rollout).get(rollouts))
        .route("/api/v1/rollouts/{group}/{update}/{action}", post(rollout_action))
        .route("/api/v1/pending", get(list_pending))
        .route("/api/v1/pending/{role}", get(get_pending).put(propose))
        .route("/api/v1/pending/{role}/signatures", post(add_signatures))
        .route("/api/v1/metadata/{role}", get(latest_metadata))
        .route("/api/v1/metadata/{role}/{version}", get(metadata_version))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/log/pending/{role}/{version}/{sha256}/{old}", get(pending_proof))
        .route("/api/v1/replicas/{name}/groups", get(replica_groups).put(set_replica_groups))
        .merge(crate::admin_devices::routes())
        .merge(crate::admin_reports::routes())
        .merge(if state.config.console.enabled { crate::console::routes() } else { Router::new() })
        // Bodies are read by the handlers with their own limits, after authentication.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

pub(crate) async fn read_body(body: Body, limit: usize) -> ApiResult<bytes::Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::TooLarge(limit as u64))
}

/// Parse a JSON body into a fixed schema: bounded size and depth, unknown fields refused.
pub(crate) async fn json_body<T: DeserializeOwned>(body: Body) -> ApiResult<T> {
    let bytes = read_body(body, MAX_ADMIN_BODY).await?;
    ringfence_proto::api::parse_body(&bytes).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn role_name(raw: &str) -> ApiResult<RoleName> {
    RoleName::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn json_bytes(bytes: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(bytes));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn health(State(state): Shared) -> ApiResult<Response> {
    let health = state.repo.health(crate::unix_now()).await?;
    Ok(Json(health).into_response())
}

/// Prometheus metrics, for a token with the `read` scope (Prometheus sends it as a bearer
/// token: `authorization: { credentials_file: … }`).
async fn metrics(State(state): Shared, caller: Caller) -> ApiResult<Response> {
    caller.require(needs::FLEET)?;
    let now = crate::unix_now();
    let fleet = state.console.fleet(now).await?;
    let health = state.repo.health(now).await?;
    let mut role_expiry = Vec::new();
    for r in health.roles {
        let expires = ringfence_trust::expiry::parse(&r.expires).map_err(ApiError::internal)?;
        role_expiry.push((r.role.to_string(), expires.saturating_sub(now)));
    }
    let snapshot = crate::metrics::Snapshot {
        devices: vec![
            ("pending", fleet.pending),
            ("accepted", fleet.accepted),
            ("rejected", fleet.rejected),
            ("revoked", fleet.revoked),
        ],
        devices_seen_24h: fleet.seen,
        rollouts: state.rollouts.count_by_state().await?,
        role_expiry,
        log_size: state.log.size().await?,
        webhook_waiting: state.events.counts().await?.0,
        caches_on: state.config.database.url.is_none() || state.cluster.caches_coherent(),
    };
    let text = state.metrics.render(&snapshot).map_err(ApiError::internal)?;
    let mut r = Response::new(Body::from(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(r)
}

async fn create_token(State(state): Shared, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(needs::ADMIN)?;
    let request: TokenRequest = json_body(body).await?;
    let created = state.tokens.issue(&request, &caller.actor(), crate::unix_now()).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn list_tokens(State(state): Shared, caller: Caller) -> ApiResult<Response> {
    caller.require(needs::ADMIN)?;
    Ok(Json(state.tokens.list().await?).into_response())
}

async fn revoke_token(State(state): Shared, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    caller.require(needs::ADMIN)?;
    state.tokens.revoke(&id, &caller.actor(), crate::unix_now()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A new token with the old one's name and scopes; the old one ends after a grace period.
async fn rotate_token(State(state): Shared, caller: Caller, Path(id): Path<String>, body: Body) -> ApiResult<Response> {
    caller.require(needs::ADMIN)?;
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::NotFound);
    }
    let rotation: ringfence_proto::api::TokenRotation = json_body(body).await?;
    let created = state.tokens.rotate(&id, &rotation, &caller.actor(), crate::unix_now()).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Stream content into the store, hashing as it goes; cut off with 413 past the limit.
async fn upload_content(State(state): Shared, caller: Caller, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    caller.require(&[Scope::Publish])?;
    let limit = state.config.repository.max_upload_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::TooLarge(limit));
    }
    let expected = headers.get("x-content-sha256").and_then(|v| v.to_str().ok());
    let uploaded =
        state.repo.upload_content(body.into_data_stream(), expected, limit, &caller.actor(), crate::unix_now()).await?;
    Ok((StatusCode::CREATED, Json(uploaded)).into_response())
}

async fn publish_update(State(state): Shared, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(&[Scope::Publish])?;
    let manifest = json_body(body).await?;
    let now = crate::unix_now();
    let outcome = state.repo.publish_update(manifest, &caller.actor(), now).await?;
    let event = crate::domain::events::Event::new("update_published", &caller.actor(), now);
    state.events.emit(crate::domain::events::Event { update: outcome.update_id.clone(), ..event }).await;
    // Rules approve what they match at once where the publisher's key signed online.
    if outcome.pending.is_empty() {
        apply_rules(&state, now).await;
    }
    Ok((StatusCode::CREATED, Json(outcome)).into_response())
}

async fn add_rule(State(state): Shared, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(needs::ADMIN)?;
    let rule = json_body(body).await?;
    let now = crate::unix_now();
    let added = state.rules.add(&state.repo, rule, &caller.actor(), now).await?;
    apply_rules(&state, now).await;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

/// Remove content no approval needs and, when asked, devices not seen for a long time; with
/// `dry_run`, only say what would go.
async fn cleanup(State(state): Shared, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(needs::ADMIN)?;
    let request: ringfence_proto::api::CleanupRequest = json_body(body).await?;
    if request.devices_not_seen_days.is_some_and(|d| d == 0 || d > 3650) {
        return Err(ApiError::BadRequest("devices_not_seen_days: 1 to 3650".into()));
    }
    let now = crate::unix_now();
    let content = state.repo.removable_content(now).await?;
    let devices = match request.devices_not_seen_days {
        Some(days) => state.devices.forgettable(days, now).await?,
        None => Vec::new(),
    };
    if !request.dry_run {
        let actor = caller.actor();
        for c in &content {
            state.repo.remove_content(&c.sha256).await?;
        }
        for d in &devices {
            state.devices.forget(&d.id, &actor, now).await?;
        }
        let bytes: u64 = content.iter().map(|c| c.length).sum();
        let detail =
            format!("removed {} content file(s) ({bytes} bytes) and {} device(s)", content.len(), devices.len());
        state.audit.record(&actor, "cleanup", &detail, now).await?;
    }
    let content_bytes = content.iter().map(|c| c.length).sum();
    Ok(Json(ringfence_proto::api::CleanupReport { dry_run: request.dry_run, content, content_bytes, devices })
        .into_response())
}

async fn start_rollout(State(state): Shared, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(needs::APPROVE)?;
    let request = json_body(body).await?;
    let status = state.rollouts.start(&state.repo, request, &caller.actor(), crate::unix_now()).await?;
    Ok((StatusCode::CREATED, Json(status)).into_response())
}

async fn rollouts(State(state): Shared, caller: Caller) -> ApiResult<Response> {
    caller.require(needs::ROLLOUTS)?;
    Ok(Json(state.rollouts.status(&state.repo, crate::unix_now()).await?).into_response())
}

async fn rollout_action(
    State(state): Shared,
    caller: Caller,
    Path((group, update, action)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    caller.require(needs::APPROVE)?;
    let group = ringfence_proto::GroupName::parse(&group).map_err(|_| ApiError::NotFound)?;
    if update.len() > 64 {
        return Err(ApiError::NotFound);
    }
    let status = state.rollouts.act(&state.repo, &group, &update, &action, &caller.actor(), crate::unix_now()).await?;
    Ok(Json(status).into_response())
}

async fn list_rules(State(state): Shared, caller: Caller) -> ApiResult<Response> {
    caller.require(needs::ROLLOUTS)?;
    Ok(Json(state.rules.list().await?).into_response())
}

async fn remove_rule(State(state): Shared, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    caller.require(needs::ADMIN)?;
    state.rules.remove(&id, &caller.actor(), crate::unix_now()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `?limit=N&after=KEY`: a page of a listing. `after` is the last key of the previous page.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    pub(crate) limit: Option<u64>,
    pub(crate) after: Option<String>,
}

/// Items per page unless the caller asks for fewer, and the most a page may hold.
pub(crate) const DEFAULT_PAGE: u64 = 100;
pub(crate) const MAX_PAGE: u64 = 1000;

impl PageQuery {
    /// The page size (1 to [`MAX_PAGE`]) and the key to start after ("" for the first page),
    /// at most 128 printable ASCII characters.
    pub(crate) fn checked(&self) -> ApiResult<(u64, &str)> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(ApiError::BadRequest(format!("limit: 1 to {MAX_PAGE}")));
        }
        let after = self.after.as_deref().unwrap_or("");
        if after.len() > 128 || !after.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::BadRequest("after: the last key of the previous page".into()));
        }
        Ok((limit, after))
    }
}

/// The query string, its errors answered `400`.
pub(crate) fn query<T: DeserializeOwned>(
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<T> {
    query.map(|q| q.0).map_err(|e| ApiError::BadRequest(e.body_text()))
}

type Query<T> = Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>;

async fn list_updates(State(state): Shared, caller: Caller, page: Query<PageQuery>) -> ApiResult<Response> {
    caller.require(needs::CATALOG)?;
    let page = query(page)?;
    let (limit, after) = page.checked()?;
    Ok(Json(state.repo.list_updates(after, limit).await?).into_response())
}

/// On a replica: a site caller's approval work for the groups the replica owns goes to the
/// upstream (`replica::relay`), which decides whether the replica may.
async fn relay(
    upstream: &Arc<crate::replica::Upstream>,
    caller: &Caller,
    path: String,
    body: Option<Body>,
) -> ApiResult<Response> {
    let body = match body {
        Some(b) => Some(read_body(b, MAX_ADMIN_BODY).await?.to_vec()),
        None => None,
    };
    match crate::replica::relay(upstream, path, body, caller.actor()).await {
        // The upstream refusing the replica's own token is not the caller's token refused.
        Ok((401, _)) => Ok((StatusCode::BAD_GATEWAY, "the upstream refused this replica's token").into_response()),
        Ok((status, answer)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            Ok((status, [(header::CONTENT_TYPE, "application/json")], answer).into_response())
        }
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "relaying to the upstream failed");
            Err(ApiError::Busy { retry_after_secs: 5 })
        }
    }
}

async fn approve(State(state): Shared, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(needs::APPROVE)?;
    if let Some(upstream) = &state.upstream {
        return relay(upstream, &caller, "/replica/v1/approvals".into(), Some(body)).await;
    }
    let request = json_body(body).await?;
    let outcome = state.repo.approve(request, &caller.actor(), crate::unix_now()).await?;
    Ok(Json(outcome).into_response())
}

async fn withdraw(State(state): Shared, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(needs::APPROVE)?;
    let request = json_body(body).await?;
    let outcome = state.repo.withdraw(request, &caller.actor(), crate::unix_now()).await?;
    Ok(Json(outcome).into_response())
}

async fn set_windows(
    State(state): Shared,
    caller: Caller,
    Path(group): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    caller.require(needs::APPROVE)?;
    let group = ringfence_proto::GroupName::parse(&group).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let request: ringfence_proto::api::WindowsRequest = json_body(body).await?;
    let outcome = state.repo.set_windows(&group, request.windows, &caller.actor(), crate::unix_now()).await?;
    Ok(Json(outcome).into_response())
}

async fn list_groups(State(state): Shared, caller: Caller) -> ApiResult<Response> {
    caller.require(needs::CATALOG)?;
    Ok(Json(state.repo.groups().await?).into_response())
}

async fn list_pending(State(state): Shared, caller: Caller) -> ApiResult<Response> {
    caller.require(needs::CATALOG)?;
    if let Some(upstream) = &state.upstream {
        return relay(upstream, &caller, "/replica/v1/pending".into(), None).await;
    }
    Ok(Json(state.repo.list_pending().await?).into_response())
}

async fn get_pending(State(state): Shared, caller: Caller, Path(role): Path<String>) -> ApiResult<Response> {
    caller.require(needs::CATALOG)?;
    let role = role_name(&role)?;
    if let Some(upstream) = &state.upstream {
        return relay(upstream, &caller, format!("/replica/v1/pending/{role}"), None).await;
    }
    Ok(json_bytes(state.repo.pending_bytes(&role).await?))
}

async fn propose(State(state): Shared, caller: Caller, Path(role): Path<String>, body: Body) -> ApiResult<Response> {
    caller.require(needs::ADMIN)?;
    let role = role_name(&role)?;
    let bytes = read_body(body, MAX_UPLOADED_METADATA).await?;
    let outcome = state.repo.propose(&role, &bytes, &caller.actor(), crate::unix_now()).await?;
    Ok(Json(outcome).into_response())
}

async fn add_signatures(
    State(state): Shared,
    caller: Caller,
    Path(role): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    caller.require(&[Scope::Approve, Scope::Publish])?;
    let role = role_name(&role)?;
    if let Some(upstream) = &state.upstream {
        return relay(upstream, &caller, format!("/replica/v1/pending/{role}/signatures"), Some(body)).await;
    }
    let upload = json_body(body).await?;
    let now = crate::unix_now();
    let outcome = state.repo.add_signatures(&role, upload, &caller.actor(), now).await?;
    // A publisher's bin just published: rules may approve what it lists.
    if outcome.published && matches!(role.kind(), ringfence_proto::names::RoleKind::PublisherBin(..)) {
        apply_rules(&state, now).await;
    }
    Ok(Json(outcome).into_response())
}

/// Let the approval rules approve what they match now; a failure is logged (the periodic pass
/// tries again).
async fn apply_rules(state: &AppState, now: i64) {
    if let Err(e) = state.rules.run(&state.repo, &state.reports, now).await {
        tracing::error!(error = %crate::domain::error::chain(&e), "applying approval rules");
    }
}

async fn latest_metadata(State(state): Shared, caller: Caller, Path(role): Path<String>) -> ApiResult<Response> {
    caller.require(needs::CATALOG)?;
    let role = role_name(&role)?;
    Ok(json_bytes(state.repo.metadata(&role, None).await?.ok_or(ApiError::NotFound)?))
}

async fn metadata_version(
    State(state): Shared,
    caller: Caller,
    Path((role, version)): Path<(String, u64)>,
) -> ApiResult<Response> {
    caller.require(needs::CATALOG)?;
    let role = role_name(&role)?;
    Ok(json_bytes(state.repo.metadata(&role, Some(version)).await?.ok_or(ApiError::NotFound)?))
}

/// The transparency-log proof of a pending version (its entry: role, version, SHA-256 of the
/// signed bytes), against the newest checkpoint, consistent from `old`: what a signer checks
/// before signing.
async fn pending_proof(
    State(state): Shared,
    caller: Caller,
    Path((role, version, sha256, old)): Path<(String, u64, String, u64)>,
) -> ApiResult<Response> {
    caller.require(needs::CATALOG)?;
    let role = role_name(&role)?;
    let sha256 = ringfence_proto::Sha256Hex::parse(&sha256).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if let Some(upstream) = &state.upstream {
        return relay(upstream, &caller, format!("/replica/v1/log/pending/{role}/{version}/{sha256}/{old}"), None)
            .await;
    }
    Ok(json_bytes(state.log.pending_proof(role.as_str(), version, sha256.as_str(), old).await?))
}

async fn replica_groups(State(state): Shared, caller: Caller, Path(name): Path<String>) -> ApiResult<Response> {
    caller.require(needs::ADMIN)?;
    let groups = state.devices.replica_groups(&name).await?;
    Ok(Json(ringfence_proto::api::ReplicaGroups { groups }).into_response())
}

/// The groups a downstream replica may relay approvals and signatures for.
async fn set_replica_groups(
    State(state): Shared,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    caller.require(needs::ADMIN)?;
    let request: ringfence_proto::api::ReplicaGroups = json_body(body).await?;
    // Only groups top-level targets defines, none the server approves for online, and with
    // every group below them: a device follows its ancestors' approvals, so owning a group
    // reaches its descendants.
    let groups = state.repo.groups().await?;
    let granted: std::collections::BTreeSet<&ringfence_proto::GroupName> = request.groups.iter().collect();
    for g in &request.groups {
        let info = groups
            .iter()
            .find(|i| &i.name == g)
            .ok_or_else(|| ApiError::BadRequest(format!("{g} is not a group of top-level targets")))?;
        if info.auto_approve {
            return Err(ApiError::BadRequest(format!("{g} is approved by this server's online keys")));
        }
        if let Some(child) = groups.iter().find(|c| c.parent.as_ref() == Some(g) && !granted.contains(&c.name)) {
            return Err(ApiError::BadRequest(format!(
                "{g} has the child group {}, whose devices follow its approvals: grant it too",
                child.name
            )));
        }
    }
    state.devices.set_replica_groups(&name, &request.groups, &caller.actor(), crate::unix_now()).await?;
    Ok(Json(request).into_response())
}

/// `?limit=N&before=SEQ`: audit records newest first; each carries its `seq`, and the `seq`
/// of a page's last record asks for the next (older) page.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<u64>,
    before: Option<i64>,
}

async fn audit(State(state): Shared, caller: Caller, page: Query<AuditQuery>) -> ApiResult<Response> {
    caller.require(needs::FLEET)?;
    let page = query(page)?;
    let limit = page.limit.unwrap_or(200);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::BadRequest(format!("limit: 1 to {MAX_PAGE}")));
    }
    Ok(Json(state.audit.page(page.before, limit).await?).into_response())
}
