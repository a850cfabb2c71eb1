//! The HTTP surface: mounts every area's routes, turns every rejection (bad JSON, oversized
//! body, unknown route, wrong method, panic) into problem+json, tags each request with an
//! `x-request-id`, and serves the OpenAPI spec, health and readiness.
//!
//! No handler or layer may log a request or response body or the `Authorization` header:
//! bodies carry MLS ciphertext today and may carry customer data tomorrow. Access logs hold
//! method, path template, status, latency and request id only.

pub mod extract;
pub mod health;
pub mod json;
pub mod openapi;

use std::any::Any;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderValue, Request, Response};
use axum::response::IntoResponse;
use axum::routing::get;
use sealgate_proto::ErrorCode;
use tower::ServiceBuilder;
use tower::util::MapRequestLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::AppState;
use crate::error::ApiError;

/// Longest client-supplied `x-request-id` we keep; longer or odd ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 64;
const X_REQUEST_ID: &str = "x-request-id";

pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .merge(crate::directory::routes::routes())
        .merge(crate::ds::routes::routes())
        .merge(crate::blobs::routes::routes())
        .merge(crate::policy::routes::routes())
        .merge(crate::capabilities::routes::routes())
        .merge(crate::links::routes::routes())
        .merge(crate::delivery::routes::routes())
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::serve_openapi));
    with_surface(routes, state)
}

/// The listener of a `--role worker` process: health, readiness and metrics only.
pub fn worker_router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(crate::delivery::routes::metrics));
    with_surface(routes, state)
}

/// Wrap `routes` in everything every route gets: problem+json fallbacks, request ids, access
/// logs, panic catching, the body limit.
fn with_surface(routes: Router<AppState>, state: AppState) -> Router {
    let body_limit = state.config().max_body_bytes;
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(MapRequestLayer::new(drop_unusable_request_id))
                .layer(SetRequestIdLayer::x_request_id(MakeId))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(make_span)
                        .on_request(())
                        .on_response(on_response),
                )
                .layer(CatchPanicLayer::custom(panic_response))
                .layer(DefaultBodyLimit::max(body_limit))
                .layer(axum::middleware::from_fn(run_to_completion)),
        )
        .with_state(state)
}

/// Every handler runs to completion, even when its client goes away. Hyper drops a request's
/// future when the connection closes; a future dropped in the middle of a store transaction
/// can leave a pooled SQLite connection inside `BEGIN IMMEDIATE`, holding the write lock until
/// every other writer times out with "database is locked". Spawning the handler makes each
/// request's work independent of the connection's fate (a long-poll whose client left simply
/// runs out its wait).
async fn run_to_completion(request: Request<Body>, next: axum::middleware::Next) -> Response<Body> {
    use tracing::Instrument;
    match tokio::spawn(next.run(request).instrument(Span::current())).await {
        Ok(response) => response,
        Err(e) if e.is_panic() => panic_response(e.into_panic()),
        Err(_) => {
            ApiError::new(ErrorCode::Unavailable, "the server is shutting down").into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    // The payload may quote request data; log only that it happened.
    tracing::error!("handler panicked");
    ApiError::new(ErrorCode::Internal, "internal error").into_response()
}

/// Request ids: keep a short printable one from the client, else make one.
#[derive(Clone, Copy)]
struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&crate::auth::random_id("rq"))
            .ok()
            .map(RequestId::new)
    }
}

/// A client may pass its own `x-request-id` for correlation; one that is too long or has odd
/// characters is dropped (and a fresh one made) so logs stay clean.
fn drop_unusable_request_id(mut request: Request<Body>) -> Request<Body> {
    if request
        .headers()
        .get(X_REQUEST_ID)
        .is_some_and(|v| !usable_request_id(v))
    {
        request.headers_mut().remove(X_REQUEST_ID);
    }
    request
}

fn usable_request_id(value: &HeaderValue) -> bool {
    value.len() <= MAX_REQUEST_ID_LEN
        && value
            .as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

fn make_span<B>(request: &Request<B>) -> Span {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("<unmatched>", MatchedPath::as_str);
    let request_id = request
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "http",
        method = %request.method(),
        path = %path,
        request_id = %request_id,
        // Filled in by handlers that create a message, so the one access-log line per
        // request ties the request (= correlation) id to the message id.
        message_id = tracing::field::Empty,
    )
}

fn on_response<B>(response: &Response<B>, latency: Duration, _span: &Span) {
    tracing::info!(
        status = response.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_becomes_a_500_problem() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = crate::Gateway::open(crate::Config::for_data_dir(dir.path()))
            .await
            .unwrap();
        async fn boom() -> &'static str {
            panic!("boom with secret")
        }
        let app = with_surface(
            Router::new().route("/boom", get(boom)),
            gateway.state().clone(),
        );
        let resp = app
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
        assert_eq!(
            resp.headers()["content-type"],
            sealgate_proto::problem::PROBLEM_JSON
        );
        assert!(resp.headers().contains_key("x-request-id"));
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let problem: sealgate_proto::Problem = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem.code, "internal");
        assert!(!String::from_utf8_lossy(&body).contains("secret"));
    }
}
