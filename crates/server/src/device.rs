//! The device listener: the TUF repository, read-only.
//!
//! **Invariant:** this router has no admin route and no request body is parsed here; the only
//! input is a bounded path and the `Range`/`If-None-Match` headers.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ringfence_proto::limits::MAX_TARGET_PATH;
use ringfence_proto::{RoleName, TargetPath, repo_path};

use crate::AppState;
use crate::config::RepositoryAccess;
use crate::error::{ApiError, ApiResult};

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/repo/metadata/{file}", get(metadata))
        .route("/repo/targets/{*path}", get(target))
        .route("/repo/rollouts.json", get(rollout_holds))
        .route("/log/checkpoint", get(log_checkpoint))
        .route("/log/tile/{*path}", get(log_tile))
        .route("/log/proof/{role}/{version}/{old}", get(log_proof))
        .merge(crate::device_api::routes())
        .merge(crate::replica_api::routes())
        .with_state(state)
}

const IMMUTABLE: &str = "max-age=31536000, immutable";

fn cache_control(state: &AppState, immutable: bool) -> HeaderValue {
    let scope = match state.config.repository.access {
        RepositoryAccess::Public => "public",
        RepositoryAccess::Devices => "private",
    };
    let value = if immutable { format!("{scope}, {IMMUTABLE}") } else { format!("{scope}, no-cache") };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("no-cache"))
}

/// `repository.access = "devices"`: once any device is accepted, reading the repository needs
/// a device session. Root metadata stays readable, so a device can pin it before it enrolls.
async fn check_access(state: &AppState, headers: &HeaderMap, root: bool) -> ApiResult<()> {
    if state.config.repository.access == RepositoryAccess::Public || root {
        return Ok(());
    }
    if !state.devices.any_accepted().await? {
        return Ok(());
    }
    // A downstream replica reads the repository it copies with its own token.
    let replica = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer rfat_"));
    if replica {
        return crate::replica_api::replica(state, headers).await.map(|_| ());
    }
    crate::device_api::session_device(state, headers, crate::unix_now()).await.map(|_| ())
}

async fn metadata(
    State(state): State<Arc<AppState>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (role, version) = repo_path::metadata_file(&file).ok_or(ApiError::NotFound)?;
    check_access(&state, &headers, role.as_str() == RoleName::ROOT).await?;
    let served = state.repo.served_metadata(&role, version).await?.ok_or(ApiError::NotFound)?;
    let etag = served.etag;
    let mut response = if if_none_match(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(Body::from(served.bytes));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, cache_control(&state, version.is_some()));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    Ok(response)
}

fn log_answer(bytes: impl Into<Body>, content_type: &'static str, cache: &'static str) -> Response {
    let mut r = Response::new(bytes.into());
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

/// The transparency log's newest checkpoint (with witness cosignatures), cached for a second.
/// The log is public like a certificate transparency log: auditors read it without a session.
async fn log_checkpoint(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let note = state.log.checkpoint().await?.ok_or(ApiError::NotFound)?;
    Ok(log_answer(note, "text/plain; charset=utf-8", "public, max-age=1"))
}

/// A tile or entry bundle (C2SP `tlog-tiles`): immutable once written.
async fn log_tile(State(state): State<Arc<AppState>>, Path(path): Path<String>) -> ApiResult<Response> {
    let path = format!("tile/{path}");
    if !ringfence_tlog::tree::is_tile_path(&path) {
        return Err(ApiError::NotFound);
    }
    let bytes = state.log.tile(&path).await?.ok_or(ApiError::NotFound)?;
    Ok(log_answer(bytes, "application/octet-stream", "public, max-age=31536000, immutable"))
}

/// The proof bundle of a metadata version against the newest checkpoint, with the consistency
/// proof from the tree size `old` the client trusts.
async fn log_proof(
    State(state): State<Arc<AppState>>,
    Path((role, version, old)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let role = RoleName::parse(&role).map_err(|_| ApiError::NotFound)?;
    let number = |s: &str| -> ApiResult<u64> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::NotFound);
        }
        s.parse().map_err(|_| ApiError::NotFound)
    };
    let bytes = state.log.proof(role.as_str(), number(&version)?, number(&old)?).await?;
    Ok(log_answer(bytes, "application/json", "public, max-age=1"))
}

/// The server's signed rollout holds (see `domain::rollouts`); `404` until a rollout exists.
async fn rollout_holds(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    check_access(&state, &headers, false).await?;
    let bytes = state.repo.holds_document().await?.ok_or(ApiError::NotFound)?;
    let mut r = Response::new(Body::from(bytes));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, cache_control(&state, false));
    Ok(r)
}

fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// `<dir>/<sha256>.<file name>`: served from the content store by hash.
async fn target(
    State(state): State<Arc<AppState>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if path.len() > MAX_TARGET_PATH + 65 {
        return Err(ApiError::NotFound);
    }
    check_access(&state, &headers, false).await?;
    TargetPath::parse(&path).map_err(|_| ApiError::NotFound)?;
    let (hash, logical) = repo_path::consistent_target(&path).ok_or(ApiError::NotFound)?;
    // Serve only content published under this path (or approved as it), never whatever
    // happens to be in the content store under that hash.
    let published = match logical.split_approval() {
        Some((_, published)) => published,
        None => logical,
    };
    let length = state.repo.served_content(&published, &hash).await?.ok_or(ApiError::NotFound)?;
    let etag = format!("\"{hash}\"");
    let cache = cache_control(&state, true);
    if if_none_match(&headers, &etag) {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut().insert(header::CACHE_CONTROL, cache);
        return Ok(r);
    }
    if state.config.content.redirect_downloads
        && let Some(url) = state.repo.content_url(&hash).await?
    {
        // The bytes come from the bucket; the device checks them against the signed hash as
        // it would from a node, and sends its Range there itself.
        let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
        let location = HeaderValue::from_str(&url).map_err(|_| ApiError::NotFound)?;
        r.headers_mut().insert(header::LOCATION, location);
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(r);
    }
    let range = match headers.get(header::RANGE) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| repo_path::byte_range(v, length))
                .ok_or(ApiError::RangeNotSatisfiable(length))?,
        ),
        None => None,
    };
    let stream = state.repo.content_stream(&hash, range.clone()).await?;
    let stream = crate::throttle::paced(stream, state.config.devices.max_download_bytes_per_sec);
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, cache);
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    match range {
        Some(r) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{length}", r.start, r.end - 1)) {
                h.insert(header::CONTENT_RANGE, v);
            }
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(r.end - r.start));
        }
        None => {
            response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
    Ok(response)
}
