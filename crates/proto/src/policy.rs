//! Tenant send policy, capability answers, secure links and held messages: the wire types of
//! `GET/PUT /v1/policy`, `GET /v1/capabilities/{recipient}`, `POST /v1/links`, `/l/{id}/…`
//! and `/v1/holds`, plus the one validator both the gateway and the SDK use.
//!
//! A policy names, per message class, an ordered chain of routes: E2EE first, then fallbacks.
//! The validator collects *every* problem with a path (`classes.sensitive[2]: …`) instead of
//! stopping at the first, so an operator fixes a policy in one round. This module does no I/O
//! and never sees message content.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::send::{MessageClass, TextChannel};

/// Longest chain per class.
pub const MAX_CHAIN: usize = 10;
/// Bounds of `queue_until_e2ee.ttl_secs`.
pub const MIN_QUEUE_TTL_SECS: u64 = 1;
pub const MAX_QUEUE_TTL_SECS: u64 = 30 * 24 * 3600;
/// Header naming why a fallback route was taken (`no_e2ee_device`, ...); see
/// [`FallbackReason`].
pub const FALLBACK_REASON_HEADER: &str = "sealgate-fallback-reason";
/// The fragment parameter holding a secure link's key: `…/l/{id}#k=<base64url>`.
pub const LINK_KEY_PARAM: &str = "k";
/// Additional data of every secure-link ciphertext (AES-256-GCM).
pub const LINK_AAD: &[u8] = b"sealgate secure link v1";
/// First byte of a secure-link ciphertext: format version.
pub const LINK_FORMAT_V1: u8 = 1;

/// One step of a fallback chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// End-to-end encrypted (MLS to the recipient's devices, or an RCS E2EE payload).
    E2ee,
    /// The content encrypted under a fresh key, uploaded; a link with the key in its
    /// fragment is sent over `over`.
    SecureLink { over: TextChannel },
    /// The text with fields marked sensitive removed, as plain SMS (or RCS when capable).
    RedactedText,
    /// The full text over RCS without E2EE.
    PlainRcs,
    /// The full text over SMS.
    PlainSms,
    /// Hold the message until the recipient registers an E2EE device, at most `ttl_secs`;
    /// then the next step.
    QueueUntilE2ee { ttl_secs: u64 },
    /// Do not send.
    Block,
}

impl Step {
    /// The route label of this step (`secure_link`, `plain_sms`, ...), as in metrics.
    pub fn route(&self) -> Route {
        match self {
            Step::E2ee => Route::E2ee,
            Step::SecureLink { .. } => Route::SecureLink,
            Step::RedactedText => Route::RedactedText,
            Step::PlainRcs => Route::PlainRcs,
            Step::PlainSms => Route::PlainSms,
            Step::QueueUntilE2ee { .. } => Route::Queued,
            Step::Block => Route::Blocked,
        }
    }
}

/// What a message did (or would do): the label of `sealgate_route_total{route}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    E2ee,
    SecureLink,
    RedactedText,
    PlainRcs,
    PlainSms,
    Queued,
    Blocked,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::E2ee => "e2ee",
            Route::SecureLink => "secure_link",
            Route::RedactedText => "redacted_text",
            Route::PlainRcs => "plain_rcs",
            Route::PlainSms => "plain_sms",
            Route::Queued => "queued",
            Route::Blocked => "blocked",
        }
    }
}

/// Why a message did not go end-to-end encrypted. Bounded, so it can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FallbackReason {
    /// It did go E2EE.
    None,
    /// The recipient has no E2EE device registered.
    NoE2eeDevice,
    /// E2EE was tried and failed (no KeyPackage, ...).
    E2eeFailed,
    /// A `queue_until_e2ee` step ran out of time.
    QueueExpired,
    /// Earlier fallbacks were not possible (no RCS, no redacted version, ...).
    RouteUnavailable,
    /// The sender did not say.
    Unspecified,
}

impl FallbackReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::None => "none",
            FallbackReason::NoE2eeDevice => "no_e2ee_device",
            FallbackReason::E2eeFailed => "e2ee_failed",
            FallbackReason::QueueExpired => "queue_expired",
            FallbackReason::RouteUnavailable => "route_unavailable",
            FallbackReason::Unspecified => "unspecified",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            FallbackReason::None,
            FallbackReason::NoE2eeDevice,
            FallbackReason::E2eeFailed,
            FallbackReason::QueueExpired,
            FallbackReason::RouteUnavailable,
            FallbackReason::Unspecified,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A validated policy: a chain per class. Classes the tenant did not name use the default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyRules {
    /// Class name → ordered chain.
    pub classes: BTreeMap<String, Vec<Step>>,
    /// How recipients open secure links (absent: one-time code only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_link: Option<SecureLinkPolicy>,
}

/// The `secure_link` section of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecureLinkPolicy {
    /// OIDC sign-in for opening links, verified against the tenant's JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<LinkOidc>,
}

/// OIDC sign-in for secure links (`secure_link.oidc`): the recipient signs in with the
/// tenant's identity provider (implicit flow, `response_type=id_token`), and the gateway
/// verifies the ID token against `jwks_url` (RS256 or ES256), `issuer`, `audience`, its
/// lifetime, and the binding claim against the link's recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkOidc {
    /// Exact `iss` of the tokens; `{issuer}/authorize` is where the viewer sends the user.
    pub issuer: String,
    /// Where the provider's public keys are (JSON Web Key Set).
    pub jwks_url: String,
    /// The client id registered for the viewer: the tokens' `aud`.
    pub audience: String,
    /// The claim that binds a token to the link's recipient. Only `phone_number` (compared
    /// with the link's E.164 recipient) is supported.
    #[serde(default = "default_oidc_claim")]
    pub claim: String,
    /// `true`: a link opens only after OIDC sign-in; `false`: OIDC or the one-time code.
    #[serde(default)]
    pub required: bool,
}

fn default_oidc_claim() -> String {
    "phone_number".into()
}

fn url_ok(u: &str) -> bool {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    rest.is_some_and(|r| {
        !r.is_empty()
            && !r.starts_with('/')
            && u.len() <= 512
            && !u.contains(['#', '"', '<', '>', '\\', ' ', '\'', '`'])
            && !u.chars().any(char::is_control)
    })
}

impl LinkOidc {
    fn validate(&self, issues: &mut Vec<String>) {
        let at = "secure_link.oidc";
        if !url_ok(&self.issuer) || self.issuer.contains('?') {
            issues.push(format!(
                "{at}.issuer: must be an http(s) URL without query or fragment"
            ));
        }
        if !url_ok(&self.jwks_url) {
            issues.push(format!("{at}.jwks_url: must be an http(s) URL"));
        }
        if self.audience.is_empty()
            || self.audience.len() > 256
            || !self
                .audience
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'<' | b'>' | b'&' | b'\''))
        {
            issues.push(format!(
                "{at}.audience: must be the client id (1 to 256 printable characters)"
            ));
        }
        if self.claim != "phone_number" {
            issues.push(format!(
                "{at}.claim: only `phone_number` is supported (compared with the link's recipient)"
            ));
        }
    }
}

impl PolicyRules {
    /// The built-in policy of a tenant that set none:
    /// `sensitive` = E2EE → secure link (SMS) → block;
    /// `transactional` = E2EE → secure link (SMS) → plain RCS → plain SMS;
    /// `marketing` = E2EE → plain RCS → plain SMS.
    pub fn default_rules() -> Self {
        let mut classes = BTreeMap::new();
        let link = Step::SecureLink {
            over: TextChannel::Sms,
        };
        classes.insert("sensitive".into(), vec![Step::E2ee, link, Step::Block]);
        classes.insert(
            "transactional".into(),
            vec![Step::E2ee, link, Step::PlainRcs, Step::PlainSms],
        );
        classes.insert(
            "marketing".into(),
            vec![Step::E2ee, Step::PlainRcs, Step::PlainSms],
        );
        Self {
            classes,
            secure_link: None,
        }
    }

    /// The chain of `class` (the default's when the tenant did not name the class).
    pub fn chain(&self, class: MessageClass) -> Vec<Step> {
        self.classes
            .get(class.as_str())
            .cloned()
            .or_else(|| Self::default_rules().classes.get(class.as_str()).cloned())
            .unwrap_or_else(|| vec![Step::E2ee, Step::Block])
    }

    /// Does `class`'s chain allow `route` (over `channel`, for secure links)? E2EE is never
    /// a downgrade, so it is always allowed.
    pub fn allows(&self, class: MessageClass, step: &Step) -> bool {
        matches!(step, Step::E2ee) || self.chain(class).contains(step)
    }

    /// Parse and validate a policy document given as JSON (TOML converted to JSON first).
    /// `Err` lists every problem found, each with its path.
    pub fn from_value(doc: &serde_json::Value) -> Result<Self, Vec<String>> {
        let mut issues = Vec::new();
        let Some(obj) = doc.as_object() else {
            return Err(vec![
                "policy: must be an object with a `classes` table".into(),
            ]);
        };
        for key in obj.keys() {
            if !matches!(
                key.as_str(),
                "classes" | "version" | "comment" | "secure_link"
            ) {
                issues.push(format!(
                    "{key}: unknown key (expected `classes` or `secure_link`)"
                ));
            }
        }
        let secure_link = match obj.get("secure_link") {
            None => None,
            Some(v) => match serde_json::from_value::<SecureLinkPolicy>(v.clone()) {
                Ok(sl) => {
                    if let Some(oidc) = &sl.oidc {
                        oidc.validate(&mut issues);
                    }
                    Some(sl)
                }
                Err(e) => {
                    issues.push(format!("secure_link: {e}"));
                    None
                }
            },
        };
        let mut classes = BTreeMap::new();
        match obj.get("classes").map(|c| c.as_object()) {
            None => issues.push("classes: missing".into()),
            Some(None) => issues.push("classes: must be a table of class → chain".into()),
            Some(Some(map)) => {
                for (class, chain) in map {
                    let path = format!("classes.{class}");
                    if MessageClass::parse(class).is_none() {
                        issues.push(format!(
                            "{path}: unknown message class (expected transactional, sensitive or marketing)"
                        ));
                        continue;
                    }
                    if let Some(steps) = parse_chain(&path, chain, &mut issues) {
                        classes.insert(class.clone(), steps);
                    }
                }
            }
        }
        if issues.is_empty() {
            Ok(Self {
                classes,
                secure_link,
            })
        } else {
            Err(issues)
        }
    }
}

fn parse_chain(
    path: &str,
    chain: &serde_json::Value,
    issues: &mut Vec<String>,
) -> Option<Vec<Step>> {
    let Some(items) = chain.as_array() else {
        issues.push(format!("{path}: must be a list of steps"));
        return None;
    };
    let before = issues.len();
    if items.is_empty() {
        issues.push(format!("{path}: must name at least one step"));
    }
    if items.len() > MAX_CHAIN {
        issues.push(format!("{path}: at most {MAX_CHAIN} steps"));
    }
    let mut steps = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if let Some(step) = parse_step(&at, item, issues) {
            if steps.contains(&step) {
                issues.push(format!("{at}: repeats an earlier step"));
            }
            if step == Step::E2ee && i != 0 {
                issues.push(format!("{at}: `e2ee` can only be the first step"));
            }
            if steps.last() == Some(&Step::Block) {
                issues.push(format!("{at}: unreachable after `block`"));
            }
            steps.push(step);
        }
    }
    let queues = steps
        .iter()
        .any(|s| matches!(s, Step::QueueUntilE2ee { .. }));
    if queues && steps.first() != Some(&Step::E2ee) {
        issues.push(format!(
            "{path}: `queue_until_e2ee` needs `e2ee` as the first step"
        ));
    }
    if matches!(steps.last(), Some(Step::QueueUntilE2ee { .. })) {
        issues.push(format!(
            "{path}: `queue_until_e2ee` needs a step after it (what to do when the time is up)"
        ));
    }
    (issues.len() == before).then_some(steps)
}

const STEP_NAMES: &str =
    "e2ee, secure_link, redacted_text, plain_rcs, plain_sms, queue_until_e2ee, block";

fn parse_step(at: &str, item: &serde_json::Value, issues: &mut Vec<String>) -> Option<Step> {
    let (name, params) = match item {
        serde_json::Value::String(s) => (s.as_str(), None),
        serde_json::Value::Object(o) => match o.get("step").and_then(|s| s.as_str()) {
            Some(s) => (s, Some(o)),
            None => {
                issues.push(format!("{at}: a step object needs a `step` name"));
                return None;
            }
        },
        _ => {
            issues.push(format!("{at}: a step is a name or an object with `step`"));
            return None;
        }
    };
    let allowed: &[&str] = match name {
        "secure_link" => &["step", "over"],
        "queue_until_e2ee" => &["step", "ttl_secs"],
        _ => &["step"],
    };
    if let Some(o) = params {
        for key in o.keys().filter(|k| !allowed.contains(&k.as_str())) {
            issues.push(format!("{at}.{key}: unknown parameter of `{name}`"));
        }
    }
    let param = |key: &str| params.and_then(|o| o.get(key));
    let step = match name {
        "e2ee" => Step::E2ee,
        "redacted_text" => Step::RedactedText,
        "plain_rcs" => Step::PlainRcs,
        "plain_sms" => Step::PlainSms,
        "block" => Step::Block,
        "secure_link" => match param("over").and_then(|v| v.as_str()) {
            Some("sms") => Step::SecureLink {
                over: TextChannel::Sms,
            },
            Some("rcs") => Step::SecureLink {
                over: TextChannel::Rcs,
            },
            _ => {
                issues.push(format!(
                    "{at}.over: `secure_link` needs over = \"rcs\" or \"sms\""
                ));
                return None;
            }
        },
        "queue_until_e2ee" => match param("ttl_secs").and_then(|v| v.as_u64()) {
            Some(t) if (MIN_QUEUE_TTL_SECS..=MAX_QUEUE_TTL_SECS).contains(&t) => {
                Step::QueueUntilE2ee { ttl_secs: t }
            }
            _ => {
                issues.push(format!(
                    "{at}.ttl_secs: `queue_until_e2ee` needs ttl_secs between {MIN_QUEUE_TTL_SECS} and {MAX_QUEUE_TTL_SECS}"
                ));
                return None;
            }
        },
        other => {
            issues.push(format!(
                "{at}: unknown step {other:?} (expected one of {STEP_NAMES})"
            ));
            return None;
        }
    };
    Some(step)
}

/// `GET/PUT /v1/policy`: the tenant's effective policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyView {
    /// 0 = the built-in default (the tenant never set one); then 1, 2, ... per change.
    pub version: u64,
    /// `default` or `tenant`.
    pub source: String,
    /// Hex SHA-256 of the canonical JSON of `classes`.
    pub digest: String,
    /// Unix ms of the last change (absent for the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<i64>,
    /// Chains per class, as stored (classes not named use the default).
    pub classes: BTreeMap<String, Vec<Step>>,
    /// How recipients open secure links, when the tenant set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_link: Option<SecureLinkPolicy>,
}

impl PolicyView {
    pub fn rules(&self) -> PolicyRules {
        PolicyRules {
            classes: self.classes.clone(),
            secure_link: self.secure_link.clone(),
        }
    }

    /// The OIDC sign-in of secure links, if configured.
    pub fn link_oidc(&self) -> Option<&LinkOidc> {
        self.secure_link.as_ref().and_then(|s| s.oidc.as_ref())
    }
}

/// One entry of `GET /v1/policy/history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyChange {
    pub version: u64,
    pub previous_version: u64,
    /// Who changed it: `api_key:<8 hex of the key digest>` or `operator`.
    pub actor: String,
    /// Unix ms.
    pub at: i64,
    pub digest: String,
    pub previous_digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyHistory {
    /// Newest first.
    pub changes: Vec<PolicyChange>,
}

/// `GET /v1/capabilities/{recipient}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CapabilitiesView {
    /// As asked: an E.164 number or a user id.
    pub recipient: String,
    /// The tenant user the recipient is (or whose number it is), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Active devices of that user (each an MLS endpoint).
    pub e2ee_devices: u32,
    /// The RCS aggregator says the number is RCS capable.
    pub rcs: bool,
    /// The aggregator's E2EE flag for the number (RCS E2EE payloads accepted).
    pub carrier_e2ee: bool,
    /// An SMS route exists (the number is E.164 and an SMS transport is configured).
    pub sms: bool,
    /// Unix ms when these facts were learned.
    pub learned_at: i64,
    /// Answered from the cache.
    pub cached: bool,
}

/// `POST /v1/links`: upload a secure link's ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLinkRequest {
    /// E.164 number that will receive the one-time code.
    pub recipient: String,
    /// `0x01 || nonce(12) || AES-256-GCM(ciphertext || tag)` with AAD
    /// `sealgate secure link v1`, base64. The key never reaches the gateway.
    #[serde(with = "crate::b64")]
    #[schema(value_type = String, format = Byte)]
    pub ciphertext: Vec<u8>,
    /// Lifetime; default and maximum are configured (default 24 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateLinkResponse {
    pub link_id: String,
    /// `/l/{link_id}`; the client appends `#k=<key>`.
    pub path: String,
    /// The configured public base URL + path, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Unix ms.
    pub expires_at: i64,
}

/// `POST /l/{id}/otp` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OtpSent {
    /// The number, masked (`+1•••••4567`).
    pub to: String,
    /// Seconds the code stays valid.
    pub expires_in: u64,
}

/// `POST /l/{id}/open`: exactly one of `code` (the one-time code) or `id_token` (an OIDC ID
/// token from the tenant's identity provider, when the tenant configured OIDC sign-in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenLinkRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

/// `POST /l/{id}/open` answer: the ciphertext, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OpenLinkResponse {
    #[serde(with = "crate::b64")]
    #[schema(value_type = String, format = Byte)]
    pub ciphertext: Vec<u8>,
}

/// `POST /v1/holds`: hold a message until the recipient has an E2EE device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateHoldRequest {
    pub to: String,
    pub class: MessageClass,
    pub ttl_secs: u64,
}

/// State of a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    /// No E2EE device yet, time left.
    Waiting,
    /// The recipient registered an E2EE device: encrypt and send now.
    Ready,
    /// The time ran out: run the next step.
    Expired,
    /// The sender reported it handled.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HoldView {
    pub hold_id: String,
    pub to: String,
    pub class: MessageClass,
    pub status: HoldStatus,
    /// Unix ms.
    pub created_at: i64,
    pub expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HoldList {
    pub holds: Vec<HoldView>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn default_and_round_trip() {
        let d = PolicyRules::default_rules();
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(
            v["classes"]["sensitive"][1],
            json!({"step":"secure_link","over":"sms"})
        );
        assert_eq!(PolicyRules::from_value(&v).unwrap(), d);
        assert!(!d.allows(MessageClass::Sensitive, &Step::PlainSms));
        assert!(d.allows(MessageClass::Marketing, &Step::PlainSms));
    }

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let doc = json!({"classes": {
            "sensitive": ["plain_sms", "e2ee", "block", "plain_rcs"],
            "bulk": ["e2ee"],
            "marketing": [{"step": "queue_until_e2ee", "ttl_secs": 0}, {"step": "teleport"}],
            "transactional": ["e2ee", {"step": "secure_link", "over": "fax"}]
        }, "extra": 1});
        let issues = PolicyRules::from_value(&doc).unwrap_err();
        let text = issues.join("\n");
        for needle in [
            "extra: unknown key",
            "classes.bulk: unknown message class",
            "classes.sensitive[1]: `e2ee` can only be the first step",
            "classes.sensitive[3]: unreachable after `block`",
            "classes.marketing[0].ttl_secs",
            "classes.marketing[1]: unknown step \"teleport\"",
            "classes.transactional[1].over",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let ok = json!({"classes": {"sensitive": ["e2ee", {"step":"queue_until_e2ee","ttl_secs":60}, "block"]}});
        let rules = PolicyRules::from_value(&ok).unwrap();
        assert_eq!(rules.chain(MessageClass::Sensitive).len(), 3);
        assert_eq!(rules.chain(MessageClass::Marketing)[1], Step::PlainRcs);
    }
}
