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
use ringfence_proto::{RoleName, Sha256Hex, TargetPath};
use ringfence_store::Store;

use crate::AppState;
use crate::config::RepositoryAccess;
use crate::error::{ApiError, ApiResult};

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/repo/metadata/{file}", get(metadata))
        .route("/repo/targets/{*path}", get(target))
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

/// `timestamp.json` or `<version>.<role>.json`.
fn parse_metadata_name(file: &str) -> Option<(RoleName, Option<u64>)> {
    if file.len() > 160 {
        return None;
    }
    let stem = file.strip_suffix(".json")?;
    if stem == "timestamp" {
        return Some((RoleName::timestamp(), None));
    }
    let (version, role) = stem.split_once('.')?;
    if version.is_empty()
        || version.len() > 19
        || !version.bytes().all(|b| b.is_ascii_digit())
        || version.starts_with('0')
    {
        return None;
    }
    let role = RoleName::parse(role).ok()?;
    if role.as_str() == RoleName::TIMESTAMP {
        return None;
    }
    Some((role, Some(version.parse().ok()?)))
}

async fn metadata(
    State(state): State<Arc<AppState>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (role, version) = parse_metadata_name(&file).ok_or(ApiError::NotFound)?;
    let store = &state.repo.store;
    let record = match version {
        Some(v) => store.metadata_version(role.as_str(), v).await?,
        None => store.latest_metadata(role.as_str()).await?,
    }
    .ok_or(ApiError::NotFound)?;
    let etag = format!("\"{}\"", ringfence_trust::sha256_hex(&record.bytes));
    let mut response = if if_none_match(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(Body::from(record.bytes));
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
    TargetPath::parse(&path).map_err(|_| ApiError::NotFound)?;
    let (hash, logical) = split_consistent_target(&path).ok_or(ApiError::NotFound)?;
    // Serve only content published under this path (or approved as it), never whatever
    // happens to be in the content store under that hash.
    let published = match logical.split_approval() {
        Some((_, published)) => published,
        None => logical,
    };
    let file = state.repo.store.file_by_target_path(published.as_str()).await?.ok_or(ApiError::NotFound)?;
    if file.sha256 != hash.as_str() {
        return Err(ApiError::NotFound);
    }
    let length = state.repo.store.blob_length(hash.as_str()).await?.ok_or(ApiError::NotFound)?;
    let etag = format!("\"{hash}\"");
    let cache = cache_control(&state, true);
    if if_none_match(&headers, &etag) {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut().insert(header::CACHE_CONTROL, cache);
        return Ok(r);
    }
    let range = match headers.get(header::RANGE) {
        Some(v) => Some(parse_range(v.to_str().map_err(|_| ApiError::RangeNotSatisfiable(length))?, length)?),
        None => None,
    };
    let stream = state.repo.blobs.get_stream(hash.as_str(), range.clone()).await?;
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

/// Split a consistent-snapshot target file name into the hash and the target path.
///
/// The specification's form is `<dir>/<sha256>.<file>`; tough (0.24) asks for
/// `<sha256>.<dir>/<file>`, hashing the whole path, so that form is served too.
fn split_consistent_target(path: &str) -> Option<(Sha256Hex, TargetPath)> {
    if let Some((dir, file)) = path.rsplit_once('/')
        && let Some((hash, name)) = file.split_once('.')
        && let Ok(hash) = Sha256Hex::parse(hash)
    {
        return Some((hash, TargetPath::parse(&format!("{dir}/{name}")).ok()?));
    }
    let (hash, rest) = path.split_once('.')?;
    Some((Sha256Hex::parse(hash).ok()?, TargetPath::parse(rest).ok()?))
}

/// One range of `bytes=a-b`, `bytes=a-` or `bytes=-n`, as a half-open range within `length`.
pub fn parse_range(value: &str, length: u64) -> ApiResult<std::ops::Range<u64>> {
    let unsatisfiable = || ApiError::RangeNotSatisfiable(length);
    let spec = value.strip_prefix("bytes=").ok_or_else(unsatisfiable)?;
    if spec.len() > 41 || spec.contains(',') {
        return Err(unsatisfiable());
    }
    let (start, end) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let num = |s: &str| s.parse::<u64>().map_err(|_| unsatisfiable());
    let range = match (start.is_empty(), end.is_empty()) {
        (false, false) => num(start)?..num(end)?.saturating_add(1).min(length),
        (false, true) => num(start)?..length,
        (true, false) => length.saturating_sub(num(end)?)..length,
        (true, true) => return Err(unsatisfiable()),
    };
    if range.start >= range.end || range.start >= length {
        return Err(unsatisfiable());
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names() {
        assert_eq!(parse_metadata_name("timestamp.json"), Some((RoleName::timestamp(), None)));
        assert_eq!(
            parse_metadata_name("3.publisher.acme.0f.json").map(|(r, v)| (r.to_string(), v)),
            Some(("publisher.acme.0f".into(), Some(3)))
        );
        for bad in ["1.timestamp.json", "01.root.json", "root.json", "1.root", "x.root.json", "1.../etc.json"] {
            assert_eq!(parse_metadata_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn consistent_target_names() {
        let sha = "a".repeat(64);
        let split = |p: &str| split_consistent_target(p).map(|(h, t)| (h.to_string(), t.to_string()));
        assert_eq!(split(&format!("acme/{sha}.x.bin")), Some((sha.clone(), "acme/x.bin".into())));
        assert_eq!(
            split(&format!("{sha}.approvals/g/acme/x.bin")),
            Some((sha.clone(), "approvals/g/acme/x.bin".into()))
        );
        assert_eq!(split("acme/x.bin"), None);
        assert_eq!(split(&format!("acme/{sha}")), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), 0..10);
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), 90..100);
        assert_eq!(parse_range("bytes=-5", 100).unwrap(), 95..100);
        assert_eq!(parse_range("bytes=0-999", 100).unwrap(), 0..100);
        for bad in ["bytes=100-", "bytes=5-1", "bytes=0-1,3-4", "items=0-1", "bytes=-"] {
            assert!(parse_range(bad, 100).is_err(), "{bad}");
        }
    }
}
