//! The HTTP surface: mounts every area's routes, turns every rejection (bad JSON, oversized
//! body, unknown route, wrong method, panic) into problem+json, and serves the OpenAPI spec,
//! health and readiness.
//!
//! No handler may log a request or response body: bodies carry MLS ciphertext today and may
//! carry customer data tomorrow.

use axum::Router;

use crate::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::directory::routes::routes())
        .merge(crate::ds::routes::routes())
        .with_state(state)
}
