//! Capability-aware business send: `Sender::send_to(recipient, content, class)` asks the
//! gateway what the recipient can receive and what the tenant's policy allows, plans
//! ([`crate::plan`]), does the cryptography (MLS for E2EE, a fresh AES-256-GCM key for a
//! secure link), submits, and reports the route taken.
//!
//! A sender is a device (for MLS) plus the tenant's API key (for `POST /v1/messages`,
//! `/v1/links`, `/v1/holds`). Held messages (`queue_until_e2ee`) stay in this device's own
//! sealed outbox (`outbox.sealed`): the gateway holds only a placeholder. This module must
//! never log content, a link key or a full phone number.

use std::time::Duration;

use reqwest::Method;
use sealgate_proto::identity::valid_e164;
use sealgate_proto::policy::{
    CapabilitiesView, CreateHoldRequest, CreateLinkRequest, CreateLinkResponse,
    FALLBACK_REASON_HEADER, FallbackReason, HoldStatus, HoldView, PolicyView,
};
use sealgate_proto::send::{
    IDEMPOTENCY_KEY_HEADER, MessageBody, MessageClass, MlsBody, RedactedBody, SecureLinkBody,
    SendAccepted, SendRequest, TextChannel,
};
use sealgate_proto::{ErrorCode, Problem};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::client::SealClient;
use crate::error::{Error, Result};
use crate::payload::Payload;
use crate::plan::{Action, Content, Plan, channel_name, plan};
use crate::state::now_ms;

const OUTBOX_FILE: &str = "outbox.sealed";
const TIMEOUT: Duration = Duration::from_secs(30);

/// What happened to a message sent with [`Sender::send_to`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "route", rename_all = "snake_case")]
pub enum SendOutcome {
    /// MLS to the recipient's devices.
    E2ee {
        message_id: String,
        conversation: String,
    },
    /// A link (key in its fragment) over `channel`; the content is on the gateway encrypted.
    SecureLink {
        message_id: String,
        link_id: String,
        channel: String,
        reason: FallbackReason,
    },
    RedactedText {
        message_id: String,
        channel: String,
        reason: FallbackReason,
    },
    PlainRcs {
        message_id: String,
        reason: FallbackReason,
    },
    PlainSms {
        message_id: String,
        reason: FallbackReason,
    },
    /// Held until the recipient has an E2EE device (see [`Sender::process_queued`]).
    Queued { hold_id: String, expires_at: i64 },
    /// Not sent: `policy_block` (the chain says block) or `no_route` (nothing in the chain
    /// could reach the recipient); `skipped` says why each earlier step was not possible.
    Blocked {
        reason: String,
        skipped: Vec<String>,
    },
}

/// A held message in the sealed outbox.
#[derive(Clone, Serialize, Deserialize)]
struct OutboxEntry {
    hold_id: String,
    recipient: String,
    class: MessageClass,
    text: String,
    redacted: Option<String>,
    /// Index of the step after the queue step.
    next_step: usize,
}

/// A device sending business messages with the tenant's API key.
pub struct Sender<'a> {
    client: &'a mut SealClient,
    http: reqwest::Client,
    base: String,
    api_key: String,
}

impl std::fmt::Debug for Sender<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl SealClient {
    /// Send business messages from this device with the tenant's `api_key`.
    pub fn sender(&mut self, api_key: &str) -> Result<Sender<'_>> {
        if !api_key.starts_with("sgk_") {
            return Err(Error::InvalidArgument("an API key starts with sgk_".into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(Error::Transport)?;
        Ok(Sender {
            base: self.state.server_url.clone(),
            client: self,
            http,
            api_key: api_key.to_owned(),
        })
    }
}

fn random_key(prefix: &str) -> Result<String> {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::Crypto("random".into()))?;
    Ok(format!("{prefix}{}", hex::encode(b)))
}

impl Sender<'_> {
    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        headers: &[(&str, String)],
    ) -> Result<Option<R>> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.api_key)
            .timeout(TIMEOUT);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(Error::Transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(Error::Transport)?;
        if status.as_u16() == 204 {
            return Ok(None);
        }
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::BadResponse(format!("{path}: {e}")));
        }
        let problem = serde_json::from_slice::<Problem>(&bytes).unwrap_or_else(|_| {
            let mut p = Problem::new(ErrorCode::Internal, Some(format!("HTTP {status}")));
            p.status = status.as_u16();
            p.code = format!("http_{}", status.as_u16());
            p
        });
        Err(Error::Server(Box::new(problem)))
    }

    async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R> {
        self.call::<(), R>(Method::GET, path, None, &[])
            .await?
            .ok_or_else(|| Error::BadResponse(format!("{path}: empty answer")))
    }

    /// `GET /v1/capabilities/{recipient}`.
    pub async fn capabilities(&self, recipient: &str) -> Result<CapabilitiesView> {
        if !valid_e164(recipient) && !sealgate_proto::identity::valid_user_id(recipient) {
            return Err(Error::InvalidArgument(
                "recipient: an E.164 number (+15551234567) or a user id".into(),
            ));
        }
        self.get(&format!(
            "/v1/capabilities/{}",
            recipient.replace('+', "%2B")
        ))
        .await
    }

    /// `GET /v1/policy`.
    pub async fn policy(&self) -> Result<PolicyView> {
        self.get("/v1/policy").await
    }

    async fn submit(&self, req: &SendRequest, reason: FallbackReason) -> Result<String> {
        let headers = [
            (IDEMPOTENCY_KEY_HEADER, random_key("sdk-")?),
            (FALLBACK_REASON_HEADER, reason.as_str().to_owned()),
        ];
        let accepted: SendAccepted = self
            .call(Method::POST, "/v1/messages", Some(req), &headers)
            .await?
            .ok_or_else(|| Error::BadResponse("send: empty answer".into()))?;
        Ok(accepted.message_id)
    }

    /// Send `content` to `recipient` (E.164 or user id) as a `class` message, by the tenant's
    /// policy. Returns the route taken, or `Blocked` with the reason.
    pub async fn send_to(
        &mut self,
        recipient: &str,
        content: &Content,
        class: MessageClass,
    ) -> Result<SendOutcome> {
        crate::client::check_text(&content.text)?;
        self.run(recipient, content, class, 0, FallbackReason::None)
            .await
    }

    async fn run(
        &mut self,
        recipient: &str,
        content: &Content,
        class: MessageClass,
        mut start: usize,
        mut reason: FallbackReason,
    ) -> Result<SendOutcome> {
        let caps = self.capabilities(recipient).await?;
        let chain = self.policy().await?.rules().chain(class);
        loop {
            let p: Plan = plan(&chain, &caps, content, start, reason);
            tracing::debug!(action = ?p.action, skipped = ?p.skipped, "send plan");
            match self.execute(recipient, content, class, &caps, &p).await {
                Ok(outcome) => return Ok(outcome),
                // E2EE can fail for reasons the capability answer could not see (no
                // KeyPackage left, a device just revoked): fall back by the chain.
                Err(e)
                    if p.action == Action::E2ee
                        && e.code().is_some_and(|c| {
                            matches!(c, ErrorCode::NoKeyPackage | ErrorCode::UnknownUser)
                        }) =>
                {
                    tracing::info!(error = %e, "E2EE not possible; falling back");
                    start = p.step + 1;
                    reason = FallbackReason::E2eeFailed;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn execute(
        &mut self,
        recipient: &str,
        content: &Content,
        class: MessageClass,
        caps: &CapabilitiesView,
        p: &Plan,
    ) -> Result<SendOutcome> {
        let request = |body: MessageBody| SendRequest {
            to: recipient.to_owned(),
            class,
            ttl_secs: None,
            body,
        };
        Ok(match p.action {
            Action::E2ee => {
                let user = caps.user.clone().unwrap_or_default();
                let conversation = self.client.direct_conversation(&user).await?;
                let message = self.encrypt(&conversation, &content.text).await?;
                let message_id = self
                    .submit(
                        &request(MessageBody {
                            mls: Some(MlsBody {
                                conversation: conversation.clone(),
                                message,
                            }),
                            ..MessageBody::default()
                        }),
                        FallbackReason::None,
                    )
                    .await?;
                SendOutcome::E2ee {
                    message_id,
                    conversation,
                }
            }
            Action::SecureLink { channel } => {
                let sealed = crate::links::seal(&content.text, now_ms())?;
                let link: CreateLinkResponse = self
                    .call(
                        Method::POST,
                        "/v1/links",
                        Some(&CreateLinkRequest {
                            recipient: recipient.to_owned(),
                            ciphertext: sealed.ciphertext.clone(),
                            ttl_secs: None,
                        }),
                        &[],
                    )
                    .await?
                    .ok_or_else(|| Error::BadResponse("links: empty answer".into()))?;
                let base = link
                    .url
                    .as_deref()
                    .and_then(|u| u.strip_suffix(&link.path))
                    .unwrap_or(&self.base)
                    .to_owned();
                let url = crate::links::link_url(&base, &link.path, &sealed.key);
                let body = MessageBody {
                    secure_link: Some(SecureLinkBody {
                        link_id: link.link_id.clone(),
                        channel,
                        text: crate::links::notification_text(&url),
                    }),
                    ..MessageBody::default()
                };
                let message_id = self.submit(&request(body), p.reason).await?;
                SendOutcome::SecureLink {
                    message_id,
                    link_id: link.link_id,
                    channel: channel_name(channel).into(),
                    reason: p.reason,
                }
            }
            Action::RedactedText { channel } => {
                let body = MessageBody {
                    redacted: Some(RedactedBody {
                        text: content.redacted.clone().unwrap_or_default(),
                        channel,
                    }),
                    ..MessageBody::default()
                };
                SendOutcome::RedactedText {
                    message_id: self.submit(&request(body), p.reason).await?,
                    channel: channel_name(channel).into(),
                    reason: p.reason,
                }
            }
            Action::PlainRcs | Action::PlainSms => {
                let rcs = p.action == Action::PlainRcs;
                let body = MessageBody {
                    text: Some(content.text.clone()),
                    channel: Some(if rcs {
                        TextChannel::Rcs
                    } else {
                        TextChannel::Sms
                    }),
                    ..MessageBody::default()
                };
                let message_id = self.submit(&request(body), p.reason).await?;
                if rcs {
                    SendOutcome::PlainRcs {
                        message_id,
                        reason: p.reason,
                    }
                } else {
                    SendOutcome::PlainSms {
                        message_id,
                        reason: p.reason,
                    }
                }
            }
            Action::Queue { ttl_secs } => {
                let hold: HoldView = self
                    .call(
                        Method::POST,
                        "/v1/holds",
                        Some(&CreateHoldRequest {
                            to: recipient.to_owned(),
                            class,
                            ttl_secs,
                        }),
                        &[],
                    )
                    .await?
                    .ok_or_else(|| Error::BadResponse("holds: empty answer".into()))?;
                let mut outbox = self.load_outbox()?;
                outbox.push(OutboxEntry {
                    hold_id: hold.hold_id.clone(),
                    recipient: recipient.to_owned(),
                    class,
                    text: content.text.clone(),
                    redacted: content.redacted.clone(),
                    next_step: p.step + 1,
                });
                self.save_outbox(&outbox)?;
                SendOutcome::Queued {
                    hold_id: hold.hold_id,
                    expires_at: hold.expires_at,
                }
            }
            Action::Block { by_policy } => SendOutcome::Blocked {
                reason: if by_policy {
                    "policy_block"
                } else {
                    "no_route"
                }
                .into(),
                skipped: p.skipped.clone(),
            },
        })
    }

    /// Encrypt a text for a conversation at its current epoch (without sending it).
    async fn encrypt(&mut self, conversation: &str, text: &str) -> Result<Vec<u8>> {
        let c = &mut *self.client;
        c.load_group(conversation)?;
        c.sync(None).await?;
        let mut group = c.load_group(conversation)?;
        let message =
            group.encrypt_application_message(&Payload::text(text, now_ms()).encode(), vec![])?;
        // The ratchet moved: save before the ciphertext leaves, so a key is never reused.
        group.write_to_storage()?;
        c.persist()?;
        Ok(message.to_bytes()?)
    }

    fn load_outbox(&self) -> Result<Vec<OutboxEntry>> {
        let path = self.client.home.join(OUTBOX_FILE);
        match std::fs::read(&path) {
            Ok(sealed) => {
                let plain = self.client.key.open(&sealed)?;
                serde_json::from_slice(&plain)
                    .map_err(|e| Error::CorruptState(format!("outbox: {e}")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn save_outbox(&self, outbox: &[OutboxEntry]) -> Result<()> {
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(outbox).map_err(|e| Error::CorruptState(e.to_string()))?,
        );
        let sealed = self.client.key.seal(&plain)?;
        crate::keystore::write_atomic(&self.client.home.join(OUTBOX_FILE), &sealed)
    }

    /// Messages held in this device's outbox, by hold id.
    pub fn queued(&self) -> Result<Vec<String>> {
        Ok(self.load_outbox()?.into_iter().map(|e| e.hold_id).collect())
    }

    /// Look at every held message: a `ready` one (the recipient now has an E2EE device) is
    /// encrypted and sent; an `expired` one runs the next step of its chain; a `waiting` one
    /// stays. Returns what happened to each handled hold.
    pub async fn process_queued(&mut self) -> Result<Vec<(String, SendOutcome)>> {
        let mut outbox = self.load_outbox()?;
        let mut done = Vec::new();
        let mut i = 0;
        while i < outbox.len() {
            let entry = outbox[i].clone();
            let hold: Result<HoldView> = self.get(&format!("/v1/holds/{}", entry.hold_id)).await;
            let (start, reason) = match hold {
                Ok(h) if h.status == HoldStatus::Waiting => {
                    i += 1;
                    continue;
                }
                Ok(h) if h.status == HoldStatus::Ready => (0, FallbackReason::None),
                Ok(h) if h.status == HoldStatus::Expired => {
                    (entry.next_step, FallbackReason::QueueExpired)
                }
                Ok(_) => {
                    outbox.remove(i);
                    self.save_outbox(&outbox)?;
                    continue;
                }
                Err(e) if e.code() == Some(ErrorCode::UnknownHold) => {
                    outbox.remove(i);
                    self.save_outbox(&outbox)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let content = Content {
                text: entry.text.clone(),
                redacted: entry.redacted.clone(),
            };
            let outcome = self
                .run(&entry.recipient, &content, entry.class, start, reason)
                .await?;
            let _: Option<serde_json::Value> = self
                .call::<(), _>(
                    Method::DELETE,
                    &format!("/v1/holds/{}", entry.hold_id),
                    None,
                    &[],
                )
                .await
                .or_else(|e| {
                    if e.code() == Some(ErrorCode::UnknownHold) {
                        Ok(None)
                    } else {
                        Err(e)
                    }
                })?;
            // `run` may have queued it again (saving a new entry): reload, drop this one.
            outbox = self.load_outbox()?;
            outbox.retain(|e| e.hold_id != entry.hold_id);
            self.save_outbox(&outbox)?;
            done.push((entry.hold_id, outcome));
        }
        Ok(done)
    }
}
