//! The JSON body extractor every handler uses: axum's `Json` with its rejections turned into
//! problem+json (`400 malformed_body`, `415 unsupported_media_type`, `413 payload_too_large`,
//! `422 invalid_field` for bad base64), and a response type that serialises the same way.
//!
//! **Use `crate::api::json::Json` (not `axum::Json`) in every handler**, so a client never sees
//! a plain-text error. The body limit itself is `DefaultBodyLimit` set in `api::router` from
//! `config.max_body_bytes`. Rejection details never echo values from the body (they may be
//! secrets or message bytes); only field paths and positions.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sealgate_proto::ErrorCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body or response. Rejections are problem+json.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Map an axum JSON rejection to our problem codes.
pub fn json_rejection(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "Content-Type must be application/json",
        ),
        JsonRejection::JsonDataError(_) => {
            let detail = sanitize(&rejection.body_text());
            if detail.contains("invalid base64") {
                ApiError::new(ErrorCode::InvalidField, detail)
            } else {
                ApiError::new(ErrorCode::MalformedBody, detail)
            }
        }
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::new(ErrorCode::MalformedBody, sanitize(&rejection.body_text()))
        }
        _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            ErrorCode::PayloadTooLarge,
            "request body exceeds the configured limit",
        ),
        _ => ApiError::new(ErrorCode::MalformedBody, "could not read the request body"),
    }
}

/// Drop quoted values (serde quotes the offending string in "invalid type/value" messages)
/// and cap the length, so an error never reflects body content.
pub(crate) fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(200));
    let mut in_quotes = false;
    for c in text.chars() {
        if c == '"' {
            if !in_quotes {
                out.push_str("\"…\"");
            }
            in_quotes = !in_quotes;
        } else if !in_quotes {
            out.push(c);
        }
        if out.len() >= 200 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_drops_quoted_values() {
        let s = sanitize(r#"user: invalid type: string "s3cret", expected u64 at line 1"#);
        assert!(!s.contains("s3cret"));
        assert!(s.contains("expected u64"));
        assert!(sanitize(&"x".repeat(1000)).len() <= 200);
    }
}
