//! API errors: a status and a message safe to show the caller. The one place a domain error
//! becomes an HTTP answer; internal details are logged with their source chain, never returned.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ringfence_proto::api::ErrorBody;

use crate::domain;
use crate::domain::error::{Cause, chain};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
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
    Internal(#[source] Cause),
}

impl ApiError {
    pub fn internal(cause: impl Into<Cause>) -> Self {
        ApiError::Internal(cause.into())
    }

    pub(crate) fn status(&self) -> StatusCode {
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

impl From<domain::Error> for ApiError {
    fn from(e: domain::Error) -> Self {
        match e {
            domain::Error::Invalid(message) => ApiError::BadRequest(message),
            domain::Error::NotFound => ApiError::NotFound,
            domain::Error::Conflict(message) => ApiError::Conflict(message),
            domain::Error::TooLarge(limit) => ApiError::TooLarge(limit),
            domain::Error::Unauthenticated => ApiError::Unauthorized,
            domain::Error::Forbidden(message) => ApiError::Forbidden(message),
            domain::Error::Bounded { what, retry_after_secs } => ApiError::TooMany { what, retry_after_secs },
            domain::Error::Internal(cause) => ApiError::Internal(cause),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(cause = %chain(cause.as_ref()), "internal error");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_show_nothing_and_log_the_chain() {
        let io = std::io::Error::other("disk on fire");
        let err = ApiError::from(domain::Error::internal(io));
        assert_eq!(err.to_string(), "internal error");
        let ApiError::Internal(cause) = &err else { panic!("not internal: {err:?}") };
        assert!(chain(cause.as_ref()).contains("disk on fire"), "{}", chain(cause.as_ref()));
        assert_eq!(err.into_response().status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn each_domain_refusal_has_its_status() {
        let cases = [
            (domain::Error::Invalid("x".into()), StatusCode::BAD_REQUEST),
            (domain::Error::NotFound, StatusCode::NOT_FOUND),
            (domain::Error::Conflict("x".into()), StatusCode::CONFLICT),
            (domain::Error::TooLarge(1), StatusCode::PAYLOAD_TOO_LARGE),
            (domain::Error::Unauthenticated, StatusCode::UNAUTHORIZED),
            (domain::Error::Forbidden("x".into()), StatusCode::FORBIDDEN),
            (domain::Error::Bounded { what: "x", retry_after_secs: 3 }, StatusCode::TOO_MANY_REQUESTS),
        ];
        for (domain_error, status) in cases {
            assert_eq!(ApiError::from(domain_error).into_response().status(), status);
        }
    }
}
