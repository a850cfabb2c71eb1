//! The OpenAPI 3.1 description of the whole gateway, generated from the handlers'
//! `#[utoipa::path]` annotations and the `sealgate_proto` schemas, served at `/openapi.json`.
//!
//! Every route must be listed in [`ApiDoc`]'s `paths(...)`; the integration tests check that
//! each routed path appears in the spec. Security scheme names used in annotations:
//! `operator_token`, `api_key`, `device_token` (all HTTP bearer). The spec must never embed
//! example secrets that look real.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use sealgate_proto::Problem;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::health;
use crate::blobs::routes as blobs;
use crate::capabilities::routes as caps;
use crate::delivery::routes as send;
use crate::directory::routes as dir;
use crate::ds::routes as ds;
use crate::links::routes as links;
use crate::policy::routes as policy;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sealgate gateway API",
        description = "End-to-end encrypted business messaging over MLS (RFC 9420): tenant \
            administration, key directory, delivery service, business send. Errors are RFC 7807 \
            application/problem+json with a stable `code`. Handshake messages must be \
            PublicMessage; application messages PrivateMessage.",
    ),
    paths(
        health::healthz,
        health::readyz,
        dir::create_tenant,
        dir::list_tenants,
        dir::admin_create_enrollment,
        dir::create_enrollment,
        dir::list_users,
        dir::get_user,
        dir::register_device,
        dir::device_me,
        dir::revoke_device,
        dir::publish_key_packages,
        dir::key_package_stock,
        dir::claim_key_packages,
        ds::create_group,
        ds::get_group,
        ds::get_group_info,
        ds::submit_commit,
        ds::send_message,
        ds::fetch_mailbox,
        ds::ack_mailbox,
        blobs::create_upload,
        blobs::append_upload,
        blobs::upload_offset,
        blobs::download_url,
        blobs::download_blob,
        send::send_message,
        send::send_batch,
        send::get_message,
        send::put_callback,
        send::carrier_webhook,
        send::list_dead_letters,
        send::replay_dead_letter,
        send::put_push_token,
        send::metrics,
        policy::get_policy,
        policy::put_policy,
        policy::policy_history,
        policy::create_hold,
        policy::list_holds,
        policy::get_hold,
        policy::finish_hold,
        caps::get_capabilities,
        links::create_link,
        links::viewer_page,
        links::viewer_js,
        links::viewer_css,
        links::request_otp,
        links::open_link,
    ),
    components(schemas(Problem)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "admin", description = "Operator administration (operator token)"),
        (name = "directory", description = "Tenant users and enrollment (API key)"),
        (name = "devices", description = "Device registration and revocation"),
        (name = "keypackages", description = "KeyPackage directory: publish, stock, claim"),
        (name = "groups", description = "MLS delivery service: groups, commits, messages"),
        (name = "mailbox", description = "Device mailboxes"),
        (name = "attachments", description = "Encrypted attachment blobs: resumable upload, signed download"),
        (name = "messages", description = "Business send: messages, status, callbacks (API key)"),
        (name = "webhooks", description = "Inbound receipts from the aggregator (HMAC-signed)"),
        (name = "health", description = "Liveness, readiness, metrics"),
        (name = "policy", description = "Send policy per message class, its audit trail, capabilities, held messages (API key)"),
        (name = "links", description = "Secure links: ciphertext upload (API key); viewer, one-time code and single open (recipient)"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, format, description) in [
            (
                "operator_token",
                "sgop_…",
                "The operator token from the data folder's `operator-token` file.",
            ),
            ("api_key", "sgk_…", "A tenant API key."),
            (
                "device_token",
                "sgd_…",
                "A device token from `POST /v1/devices`.",
            ),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format(format)
                        .description(Some(description))
                        .build(),
                ),
            );
        }
    }
}

/// The gateway's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

static SPEC_JSON: LazyLock<String> = LazyLock::new(|| {
    openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"spec generation failed: {e}\"}}"))
});

/// `GET /openapi.json`.
pub async fn serve_openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        SPEC_JSON.as_str(),
    )
}
