//! Path and query extractors whose rejections are problem+json (`422 invalid_field`), for
//! handlers that take `{params}` or `?query` values. Use these instead of axum's.
//!
//! Like `api::json`, rejection details never echo the offending value.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sealgate_proto::ErrorCode;
use serde::de::DeserializeOwned;

use super::json::sanitize;
use crate::error::ApiError;

/// Path parameters (`/v1/users/{user}`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(ApiError::new(
                ErrorCode::InvalidField,
                format!("path: {}", sanitize(&rejection.body_text())),
            )),
        }
    }
}

/// Query parameters (`?after=3&wait=10`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(ApiError::new(
                ErrorCode::InvalidField,
                format!("query: {}", sanitize(&rejection.body_text())),
            )),
        }
    }
}
