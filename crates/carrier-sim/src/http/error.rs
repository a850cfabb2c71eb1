//! Google-style error answers: `{"error":{"code":N,"status":"NAME","message":"..."}}`.
//!
//! It exists because the gateway's transports classify carrier failures by status code and
//! `status` name exactly as they would against the real RBM API, so the simulator must answer
//! in that shape everywhere (aggregator and control API alike). It must never echo message
//! text or credentials back in `message`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error answer. Build it with the constructors; each names the Google status it carries.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    name: &'static str,
    message: String,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, name: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            name,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// 401: missing or wrong bearer token (caller).
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request is missing a valid agent bearer token.",
        )
    }

    /// 400 INVALID_ARGUMENT: malformed request, unreachable SMS number, or an injected 4xx.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
    }

    /// 400 FAILED_PRECONDITION: an E2EE payload to a number without the E2EE flag.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "FAILED_PRECONDITION", message)
    }

    /// 404 NOT_FOUND: the number is not RCS capable (or not reachable), or no such route.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    /// 429 RESOURCE_EXHAUSTED with `Retry-After`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded; retry later.",
        );
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    /// 500 INTERNAL or 503 UNAVAILABLE (injected).
    pub fn server_error(code: u16) -> Self {
        if code == 503 {
            Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "The service is currently unavailable.",
            )
        } else {
            Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "Internal error encountered.",
            )
        }
    }

    /// 504 DEADLINE_EXCEEDED: an injected timeout, or flush waiting too long.
    pub fn deadline_exceeded() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "DEADLINE_EXCEEDED",
            "Deadline exceeded.",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {
                "code": self.status.as_u16(),
                "status": self.name,
                "message": self.message,
            }
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
