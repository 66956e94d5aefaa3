//! API errors: a status and a message safe to show the caller. Internal details are logged,
//! never returned.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ringfence_proto::api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("this token lacks the {0} scope")]
    Forbidden(&'static str),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
    #[error("range not satisfiable")]
    RangeNotSatisfiable(u64),
    #[error("busy; retry later")]
    Busy { retry_after_secs: u64 },
    /// A bound on what the caller may make the server hold was reached.
    #[error("{what}; retry later")]
    TooMany { what: &'static str, retry_after_secs: u64 },
    #[error("the request body did not arrive in time")]
    Timeout,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<ringfence_store::StoreError> for ApiError {
    fn from(e: ringfence_store::StoreError) -> Self {
        match e {
            ringfence_store::StoreError::Conflict(what) => ApiError::Conflict(what),
            ringfence_store::StoreError::NotFound => ApiError::NotFound,
            ringfence_store::StoreError::TooLarge { limit } => ApiError::TooLarge(limit),
            ringfence_store::StoreError::Refused(why) => ApiError::BadRequest(why),
            ringfence_store::StoreError::HashMismatch { expected, actual } => {
                ApiError::BadRequest(format!("content hash is {actual}, expected {expected}"))
            }
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let status = self.status();
        let mut response = (status, axum::Json(ErrorBody { error: self.to_string() })).into_response();
        if let ApiError::Unauthorized = self {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        if let ApiError::Busy { retry_after_secs } | ApiError::TooMany { retry_after_secs, .. } = self {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(retry_after_secs));
        }
        if let ApiError::RangeNotSatisfiable(len) = self
            && let Ok(v) = axum::http::HeaderValue::from_str(&format!("bytes */{len}"))
        {
            response.headers_mut().insert(axum::http::header::CONTENT_RANGE, v);
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
