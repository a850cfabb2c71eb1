//! `GET /v1/capabilities/{recipient}`: thin handler over [`super::Capabilities`].

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use sealgate_proto::Problem;
use sealgate_proto::policy::CapabilitiesView;

use crate::AppState;
use crate::api::extract::Path;
use crate::api::json::Json;
use crate::auth::TenantOrDevice;
use crate::error::ApiResult;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/capabilities/{recipient}", get(get_capabilities))
}

/// What a recipient can receive: E2EE devices in the key directory, RCS (and the carrier's
/// E2EE flag) from the aggregator, SMS. Cached for `capabilities.ttl_secs`; refreshed when
/// the recipient registers or revokes a device.
#[utoipa::path(
    get, path = "/v1/capabilities/{recipient}", tag = "policy",
    params(("recipient" = String, Path, description = "E.164 phone number or user id")),
    security(("api_key" = []), ("device_token" = [])),
    responses(
        (status = 200, description = "Capabilities", body = CapabilitiesView),
        (status = 422, description = "`invalid_field`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_capabilities(
    State(state): State<AppState>,
    auth: TenantOrDevice,
    Path(recipient): Path<String>,
) -> ApiResult<Json<CapabilitiesView>> {
    let view = state
        .capabilities()
        .lookup(&state, auth.tenant_id(), &recipient)
        .await?;
    Ok(Json(view))
}
