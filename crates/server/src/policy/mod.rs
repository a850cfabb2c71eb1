//! Per-tenant send policy: which routes each message class may take (E2EE first, then an
//! ordered fallback chain), stored versioned with an audit trail, and enforced on every
//! `POST /v1/messages` on what the gateway can see — the *kind* of submission (MLS, RCS E2EE
//! payload, secure-link notification, redacted text, plain RCS/SMS text) — never its content.
//!
//! It exists so a downgrade is a tenant decision, not an SDK bug: a client that tries plain
//! SMS for a `sensitive` message is refused with `403 policy_forbids_route`, and every route
//! taken is counted in `sealgate_route_total{route,reason,class}`. It must never read, log or
//! label a metric with message text, a link's URL, or a phone number.

#[cfg(test)]
pub(crate) mod conformance;
pub mod postgres;
pub mod routes;
pub mod sqlite;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use axum::http::HeaderMap;
use prometheus::{IntCounterVec, Opts, Registry};
use sealgate_proto::ErrorCode;
use sealgate_proto::policy::{
    FALLBACK_REASON_HEADER, FallbackReason, PolicyRules, PolicyView, Route, Step,
};
use sealgate_proto::send::{MessageBody, MessageClass, SendRequest, TextChannel};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
pub use store::{HoldRecord, PolicyStore, StoredPolicy};

/// How long a process trusts its cached copy of a tenant's policy. Another process's change
/// is seen after at most this long; this process's own changes at once.
pub const CACHE_TTL: Duration = Duration::from_secs(2);

/// Hex SHA-256 of a canonical policy document.
pub fn digest_of(document: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, document.as_bytes()))
}

/// Canonical JSON of a policy: its classes (sorted classes, fixed step shapes) alone — as
/// before secure-link settings existed, so old digests stay valid — or, when the policy has a
/// `secure_link` section, `{"classes": …, "secure_link": …}`.
pub fn canonical(rules: &PolicyRules) -> String {
    match &rules.secure_link {
        None => serde_json::to_string(&rules.classes).unwrap_or_default(),
        Some(sl) => serde_json::to_string(&serde_json::json!({
            "classes": rules.classes,
            "secure_link": sl,
        }))
        .unwrap_or_default(),
    }
}

/// Digest of the built-in default (the "previous digest" of a tenant's first change).
pub fn default_digest() -> String {
    digest_of(&canonical(&PolicyRules::default_rules()))
}

/// Parse a policy document: JSON, or TOML when `toml` is set. `Err` lists every problem.
pub fn parse_document(bytes: &[u8], toml: bool) -> Result<PolicyRules, Vec<String>> {
    let text = std::str::from_utf8(bytes).map_err(|_| vec!["policy: not UTF-8 text".to_owned()])?;
    let value: serde_json::Value = if toml {
        let t: toml::Value = toml::from_str(text)
            .map_err(|e| vec![format!("policy: invalid TOML: {}", e.message())])?;
        serde_json::to_value(t).map_err(|e| vec![format!("policy: {e}")])?
    } else {
        serde_json::from_str(text).map_err(|e| {
            vec![format!(
                "policy: invalid JSON at line {} column {}",
                e.line(),
                e.column()
            )]
        })?
    };
    PolicyRules::from_value(&value)
}

/// The policy area's state: store, a short cache, the route metrics. Cheap to clone.
#[derive(Clone)]
pub struct Policies {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn PolicyStore>,
    cache: Mutex<HashMap<String, (PolicyView, Instant)>>,
    /// `sealgate_route_total{route,reason,class}`: accepted submissions per route.
    routes: IntCounterVec,
    /// `sealgate_route_refused_total{route,class}`: submissions the policy refused.
    refused: IntCounterVec,
}

/// What the enforcement hook decided for one submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteDecision {
    pub route: Route,
    pub reason: FallbackReason,
    pub class: MessageClass,
}

impl Policies {
    /// Build the area and register its series in `registry` (the gateway's `/metrics`).
    pub fn new(
        store: Arc<dyn PolicyStore>,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let routes = IntCounterVec::new(
            Opts::new(
                "sealgate_route_total",
                "Accepted sends per route (e2ee or a fallback), fallback reason and class.",
            ),
            &["route", "reason", "class"],
        )?;
        registry.register(Box::new(routes.clone()))?;
        let refused = IntCounterVec::new(
            Opts::new(
                "sealgate_route_refused_total",
                "Submissions refused because the tenant policy forbids the route.",
            ),
            &["route", "class"],
        )?;
        registry.register(Box::new(refused.clone()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                cache: Mutex::default(),
                routes,
                refused,
            }),
        })
    }

    pub fn store(&self) -> &dyn PolicyStore {
        self.inner.store.as_ref()
    }

    /// The tenant's effective policy (the default when none is set).
    pub async fn view(&self, tenant_id: &str) -> ApiResult<PolicyView> {
        if let Some((view, at)) = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant_id)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(view.clone());
        }
        let view = match self.inner.store.policy(tenant_id).await? {
            Some(stored) => view_of(&stored)?,
            None => {
                let rules = PolicyRules::default_rules();
                PolicyView {
                    version: 0,
                    source: "default".into(),
                    digest: digest_of(&canonical(&rules)),
                    updated_at: None,
                    classes: rules.classes,
                    secure_link: None,
                }
            }
        };
        self.remember(tenant_id, &view);
        Ok(view)
    }

    fn remember(&self, tenant_id: &str, view: &PolicyView) {
        let mut cache = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(tenant_id.to_owned(), (view.clone(), Instant::now()));
    }

    /// Store `rules` as the tenant's next policy version, audited under `actor`.
    pub async fn set(
        &self,
        tenant_id: &str,
        rules: &PolicyRules,
        actor: &str,
    ) -> ApiResult<PolicyView> {
        let document = canonical(rules);
        let stored = self
            .inner
            .store
            .set_policy(
                tenant_id,
                &document,
                &digest_of(&document),
                actor,
                crate::store::now_millis(),
            )
            .await?;
        let view = view_of(&stored)?;
        self.remember(tenant_id, &view);
        tracing::info!(%tenant_id, version = view.version, %actor, "policy changed");
        Ok(view)
    }

    /// Count an accepted submission.
    pub fn record(&self, d: &RouteDecision) {
        self.inner
            .routes
            .with_label_values(&[d.route.as_str(), d.reason.as_str(), d.class.as_str()])
            .inc();
    }

    fn refuse(&self, route: Route, class: MessageClass) {
        self.inner
            .refused
            .with_label_values(&[route.as_str(), class.as_str()])
            .inc();
    }

    /// Check a route (a hold, a send) against the tenant's chain for `class`.
    pub async fn check(&self, tenant_id: &str, class: MessageClass, step: &Step) -> ApiResult<()> {
        let rules = self.view(tenant_id).await?.rules();
        let allowed = match step {
            // A hold is allowed up to the TTL its step names.
            Step::QueueUntilE2ee { ttl_secs } => rules
                .chain(class)
                .iter()
                .any(|s| matches!(s, Step::QueueUntilE2ee { ttl_secs: max } if ttl_secs <= max)),
            _ => rules.allows(class, step),
        };
        if allowed {
            return Ok(());
        }
        self.refuse(step.route(), class);
        Err(ApiError::new(
            ErrorCode::PolicyForbidsRoute,
            format!(
                "the tenant's policy does not allow `{}` for {} messages (see GET /v1/policy)",
                step_label(step),
                class.as_str()
            ),
        ))
    }
}

fn step_label(step: &Step) -> String {
    match step {
        Step::SecureLink { over } => format!("secure_link over {}", channel_str(*over)),
        Step::QueueUntilE2ee { ttl_secs } => format!("queue_until_e2ee for {ttl_secs} s"),
        other => other.route().as_str().to_owned(),
    }
}

fn channel_str(c: TextChannel) -> &'static str {
    match c {
        TextChannel::Rcs => "rcs",
        TextChannel::Sms => "sms",
    }
}

fn view_of(stored: &StoredPolicy) -> ApiResult<PolicyView> {
    let bad =
        |e: serde_json::Error| ApiError::internal(format!("stored policy does not parse: {e}"));
    let mut doc: serde_json::Value = serde_json::from_str(&stored.document).map_err(bad)?;
    // Class names never include `classes`, so its presence marks the wrapped form.
    let (classes, secure_link) = match doc.get_mut("classes").map(serde_json::Value::take) {
        Some(classes) => (
            serde_json::from_value(classes).map_err(bad)?,
            match doc.get_mut("secure_link").map(serde_json::Value::take) {
                Some(sl) => Some(serde_json::from_value(sl).map_err(bad)?),
                None => None,
            },
        ),
        None => (serde_json::from_value(doc).map_err(bad)?, None),
    };
    Ok(PolicyView {
        version: stored.version,
        source: "tenant".into(),
        digest: stored.digest.clone(),
        updated_at: Some(stored.updated_at),
        classes,
        secure_link,
    })
}

/// The step a submission's body corresponds to; `None` when the body is not exactly one kind
/// (the accept path reports that).
pub fn submission_step(body: &MessageBody) -> Option<Step> {
    let kinds = [
        body.mls.is_some() || body.rcs_payload.is_some(),
        body.text.is_some(),
        body.secure_link.is_some(),
        body.redacted.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1
        || (body.mls.is_some() && body.rcs_payload.is_some())
    {
        return None;
    }
    Some(if body.mls.is_some() || body.rcs_payload.is_some() {
        Step::E2ee
    } else if let Some(link) = &body.secure_link {
        Step::SecureLink { over: link.channel }
    } else if body.redacted.is_some() {
        Step::RedactedText
    } else if body.channel == Some(TextChannel::Rcs) {
        Step::PlainRcs
    } else {
        Step::PlainSms
    })
}

/// The enforcement hook of `POST /v1/messages`: refuse a submission kind the tenant's policy
/// forbids for the class, check a secure-link notification against its link, and say which
/// route and fallback reason to count once the message is accepted.
pub async fn enforce(
    state: &AppState,
    tenant_id: &str,
    req: &SendRequest,
    headers: &HeaderMap,
) -> ApiResult<Option<RouteDecision>> {
    let Some(step) = submission_step(&req.body) else {
        return Ok(None);
    };
    let policies = state.policy();
    if let Err(e) = policies.check(tenant_id, req.class, &step).await {
        state
            .delivery()
            .metrics()
            .rejected
            .with_label_values(&[tenant_id, ErrorCode::PolicyForbidsRoute.as_str()])
            .inc();
        return Err(e);
    }
    if let Some(link) = &req.body.secure_link {
        state
            .links()
            .check_notification(tenant_id, &req.to, link)
            .await?;
    }
    let reason = if step == Step::E2ee {
        FallbackReason::None
    } else {
        headers
            .get(FALLBACK_REASON_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(FallbackReason::parse)
            .filter(|r| *r != FallbackReason::None)
            .unwrap_or(FallbackReason::Unspecified)
    };
    Ok(Some(RouteDecision {
        route: step.route(),
        reason,
        class: req.class,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealgate_proto::send::{RedactedBody, SecureLinkBody};

    #[test]
    fn submissions_map_to_steps() {
        let text = |c| MessageBody {
            text: Some("x".into()),
            channel: c,
            ..MessageBody::default()
        };
        assert_eq!(submission_step(&text(None)), Some(Step::PlainSms));
        assert_eq!(
            submission_step(&text(Some(TextChannel::Rcs))),
            Some(Step::PlainRcs)
        );
        let link = MessageBody {
            secure_link: Some(SecureLinkBody {
                link_id: "l".into(),
                channel: TextChannel::Rcs,
                text: "t".into(),
            }),
            ..MessageBody::default()
        };
        assert_eq!(
            submission_step(&link),
            Some(Step::SecureLink {
                over: TextChannel::Rcs
            })
        );
        let redacted = MessageBody {
            redacted: Some(RedactedBody {
                text: "t".into(),
                channel: TextChannel::Sms,
            }),
            ..MessageBody::default()
        };
        assert_eq!(submission_step(&redacted), Some(Step::RedactedText));
        let both = MessageBody {
            text: Some("x".into()),
            ..link
        };
        assert_eq!(submission_step(&both), None);
        assert_eq!(submission_step(&MessageBody::default()), None);
    }

    #[test]
    fn toml_and_json_documents_parse_the_same() {
        let json =
            br#"{"classes":{"sensitive":["e2ee",{"step":"secure_link","over":"rcs"},"block"]}}"#;
        let toml = b"[classes]\nsensitive = [\"e2ee\", { step = \"secure_link\", over = \"rcs\" }, \"block\"]\n";
        let a = parse_document(json, false).unwrap();
        let b = parse_document(toml, true).unwrap();
        assert_eq!(a, b);
        assert_eq!(digest_of(&canonical(&a)), digest_of(&canonical(&b)));
        assert!(parse_document(b"{", false).unwrap_err()[0].contains("invalid JSON"));
        assert!(parse_document(b"classes = [", true).unwrap_err()[0].contains("invalid TOML"));
    }
}
