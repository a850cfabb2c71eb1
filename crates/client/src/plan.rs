//! Send planning: given what a recipient can receive (`GET /v1/capabilities`) and the
//! tenant's chain for the message class (`GET /v1/policy`), pick the first step that can
//! work, and say why earlier ones could not.
//!
//! Plain functions and data, no I/O and no cryptography, so every policy × capability
//! combination is unit-tested here. It must never weaken a chain: a step the policy does not
//! name is never chosen, and `block` (or the end of the chain) stops.

use sealgate_proto::identity::valid_e164;
use sealgate_proto::policy::{CapabilitiesView, FallbackReason, Step};
use sealgate_proto::send::TextChannel;
use serde::Serialize;

/// What to send: the text, and optionally its redacted form (sensitive fields removed) for
/// a `redacted_text` step.
#[derive(Clone, PartialEq, Eq)]
pub struct Content {
    pub text: String,
    pub redacted: Option<String>,
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Content")
            .field("text_len", &self.text.len())
            .field("redacted", &self.redacted.is_some())
            .finish()
    }
}

/// A template field: `{{name}}` in the template is replaced by `value`; a `sensitive` one is
/// replaced by `[redacted]` in the redacted form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: String,
    pub sensitive: bool,
}

impl Field {
    pub fn new(name: &str, value: &str, sensitive: bool) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
            sensitive,
        }
    }
}

/// Stands in for a sensitive field in the redacted text.
pub const REDACTED: &str = "[redacted]";

impl Content {
    /// A plain text; no redacted form, so `redacted_text` steps are skipped.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            redacted: None,
        }
    }

    /// Render a template with `{{name}}` fields; the redacted form hides the sensitive ones.
    pub fn template(template: &str, fields: &[Field]) -> Self {
        let mut text = template.to_owned();
        let mut redacted = template.to_owned();
        for f in fields {
            let marker = format!("{{{{{}}}}}", f.name);
            text = text.replace(&marker, &f.value);
            redacted = redacted.replace(&marker, if f.sensitive { REDACTED } else { &f.value });
        }
        Self {
            text,
            redacted: Some(redacted),
        }
    }
}

/// What the planner chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    E2ee,
    SecureLink {
        channel: TextChannel,
    },
    RedactedText {
        channel: TextChannel,
    },
    PlainRcs,
    PlainSms,
    Queue {
        ttl_secs: u64,
    },
    /// `block` reached (`policy_block`) or the chain ran out (`no_route`).
    Block {
        by_policy: bool,
    },
}

/// A decision: the action, its index in the chain, why E2EE was not used, and why each
/// earlier step was skipped (`"e2ee: no_e2ee_device"`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub action: Action,
    pub step: usize,
    pub reason: FallbackReason,
    pub skipped: Vec<String>,
}

fn step_name(s: &Step) -> String {
    match s {
        Step::SecureLink { over } => format!("secure_link({})", channel_name(*over)),
        other => other.route().as_str().to_owned(),
    }
}

pub(crate) fn channel_name(c: TextChannel) -> &'static str {
    match c {
        TextChannel::Rcs => "rcs",
        TextChannel::Sms => "sms",
    }
}

/// Choose from `chain[start..]`. `reason` is carried in (e.g. `QueueExpired` when resuming
/// after a hold ran out, `E2eeFailed` after an E2EE attempt failed).
pub fn plan(
    chain: &[Step],
    caps: &CapabilitiesView,
    content: &Content,
    start: usize,
    mut reason: FallbackReason,
) -> Plan {
    let phone = valid_e164(&caps.recipient);
    let rcs = phone && caps.rcs;
    let sms = phone && caps.sms;
    let mut skipped = Vec::new();
    let mut skip = |s: &Step, why: &str, reason: &mut FallbackReason, r: FallbackReason| {
        skipped.push(format!("{}: {why}", step_name(s)));
        if *reason == FallbackReason::None {
            *reason = r;
        }
    };
    for (i, step) in chain.iter().enumerate().skip(start) {
        let action = match step {
            Step::E2ee if caps.e2ee_devices > 0 && caps.user.is_some() => Some(Action::E2ee),
            Step::E2ee => {
                skip(
                    step,
                    "no_e2ee_device",
                    &mut reason,
                    FallbackReason::NoE2eeDevice,
                );
                None
            }
            Step::SecureLink { over } => {
                let ok = match over {
                    TextChannel::Rcs => rcs,
                    TextChannel::Sms => sms,
                };
                if !ok {
                    let why = format!("{}_unavailable", channel_name(*over));
                    skip(step, &why, &mut reason, FallbackReason::RouteUnavailable);
                }
                ok.then_some(Action::SecureLink { channel: *over })
            }
            Step::RedactedText if content.redacted.is_none() => {
                skip(
                    step,
                    "no_redacted_form",
                    &mut reason,
                    FallbackReason::RouteUnavailable,
                );
                None
            }
            Step::RedactedText if rcs || sms => Some(Action::RedactedText {
                channel: if rcs {
                    TextChannel::Rcs
                } else {
                    TextChannel::Sms
                },
            }),
            Step::PlainRcs if rcs => Some(Action::PlainRcs),
            Step::PlainSms if sms => Some(Action::PlainSms),
            Step::RedactedText | Step::PlainRcs | Step::PlainSms => {
                let why = if matches!(step, Step::PlainRcs) {
                    "rcs_unavailable"
                } else {
                    "sms_unavailable"
                };
                skip(step, why, &mut reason, FallbackReason::RouteUnavailable);
                None
            }
            Step::QueueUntilE2ee { ttl_secs } => Some(Action::Queue {
                ttl_secs: *ttl_secs,
            }),
            Step::Block => Some(Action::Block { by_policy: true }),
        };
        if let Some(action) = action {
            return Plan {
                action,
                step: i,
                reason: if action == Action::E2ee {
                    FallbackReason::None
                } else if reason == FallbackReason::None {
                    FallbackReason::Unspecified
                } else {
                    reason
                },
                skipped,
            };
        }
    }
    Plan {
        action: Action::Block { by_policy: false },
        step: chain.len(),
        reason,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealgate_proto::policy::PolicyRules;
    use sealgate_proto::send::MessageClass;

    fn caps(devices: u32, rcs: bool, sms: bool) -> CapabilitiesView {
        CapabilitiesView {
            recipient: "+15550001111".into(),
            user: (devices > 0).then(|| "bob".into()),
            e2ee_devices: devices,
            rcs,
            carrier_e2ee: false,
            sms,
            learned_at: 0,
            cached: false,
        }
    }

    #[test]
    fn default_policy_matrix() {
        let rules = PolicyRules::default_rules();
        let text = Content::text("secret");
        let chain = |c| rules.chain(c);
        let pick = |c, k: &CapabilitiesView| plan(&chain(c), k, &text, 0, FallbackReason::None);
        use MessageClass::*;
        // E2EE device: always E2EE.
        for class in [Sensitive, Transactional, Marketing] {
            assert_eq!(pick(class, &caps(1, true, true)).action, Action::E2ee);
        }
        // RCS without E2EE device.
        let p = pick(Sensitive, &caps(0, true, true));
        assert_eq!(
            p.action,
            Action::SecureLink {
                channel: TextChannel::Sms
            }
        );
        assert_eq!(p.reason, FallbackReason::NoE2eeDevice);
        assert_eq!(
            pick(Marketing, &caps(0, true, true)).action,
            Action::PlainRcs
        );
        // SMS only.
        assert_eq!(
            pick(Marketing, &caps(0, false, true)).action,
            Action::PlainSms
        );
        assert_eq!(
            pick(Transactional, &caps(0, false, true)).action,
            Action::SecureLink {
                channel: TextChannel::Sms
            }
        );
        // Unreachable: sensitive hits block, marketing runs out.
        let p = pick(Sensitive, &caps(0, false, false));
        assert_eq!(p.action, Action::Block { by_policy: true });
        assert_eq!(
            p.skipped,
            vec!["e2ee: no_e2ee_device", "secure_link(sms): sms_unavailable"]
        );
        assert_eq!(
            pick(Marketing, &caps(0, false, false)).action,
            Action::Block { by_policy: false }
        );
    }

    #[test]
    fn redaction_queue_and_resume() {
        let chain = [
            Step::E2ee,
            Step::QueueUntilE2ee { ttl_secs: 60 },
            Step::RedactedText,
            Step::PlainSms,
        ];
        let c = Content::template(
            "Hi {{name}}, balance {{amount}}",
            &[
                Field::new("name", "Bob", false),
                Field::new("amount", "$5", true),
            ],
        );
        assert_eq!(c.text, "Hi Bob, balance $5");
        assert_eq!(c.redacted.as_deref(), Some("Hi Bob, balance [redacted]"));
        let k = caps(0, false, true);
        assert_eq!(
            plan(&chain, &k, &c, 0, FallbackReason::None).action,
            Action::Queue { ttl_secs: 60 }
        );
        let p = plan(&chain, &k, &c, 2, FallbackReason::QueueExpired);
        assert_eq!(
            p.action,
            Action::RedactedText {
                channel: TextChannel::Sms
            }
        );
        assert_eq!(p.reason, FallbackReason::QueueExpired);
        let p = plan(
            &chain,
            &k,
            &Content::text("x"),
            2,
            FallbackReason::QueueExpired,
        );
        assert_eq!(p.action, Action::PlainSms);
        // A user id without a known number has no SMS route.
        let mut by_user = caps(0, true, true);
        by_user.recipient = "bob".into();
        assert_eq!(
            plan(&chain[2..], &by_user, &c, 0, FallbackReason::None).action,
            Action::Block { by_policy: false }
        );
    }
}
