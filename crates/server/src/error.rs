//! The API error type: every failure a handler returns becomes an RFC 7807 problem+json body
//! with a stable `code` (see `sealgate_proto::ErrorCode`).
//!
//! Internal failures are logged with their cause and answered with a generic `internal`
//! problem; the cause never reaches the client, and no error text may contain message content.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sealgate_proto::{ErrorCode, Problem, problem::PROBLEM_JSON};

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    /// Boxed: handlers return `Result<T, ApiError>` everywhere, and a small `Err` keeps
    /// every `Result` small.
    pub problem: Box<Problem>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// A caller or peer error with a human detail.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            problem: Box::new(Problem::new(code, Some(detail.into()))),
        }
    }

    /// `409 stale_epoch` carrying the group's current epoch.
    pub fn stale_epoch(current: u64, detail: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorCode::StaleEpoch, detail);
        e.problem.current_epoch = Some(current);
        e
    }

    /// `429 rate_limited` with a Retry-After in seconds.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut e = Self::new(ErrorCode::RateLimited, "too many requests; slow down");
        e.problem.retry_after = Some(retry_after_secs.max(1));
        e
    }

    /// A server-side failure: logged here with its cause, answered without it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self {
            problem: Box::new(Problem::new(ErrorCode::Internal, None)),
        }
    }

    pub fn code(&self) -> Option<ErrorCode> {
        self.problem.error_code()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.problem.fmt(f)
    }
}

impl std::error::Error for ApiError {}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal(format!("store: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.problem).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.problem.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}
