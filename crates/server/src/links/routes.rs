//! HTTP routes of secure links: the sender's upload (`POST /v1/links`, API key) and the
//! recipient's side (`/l/{id}`: the viewer page and its assets, `otp`, `open`), which needs
//! no account — the one-time code sent to the recipient's number is the second factor.
//!
//! The viewer is served from this binary (`include_str!`) under a strict Content Security
//! Policy: nothing loads from elsewhere, and the page reads the key from the URL fragment,
//! which never reaches the server.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sealgate_proto::identity::valid_e164;
use sealgate_proto::policy::{
    CreateLinkRequest, CreateLinkResponse, LINK_FORMAT_V1, OpenLinkRequest, OpenLinkResponse,
    OtpSent,
};
use sealgate_proto::send::{Channel, MessageClass};
use sealgate_proto::{ErrorCode, Problem};

use super::{LinkState, NewLink, OpenOutcome, Proof, code_hash, mask_phone, new_code};
use crate::AppState;
use crate::api::extract::Path;
use crate::api::json::Json;
use crate::auth::{TenantAuth, random_id, time_ordered_id};
use crate::delivery::store::{AcceptOutcome, NewMessage, PayloadKind};
use crate::error::{ApiError, ApiResult};
use crate::store::now_millis;

const VIEWER_HTML: &str = include_str!("viewer.html");
const VIEWER_JS: &str = include_str!("viewer.js");
const VIEWER_CSS: &str = include_str!("viewer.css");
/// Nothing from anywhere else; scripts and styles only from this gateway; no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
/// Smallest ciphertext: version byte, nonce, tag.
const MIN_CIPHERTEXT: usize = 1 + 12 + 16;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/links", post(create_link))
        .route("/l/assets/viewer.js", get(viewer_js))
        .route("/l/assets/viewer.css", get(viewer_css))
        .route("/l/{link_id}", get(viewer_page))
        .route("/l/{link_id}/otp", post(request_otp))
        .route("/l/{link_id}/open", post(open_link))
}

/// Upload a secure link's ciphertext; the answer names the path to send (append
/// `#k=<base64url key>`).
#[utoipa::path(
    post, path = "/v1/links", tag = "links",
    request_body = CreateLinkRequest,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Stored", body = CreateLinkResponse),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_field`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_link(
    State(state): State<AppState>,
    auth: TenantAuth,
    Json(req): Json<CreateLinkRequest>,
) -> ApiResult<(StatusCode, Json<CreateLinkResponse>)> {
    let links = state.links();
    let config = links.config();
    if !valid_e164(&req.recipient) {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "recipient: must be an E.164 phone number (the one-time code goes there)",
        ));
    }
    if req.ciphertext.len() > config.max_bytes {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("ciphertext: at most {} bytes", config.max_bytes),
        ));
    }
    if req.ciphertext.len() < MIN_CIPHERTEXT || req.ciphertext[0] != LINK_FORMAT_V1 {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "ciphertext: must be 0x01 || nonce(12) || AES-256-GCM ciphertext and tag",
        ));
    }
    let ttl = req.ttl_secs.unwrap_or(config.ttl_secs);
    if !(60..=config.max_ttl_secs).contains(&ttl) {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("ttl_secs: must be between 60 and {}", config.max_ttl_secs),
        ));
    }
    let now = now_millis();
    let link = NewLink {
        link_id: random_id("lk"),
        tenant_id: auth.tenant_id,
        recipient: req.recipient,
        ciphertext: req.ciphertext,
        created_at: now,
        expires_at: now.saturating_add(i64::try_from(ttl * 1000).unwrap_or(i64::MAX)),
    };
    links.store().create_link(&link).await?;
    let path = format!("/l/{}", link.link_id);
    Ok((
        StatusCode::CREATED,
        Json(CreateLinkResponse {
            url: config
                .public_base_url
                .as_ref()
                .map(|b| format!("{}{path}", b.trim_end_matches('/'))),
            link_id: link.link_id,
            path,
            expires_at: link.expires_at,
        }),
    ))
}

fn with_page_headers(mut resp: Response, content_type: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The viewer page. Its status says where the link stands (200 active, 404 unknown, 410
/// expired, used or locked) and the page explains it.
#[utoipa::path(
    get, path = "/l/{link_id}", tag = "links",
    params(("link_id" = String, Path, description = "From the link")),
    responses(
        (status = 200, description = "The viewer (HTML)", body = String, content_type = "text/html"),
        (status = 404, description = "Unknown link (HTML)", body = String, content_type = "text/html"),
        (status = 410, description = "Expired, used or locked link (HTML)", body = String, content_type = "text/html"),
    )
)]
pub async fn viewer_page(
    State(state): State<AppState>,
    Path(link_id): Path<String>,
) -> ApiResult<Response> {
    let meta = if valid_link_id(&link_id) {
        state.links().store().link(&link_id).await?
    } else {
        None
    };
    let (status, page_state) = match meta.as_ref().map(|m| m.state(now_millis())) {
        None => (StatusCode::NOT_FOUND, "unknown"),
        Some(LinkState::Active) => (StatusCode::OK, "active"),
        Some(s) => (StatusCode::GONE, s.as_str()),
    };
    // Only fixed words and a checked id go into the page.
    let shown_id = if valid_link_id(&link_id) {
        link_id.as_str()
    } else {
        ""
    };
    // The tenant's sign-in, if any: validated URLs and client id, escaped all the same.
    let oidc = match &meta {
        Some(m) if page_state == "active" => state
            .policy()
            .view(&m.tenant_id)
            .await?
            .link_oidc()
            .cloned(),
        _ => None,
    };
    let (authorize, client, required) = match &oidc {
        Some(o) => (
            format!("{}/authorize", o.issuer.trim_end_matches('/')),
            o.audience.clone(),
            if o.required { "true" } else { "false" },
        ),
        None => (String::new(), String::new(), "false"),
    };
    let html = VIEWER_HTML
        .replace("__STATE__", page_state)
        .replace("__LINK__", shown_id)
        .replace("__OIDC_AUTHORIZE__", &attr_escape(&authorize))
        .replace("__OIDC_CLIENT__", &attr_escape(&client))
        .replace("__OIDC_REQUIRED__", required);
    Ok(with_page_headers(
        (status, html).into_response(),
        "text/html; charset=utf-8",
    ))
}

/// Escape for a double-quoted HTML attribute.
fn attr_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

fn valid_link_id(id: &str) -> bool {
    id.len() == 34 && id.starts_with("lk") && id[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The viewer's script.
#[utoipa::path(get, path = "/l/assets/viewer.js", tag = "links",
    responses((status = 200, description = "JavaScript", body = String, content_type = "text/javascript")))]
pub async fn viewer_js() -> Response {
    with_page_headers(VIEWER_JS.into_response(), "text/javascript; charset=utf-8")
}

/// The viewer's style sheet.
#[utoipa::path(get, path = "/l/assets/viewer.css", tag = "links",
    responses((status = 200, description = "CSS", body = String, content_type = "text/css")))]
pub async fn viewer_css() -> Response {
    with_page_headers(VIEWER_CSS.into_response(), "text/css; charset=utf-8")
}

fn not_active(state: LinkState) -> ApiError {
    match state {
        LinkState::Expired => ApiError::new(
            ErrorCode::LinkExpired,
            "this link expired; its content was deleted",
        ),
        LinkState::Used => ApiError::new(
            ErrorCode::LinkUsed,
            "this link was already opened; its content was deleted",
        ),
        LinkState::Locked | LinkState::Active => ApiError::new(
            ErrorCode::TooManyAttempts,
            "too many wrong codes; this link is locked and its content was deleted",
        ),
    }
}

fn unknown_link() -> ApiError {
    ApiError::new(ErrorCode::UnknownLink, "no such link")
}

/// Send a one-time code to the link's recipient over SMS.
#[utoipa::path(
    post, path = "/l/{link_id}/otp", tag = "links",
    params(("link_id" = String, Path, description = "From the link")),
    responses(
        (status = 200, description = "Code sent", body = OtpSent),
        (status = 404, description = "`unknown_link`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`oidc_required`: the tenant allows only sign-in", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`link_expired`, `link_used`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited` (wait), `too_many_attempts`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: no SMS transport", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn request_otp(
    State(state): State<AppState>,
    Path(link_id): Path<String>,
) -> ApiResult<Json<OtpSent>> {
    let links = state.links();
    let config = links.config();
    if !valid_link_id(&link_id) {
        return Err(unknown_link());
    }
    let meta = links
        .store()
        .link(&link_id)
        .await?
        .ok_or_else(unknown_link)?;
    let now = now_millis();
    match meta.state(now) {
        LinkState::Active => {}
        other => return Err(not_active(other)),
    }
    if state
        .policy()
        .view(&meta.tenant_id)
        .await?
        .link_oidc()
        .is_some_and(|o| o.required)
    {
        return Err(ApiError::new(
            ErrorCode::OidcRequired,
            "this link opens only after signing in with your organisation",
        ));
    }
    if meta.otp_sends >= config.max_otp_sends {
        return Err(ApiError::new(
            ErrorCode::TooManyAttempts,
            "no more codes can be sent for this link",
        ));
    }
    let gap_ms = i64::try_from(config.otp_resend_secs * 1000).unwrap_or(i64::MAX);
    if let Some(sent) = meta.otp_sent_at
        && now < sent.saturating_add(gap_ms)
    {
        return Err(ApiError::rate_limited(
            u64::try_from((sent + gap_ms - now) / 1000).unwrap_or(1),
        ));
    }
    if state.config().transports.sms.is_none() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "no SMS transport is configured to send codes",
        ));
    }
    let code = new_code()?;
    let ttl_ms = i64::try_from(config.otp_ttl_secs * 1000).unwrap_or(i64::MAX);
    if !links
        .store()
        .set_otp(&link_id, &code_hash(&link_id, &code), now + ttl_ms, now)
        .await?
    {
        return Err(unknown_link());
    }
    let text = format!(
        "Your code to open the secure message: {code}. It expires in {} minutes. Never share it.",
        config.otp_ttl_secs / 60
    );
    let delivery = state.delivery();
    let message = NewMessage {
        message_id: time_ordered_id("msg_"),
        tenant_id: meta.tenant_id.clone(),
        idempotency_key: format!("link-otp:{link_id}:{}", meta.otp_sends + 1),
        request_hash: code_hash(&link_id, &format!("otp-request:{}", meta.otp_sends + 1))
            .into_bytes(),
        recipient: meta.recipient.clone(),
        class: MessageClass::Transactional,
        channel: Channel::Sms,
        kind: PayloadKind::Text,
        group_id: None,
        epoch: None,
        payload: text.into_bytes(),
        correlation_id: None,
        accepted_at: now,
        expires_at: Some(now + ttl_ms),
    };
    match delivery.acceptor().accept(message).await? {
        AcceptOutcome::Accepted { .. } | AcceptOutcome::Replayed { .. } => {}
        AcceptOutcome::KeyReused => {
            return Err(ApiError::internal("one-time code message key reused"));
        }
    }
    delivery.wake();
    Ok(Json(OtpSent {
        to: mask_phone(&meta.recipient),
        expires_in: config.otp_ttl_secs,
    }))
}

/// Exchange the one-time code — or, where the tenant configured OIDC sign-in, an ID token
/// bound to the recipient — for the ciphertext, once.
#[utoipa::path(
    post, path = "/l/{link_id}/open", tag = "links",
    params(("link_id" = String, Path, description = "From the link")),
    request_body = OpenLinkRequest,
    responses(
        (status = 200, description = "The ciphertext (now deleted on the server)", body = OpenLinkResponse),
        (status = 401, description = "`invalid_id_token`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`invalid_code`, `oidc_required`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`unknown_link`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`oidc_not_configured`", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`link_expired`, `link_used`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_field`: neither or both of `code` and `id_token`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`too_many_attempts`: locked", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn open_link(
    State(state): State<AppState>,
    Path(link_id): Path<String>,
    Json(req): Json<OpenLinkRequest>,
) -> ApiResult<Json<OpenLinkResponse>> {
    if !valid_link_id(&link_id) {
        return Err(unknown_link());
    }
    let links = state.links();
    let max_attempts = links.config().max_attempts;
    let meta = links
        .store()
        .link(&link_id)
        .await?
        .ok_or_else(unknown_link)?;
    let now = now_millis();
    match meta.state(now) {
        LinkState::Active => {}
        // Let the store wipe an expired link's ciphertext and answer.
        LinkState::Expired => {}
        other => return Err(not_active(other)),
    }
    let view = state.policy().view(&meta.tenant_id).await?;
    let oidc = view.link_oidc();
    let outcome = match (req.code, req.id_token) {
        (Some(code), None) => {
            if oidc.is_some_and(|o| o.required) && meta.state(now) == LinkState::Active {
                return Err(ApiError::new(
                    ErrorCode::OidcRequired,
                    "this link opens only after signing in with your organisation",
                ));
            }
            let code = code.trim();
            links
                .store()
                .open_link(
                    &link_id,
                    Proof::Code(&code_hash(&link_id, code)),
                    now,
                    max_attempts,
                )
                .await?
        }
        (None, Some(token)) => {
            let Some(oidc) = oidc else {
                return Err(ApiError::new(
                    ErrorCode::OidcNotConfigured,
                    "sign-in is not configured for this link; use the one-time code",
                ));
            };
            let proof = if meta.state(now) != LinkState::Active {
                // Expired: no need to ask the identity provider.
                Proof::Failed
            } else {
                match links
                    .oidc()
                    .verify(oidc, token.trim(), &meta.recipient, now.div_euclid(1000))
                    .await
                {
                    Ok(()) => Proof::Verified,
                    Err(super::oidc::TokenError::Jwks) => {
                        return Err(ApiError::new(
                            ErrorCode::Unavailable,
                            "the identity provider's keys could not be fetched; try again later",
                        ));
                    }
                    Err(e) => {
                        tracing::info!(%link_id, reason = %e, "secure link ID token refused");
                        match links
                            .store()
                            .open_link(&link_id, Proof::Failed, now, max_attempts)
                            .await?
                        {
                            OpenOutcome::WrongCode { remaining } if remaining > 0 => {
                                return Err(ApiError::new(
                                    ErrorCode::InvalidIdToken,
                                    format!("{e}; {remaining} attempt(s) left"),
                                ));
                            }
                            other => return opened(&link_id, other),
                        }
                    }
                }
            };
            links
                .store()
                .open_link(&link_id, proof, now, max_attempts)
                .await?
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "give either `code` or `id_token`",
            ));
        }
    };
    opened(&link_id, outcome)
}

fn opened(link_id: &str, outcome: OpenOutcome) -> ApiResult<Json<OpenLinkResponse>> {
    match outcome {
        OpenOutcome::Opened(ciphertext) => {
            tracing::info!(%link_id, "secure link opened");
            Ok(Json(OpenLinkResponse { ciphertext }))
        }
        OpenOutcome::Unknown => Err(unknown_link()),
        OpenOutcome::NotActive(s) => Err(not_active(s)),
        OpenOutcome::NoCode => Err(ApiError::new(
            ErrorCode::InvalidCode,
            "no valid code: request a new one",
        )),
        OpenOutcome::WrongCode { remaining: 0 } => Err(not_active(LinkState::Locked)),
        OpenOutcome::WrongCode { remaining } => Err(ApiError::new(
            ErrorCode::InvalidCode,
            format!("wrong code; {remaining} attempt(s) left"),
        )),
    }
}
