//! The HTTP surface: the aggregator endpoints (behind the agent token) and the control API.
//!
//! It exists to keep routing in one place so the API in the README can be checked against a
//! single table. It must never put a control route behind the aggregator's authentication or
//! an aggregator route outside it.

pub mod aggregator;
pub mod control;
pub mod error;

use axum::Router;
use axum::middleware;
use axum::routing::{get, post, put};

use crate::state::Sim;
use error::ApiError;

/// Builds the simulator's router over `sim`.
pub fn router(sim: Sim) -> Router {
    let aggregator = Router::new()
        .route(
            "/v1/phones/{msisdn}/agentMessages",
            post(aggregator::rcs_send),
        )
        .route(
            "/v1/phones/{msisdn}/capabilities",
            get(aggregator::capabilities),
        )
        .route("/sms/v1/messages", post(aggregator::sms_send))
        .route("/push/v1/send", post(aggregator::push_send))
        .route_layer(middleware::from_fn_with_state(
            sim.clone(),
            aggregator::require_agent_token,
        ));
    let control = Router::new()
        .route(
            "/control/numbers/{msisdn}",
            get(control::get_number)
                .put(control::put_number)
                .delete(control::delete_number),
        )
        .route(
            "/control/prefixes/{prefix}",
            put(control::put_prefix).delete(control::delete_prefix),
        )
        .route("/control/default", put(control::put_default))
        .route("/control/rules", get(control::get_rules))
        .route(
            "/control/faults",
            get(control::get_faults).put(control::put_faults),
        )
        .route("/control/inbox/{msisdn}", get(control::get_inbox))
        .route("/control/push/{token}", get(control::get_push))
        .route("/control/stats", get(control::get_stats))
        .route("/control/reset", post(control::reset))
        .route("/control/receipts/flush", post(control::flush));
    Router::new()
        .merge(aggregator)
        .merge(control)
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { ApiError::not_found("No such route.") })
        .with_state(sim)
}
