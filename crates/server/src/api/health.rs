//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the store answers).
//! Both are unauthenticated and must never reveal anything beyond up/down.

use axum::extract::State;
use sealgate_proto::api::Health;
use sealgate_proto::{ErrorCode, Problem};

use super::json::Json;
use crate::AppState;
use crate::error::{ApiError, ApiResult};

/// The process is up.
#[utoipa::path(
    get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// The process is up and its store answers.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    match state.store().ping().await {
        Ok(()) => Ok(Json(Health {
            status: "ready".to_owned(),
        })),
        Err(e) => {
            tracing::warn!(error = %e, "store not reachable");
            Err(ApiError::new(ErrorCode::Unavailable, "store not reachable"))
        }
    }
}
