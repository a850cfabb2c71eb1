//! The simulator's typed configuration: who is reachable how, which faults to inject, and
//! where signed receipts go.
//!
//! It exists so that the TOML file, the command line and the control API all describe the
//! phone network with the same types and the same validation. It must never accept a value
//! it cannot honour (a share above 1, shares that add up to more than 1, a webhook without a
//! secret): a bad config is refused at start or with a 400, never discovered mid-run.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The bearer token the aggregator endpoints accept when none is configured.
pub const DEFAULT_AGENT_TOKEN: &str = "sim-agent-token";

/// Errors raised while loading or changing the configuration. All of them are the caller's
/// fault (the config file, a flag or a control-API body), never the simulator's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file that was asked for.
        path: String,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for [`SimConfig`] (unknown keys included).
    #[error("parsing config: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value is out of range or inconsistent with another one.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending key, e.g. `faults.rate_429`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// What happens to a send to a number whose profile says `reachable = false`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnreachableMode {
    /// Answer at once with a permanent error (404 for RCS, 400 for SMS).
    #[default]
    Permanent,
    /// Sleep `timeout_ms` and answer 504, like a request that hung.
    Timeout,
}

/// The effective capabilities of one phone number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Profile {
    /// The number has an RCS client the aggregator can reach.
    pub rcs: bool,
    /// The carrier reports RCS end-to-end encryption for the number.
    pub e2ee: bool,
    /// The number can receive SMS.
    pub sms: bool,
    /// `false` makes every send fail, as `unreachable_mode` says.
    pub reachable: bool,
    /// How an unreachable number fails.
    pub unreachable_mode: UnreachableMode,
}

impl Default for Profile {
    /// SMS only: what an arbitrary phone number can be assumed to support.
    fn default() -> Self {
        Profile {
            rcs: false,
            e2ee: false,
            sms: true,
            reachable: true,
            unreachable_mode: UnreachableMode::Permanent,
        }
    }
}

/// A rule for an exact number or a prefix: each field set here overrides the default profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Overrides [`Profile::rcs`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rcs: Option<bool>,
    /// Overrides [`Profile::e2ee`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2ee: Option<bool>,
    /// Overrides [`Profile::sms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<bool>,
    /// Overrides [`Profile::reachable`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<bool>,
    /// Overrides [`Profile::unreachable_mode`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_mode: Option<UnreachableMode>,
    /// Replaces the global faults for the numbers this rule matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<FaultConfig>,
}

impl Rule {
    /// The profile that results from laying this rule over `base`.
    pub fn apply(&self, base: &Profile) -> Profile {
        Profile {
            rcs: self.rcs.unwrap_or(base.rcs),
            e2ee: self.e2ee.unwrap_or(base.e2ee),
            sms: self.sms.unwrap_or(base.sms),
            reachable: self.reachable.unwrap_or(base.reachable),
            unreachable_mode: self.unreachable_mode.unwrap_or(base.unreachable_mode),
        }
    }

    /// Checks the rule's fault shares; `at` names it in the error.
    pub fn validate(&self, at: &str) -> Result<(), ConfigError> {
        match &self.faults {
            Some(f) => f.validate(&format!("{at}.faults")),
            None => Ok(()),
        }
    }
}

/// Fault injection for the three send endpoints. Shares are probabilities per request, drawn
/// from one seeded uniform number, so they are mutually exclusive and must add up to at most 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Share of requests answered 500 or 503 (half each).
    pub error_5xx: f64,
    /// Share of requests answered 429 with `Retry-After`.
    pub rate_429: f64,
    /// The `Retry-After` value, in seconds, on a 429.
    pub retry_after_secs: u64,
    /// Share of requests that sleep `timeout_ms` and then answer 504, with no side effect.
    pub timeout: f64,
    /// How long a timed-out request (or an unreachable number in timeout mode) hangs.
    pub timeout_ms: u64,
    /// Share of requests that are stored (and receipted) but then hang and answer 504.
    pub timeout_after_accept: f64,
    /// Share of requests answered 400 INVALID_ARGUMENT.
    pub permanent_4xx: f64,
    /// Added to every aggregator request.
    pub latency_ms: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            error_5xx: 0.0,
            rate_429: 0.0,
            retry_after_secs: 1,
            timeout: 0.0,
            timeout_ms: 2_000,
            timeout_after_accept: 0.0,
            permanent_4xx: 0.0,
            latency_ms: 0,
        }
    }
}

impl FaultConfig {
    /// Checks that every share is in `[0, 1]`, that they add up to at most 1 and that the
    /// durations are sane; `at` names the table in the error.
    pub fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let shares = [
            ("error_5xx", self.error_5xx),
            ("rate_429", self.rate_429),
            ("timeout", self.timeout),
            ("timeout_after_accept", self.timeout_after_accept),
            ("permanent_4xx", self.permanent_4xx),
        ];
        for (name, share) in shares {
            if !(0.0..=1.0).contains(&share) {
                return Err(invalid(format!("{at}.{name}"), "must be between 0 and 1"));
            }
        }
        let total: f64 = shares.iter().map(|(_, s)| s).sum();
        if total > 1.0 + 1e-9 {
            return Err(invalid(
                at,
                format!("shares add up to {total}, more than 1"),
            ));
        }
        if self.timeout_ms > 600_000 {
            return Err(invalid(format!("{at}.timeout_ms"), "at most 600000"));
        }
        if self.latency_ms > 60_000 {
            return Err(invalid(format!("{at}.latency_ms"), "at most 60000"));
        }
        if self.retry_after_secs > 86_400 {
            return Err(invalid(format!("{at}.retry_after_secs"), "at most 86400"));
        }
        Ok(())
    }
}

/// When receipts are sent and how failed webhook posts are retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiptConfig {
    /// DELIVERED is posted this long after the send was accepted.
    pub delivered_after_ms: u64,
    /// READ is posted this long after the send was accepted (and always after DELIVERED).
    pub read_after_ms: u64,
    /// Share of RCS messages that are read; SMS never gets READ.
    pub read_share: f64,
    /// Attempts per receipt before it is dropped.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles per attempt.
    pub retry_base_ms: u64,
    /// Upper bound of the backoff.
    pub retry_max_ms: u64,
    /// Per-attempt HTTP timeout.
    pub request_timeout_ms: u64,
}

impl Default for ReceiptConfig {
    fn default() -> Self {
        ReceiptConfig {
            delivered_after_ms: 20,
            read_after_ms: 50,
            read_share: 1.0,
            max_attempts: 10,
            retry_base_ms: 50,
            retry_max_ms: 2_000,
            request_timeout_ms: 5_000,
        }
    }
}

/// Everything the simulator needs to start. Load with [`SimConfig::from_toml_str`] or
/// [`SimConfig::load`], adjust from flags, then hand to [`crate::run`] (which validates it).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// The bearer token the aggregator endpoints require.
    pub agent_token: String,
    /// Where receipts are POSTed; none means receipts are not sent.
    pub webhook_url: Option<String>,
    /// The HMAC-SHA512 key for `X-Goog-Signature`; required with `webhook_url`.
    pub webhook_secret: Option<String>,
    /// Seed of the fault and read-share draws; random when absent.
    pub seed: Option<u64>,
    /// The profile of a number no rule matches.
    pub default: Profile,
    /// Rules by exact number (E.164, e.g. `"+15550001"`); they win over prefixes.
    pub numbers: BTreeMap<String, Rule>,
    /// Rules by prefix (e.g. `"+1555"`); the longest matching prefix wins.
    pub prefixes: BTreeMap<String, Rule>,
    /// Global fault injection.
    pub faults: FaultConfig,
    /// Receipt timing and webhook retries.
    pub receipts: ReceiptConfig,
    /// On shutdown, how long to wait for scheduled receipts before dropping them.
    pub drain_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            agent_token: DEFAULT_AGENT_TOKEN.to_owned(),
            webhook_url: None,
            webhook_secret: None,
            seed: None,
            default: Profile::default(),
            numbers: BTreeMap::new(),
            prefixes: BTreeMap::new(),
            faults: FaultConfig::default(),
            receipts: ReceiptConfig::default(),
            drain_ms: 2_000,
        }
    }
}

impl fmt::Debug for SimConfig {
    /// Secrets are redacted: configs end up in logs and panic messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("agent_token", &"<redacted>")
            .field("webhook_url", &self.webhook_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("seed", &self.seed)
            .field("default", &self.default)
            .field("numbers", &self.numbers)
            .field("prefixes", &self.prefixes)
            .field("faults", &self.faults)
            .field("receipts", &self.receipts)
            .field("drain_ms", &self.drain_ms)
            .finish()
    }
}

impl SimConfig {
    /// Parses a TOML document (unknown keys are an error) and validates it.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: SimConfig = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Checks every value; [`crate::run`] calls this before binding anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.agent_token.is_empty() {
            return Err(invalid("agent_token", "must not be empty"));
        }
        if let Some(url) = &self.webhook_url {
            let parsed =
                reqwest::Url::parse(url).map_err(|e| invalid("webhook_url", e.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid("webhook_url", "must be http or https"));
            }
            if self.webhook_secret.as_deref().is_none_or(str::is_empty) {
                return Err(invalid("webhook_secret", "required with webhook_url"));
            }
        }
        for (number, rule) in &self.numbers {
            validate_msisdn(number)
                .map_err(|reason| invalid(format!("numbers.{number}"), reason))?;
            rule.validate(&format!("numbers.{number}"))?;
        }
        for (prefix, rule) in &self.prefixes {
            validate_prefix(prefix)
                .map_err(|reason| invalid(format!("prefixes.{prefix}"), reason))?;
            rule.validate(&format!("prefixes.{prefix}"))?;
        }
        self.faults.validate("faults")?;
        let r = &self.receipts;
        if !(0.0..=1.0).contains(&r.read_share) {
            return Err(invalid("receipts.read_share", "must be between 0 and 1"));
        }
        if r.max_attempts == 0 || r.max_attempts > 100 {
            return Err(invalid("receipts.max_attempts", "must be 1..=100"));
        }
        if r.request_timeout_ms == 0 {
            return Err(invalid("receipts.request_timeout_ms", "must be positive"));
        }
        Ok(())
    }
}

/// An E.164 number: `+` then 2 to 15 digits, the first not 0.
pub fn validate_msisdn(number: &str) -> Result<(), &'static str> {
    let digits = number
        .strip_prefix('+')
        .ok_or("must start with + (E.164)")?;
    if !(2..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("must be + followed by 2 to 15 digits");
    }
    if digits.starts_with('0') {
        return Err("country code cannot start with 0");
    }
    Ok(())
}

/// A number prefix: `+` then up to 15 digits (`+` alone matches every number).
pub fn validate_prefix(prefix: &str) -> Result<(), &'static str> {
    let digits = prefix.strip_prefix('+').ok_or("must start with +")?;
    if digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("must be + followed by at most 15 digits");
    }
    Ok(())
}

/// Which rule decided a number's profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "matched", content = "key", rename_all = "lowercase")]
pub enum Matched {
    /// No rule: the default profile.
    Default,
    /// The exact-number rule.
    Number(String),
    /// The longest matching prefix rule.
    Prefix(String),
}

/// The default profile and the rules, as changed at run time by the control API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleSet {
    /// Profile of numbers no rule matches.
    pub default: Profile,
    /// Exact-number rules.
    pub numbers: BTreeMap<String, Rule>,
    /// Prefix rules.
    pub prefixes: BTreeMap<String, Rule>,
}

impl RuleSet {
    /// The rules of a config.
    pub fn from_config(config: &SimConfig) -> Self {
        RuleSet {
            default: config.default.clone(),
            numbers: config.numbers.clone(),
            prefixes: config.prefixes.clone(),
        }
    }

    /// The rule that applies to `msisdn`: an exact-number rule, else the longest prefix.
    pub fn matching(&self, msisdn: &str) -> (Option<&Rule>, Matched) {
        if let Some(rule) = self.numbers.get(msisdn) {
            return (Some(rule), Matched::Number(msisdn.to_owned()));
        }
        let best = self
            .prefixes
            .iter()
            .filter(|(prefix, _)| msisdn.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len());
        match best {
            Some((prefix, rule)) => (Some(rule), Matched::Prefix(prefix.clone())),
            None => (None, Matched::Default),
        }
    }

    /// The effective profile of `msisdn`, the rule's own faults (if any) and which rule matched.
    pub fn resolve(&self, msisdn: &str) -> (Profile, Option<FaultConfig>, Matched) {
        let (rule, matched) = self.matching(msisdn);
        match rule {
            Some(rule) => (rule.apply(&self.default), rule.faults.clone(), matched),
            None => (self.default.clone(), None, matched),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_then_exact_number_wins() {
        let config = SimConfig::from_toml_str(
            r#"
            [prefixes."+1"]
            rcs = true
            [prefixes."+1555"]
            rcs = true
            e2ee = true
            sms = false
            [numbers."+15550001"]
            reachable = false
            "#,
        )
        .unwrap();
        let rules = RuleSet::from_config(&config);
        let (p, _, m) = rules.resolve("+15551234");
        assert_eq!(m, Matched::Prefix("+1555".into()));
        assert!(p.rcs && p.e2ee && !p.sms);
        let (p, _, m) = rules.resolve("+12125550000");
        assert_eq!(m, Matched::Prefix("+1".into()));
        assert!(p.rcs && !p.e2ee && p.sms);
        // An exact rule lays over the default, not over the prefix rule.
        let (p, _, m) = rules.resolve("+15550001");
        assert_eq!(m, Matched::Number("+15550001".into()));
        assert!(!p.reachable && !p.rcs && p.sms);
        let (p, _, m) = rules.resolve("+447700900000");
        assert_eq!(m, Matched::Default);
        assert_eq!(p, Profile::default());
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        for bad in [
            "[faults]\nerror_5xx = 1.5",
            "[faults]\nerror_5xx = 0.6\nrate_429 = 0.6",
            "webhook_url = \"http://127.0.0.1:1/hook\"",
            "webhook_url = \"ftp://x\"\nwebhook_secret = \"s\"",
            "[numbers.\"15550001\"]\nrcs = true",
            "[prefixes.\"+1x\"]\nrcs = true",
            "[default]\nrcs = true\nbogus = 1",
            "agent_token = \"\"",
            "[receipts]\nread_share = 2.0",
            "[prefixes.\"+1\".faults]\ntimeout = -0.1",
        ] {
            assert!(SimConfig::from_toml_str(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let config = SimConfig {
            agent_token: "tok-123".into(),
            webhook_url: Some("http://127.0.0.1:9/h".into()),
            webhook_secret: Some("sec-456".into()),
            ..SimConfig::default()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("tok-123") && !text.contains("sec-456"));
    }
}
