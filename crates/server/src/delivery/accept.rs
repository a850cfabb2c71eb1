//! The accept path of `POST /v1/messages`: validate the request, hash its canonical form for
//! idempotency, and hand it to the group-commit writer, which stores many waiting messages
//! (each with its job) in one transaction and answers each request only after the commit.
//!
//! Group commit is what lets SQLite reach the accept target: one transaction per request
//! would pay one commit per message. Idempotency stays exact because a single writer decides
//! every batch in order, and the store's primary key on (tenant, key) guards across
//! processes — and between the batches a server database may have in flight at once
//! ([`accept_batches_in_flight`]). This module must never log a body or a full phone number.
//!
//! [`accept_batches_in_flight`]: super::store::DeliveryStore::accept_batches_in_flight

use std::sync::Arc;

use aws_lc_rs::digest;
use sealgate_proto::ErrorCode;
use sealgate_proto::identity::{valid_e164, valid_user_id};
use sealgate_proto::send::{Channel, MessageBody, SendRequest, TextChannel};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use super::metrics::Metrics;
use super::store::{AcceptOutcome, DeliveryBackend, NewMessage, PayloadKind};
use crate::ds::engine;
use crate::error::{ApiError, ApiResult};
use crate::store::Store;

/// Longest plaintext fallback text, in bytes.
pub const MAX_TEXT_BYTES: usize = 8 * 1024;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Is `key` 1–128 visible ASCII characters?
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=MAX_IDEMPOTENCY_KEY).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// A request checked and reduced to what the store keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub channel: Channel,
    pub kind: PayloadKind,
    pub group_id: Option<String>,
    pub epoch: Option<u64>,
    pub payload: Vec<u8>,
    /// SHA-256 of the canonical request.
    pub request_hash: Vec<u8>,
}

fn invalid(detail: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidField, detail)
}

/// The canonical form hashed for idempotency: the typed request re-serialised (fixed field
/// order, normalised base64 and group id, the default channel made explicit).
///
/// The JSON is streamed into the hash, and the request is copied only when it is not already
/// canonical: at tens of thousands of accepts per second, copying and buffering each body
/// twice showed in the gateway's profile.
pub fn request_hash(req: &SendRequest) -> Vec<u8> {
    let implicit_channel = req.body.text.is_some() && req.body.channel.is_none();
    let mixed_case = req
        .body
        .mls
        .as_ref()
        .is_some_and(|m| m.conversation.bytes().any(|b| b.is_ascii_uppercase()));
    let mut hasher = Sha256Writer(digest::Context::new(&digest::SHA256));
    let written = if implicit_channel || mixed_case {
        let mut canonical = req.clone();
        if implicit_channel {
            canonical.body.channel = Some(TextChannel::Sms);
        }
        if let Some(mls) = &mut canonical.body.mls {
            mls.conversation = mls.conversation.to_ascii_lowercase();
        }
        serde_json::to_writer(&mut hasher, &canonical)
    } else {
        serde_json::to_writer(&mut hasher, req)
    };
    if written.is_err() {
        // Serialising plain data into a hash cannot fail; hash nothing rather than panic.
        return digest::digest(&digest::SHA256, b"").as_ref().to_vec();
    }
    hasher.0.finish().as_ref().to_vec()
}

/// `io::Write` into a SHA-256 context.
struct Sha256Writer(digest::Context);

impl std::io::Write for Sha256Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Check a send request against the tenant's data and reduce it to a [`Prepared`].
pub async fn prepare(
    store: &dyn Store,
    tenant_id: &str,
    req: &SendRequest,
    max_ttl_secs: u64,
) -> ApiResult<Prepared> {
    let phone = valid_e164(&req.to);
    if !phone && !valid_user_id(&req.to) {
        return Err(invalid(
            "to: must be an E.164 phone number (+15551234567) or a user id",
        ));
    }
    if let Some(ttl) = req.ttl_secs
        && !(1..=max_ttl_secs).contains(&ttl)
    {
        return Err(invalid(&format!(
            "ttl_secs: must be between 1 and {max_ttl_secs}"
        )));
    }
    let MessageBody {
        mls,
        rcs_payload,
        text,
        channel,
        secure_link,
        redacted,
    } = &req.body;
    let given = usize::from(mls.is_some())
        + usize::from(rcs_payload.is_some())
        + usize::from(text.is_some())
        + usize::from(secure_link.is_some())
        + usize::from(redacted.is_some());
    if given != 1 {
        return Err(invalid(
            "body: exactly one of mls, rcs_payload, text, secure_link, redacted is required",
        ));
    }
    if channel.is_some() && text.is_none() {
        return Err(invalid("body.channel: only allowed with text"));
    }
    // Secure-link notifications and redacted texts travel as texts on their channel (the
    // policy hook has already checked the kind).
    let (text, channel) = match (secure_link, redacted) {
        (Some(l), _) => (Some(&l.text), Some(l.channel)),
        (_, Some(r)) => (Some(&r.text), Some(r.channel)),
        _ => (text.as_ref(), *channel),
    };
    let request_hash = request_hash(req);
    if let Some(text) = text {
        if !phone {
            return Err(invalid("to: a text message needs an E.164 phone number"));
        }
        if text.is_empty() || text.len() > MAX_TEXT_BYTES {
            return Err(invalid(&format!(
                "body.text: must be 1 to {MAX_TEXT_BYTES} bytes"
            )));
        }
        let channel = match channel.unwrap_or_default() {
            TextChannel::Rcs => Channel::Rcs,
            TextChannel::Sms => Channel::Sms,
        };
        return Ok(Prepared {
            channel,
            kind: PayloadKind::Text,
            group_id: None,
            epoch: None,
            payload: text.as_bytes().to_vec(),
            request_hash,
        });
    }
    if let Some(payload) = rcs_payload {
        if !phone {
            return Err(invalid("to: an RCS payload needs an E.164 phone number"));
        }
        if payload.is_empty() {
            return Err(invalid("body.rcs_payload: must not be empty"));
        }
        return Ok(Prepared {
            channel: Channel::Rcs,
            kind: PayloadKind::RcsPayload,
            group_id: None,
            epoch: None,
            payload: payload.clone(),
            request_hash,
        });
    }
    let Some(mls) = mls else {
        return Err(invalid("body: missing"));
    };
    let unknown_group = || {
        ApiError::new(
            ErrorCode::UnknownGroup,
            "no such conversation in this tenant",
        )
    };
    let group_bytes = hex::decode(&mls.conversation)
        .ok()
        .filter(|b| !b.is_empty())
        .ok_or_else(unknown_group)?;
    let group_id = hex::encode(&group_bytes);
    let epoch = engine::check_application(&mls.message, &group_bytes)?;
    let group = store
        .group(&group_id)
        .await?
        .filter(|g| g.tenant_id == tenant_id)
        .ok_or_else(unknown_group)?;
    if !engine::application_epoch_ok(epoch, group.epoch) {
        return Err(ApiError::new(
            ErrorCode::InvalidMessage,
            format!(
                "message is for epoch {epoch}; the conversation is at epoch {}",
                group.epoch
            ),
        ));
    }
    Ok(Prepared {
        channel: Channel::Inapp,
        kind: PayloadKind::Mls,
        group_id: Some(group_id),
        epoch: Some(epoch),
        payload: mls.message.clone(),
        request_hash,
    })
}

type Pending = (NewMessage, oneshot::Sender<ApiResult<AcceptOutcome>>);

/// Handle to the group-commit writer. Cheap to clone; the writer stops when the last handle
/// is dropped (after finishing the batch in hand).
#[derive(Clone)]
pub struct Acceptor {
    tx: mpsc::Sender<Pending>,
}

impl Acceptor {
    /// Start the writer: it takes up to `max_batch` waiting messages, stores them in one
    /// transaction, answers each, and wakes the workers.
    pub fn spawn(
        backend: Arc<dyn DeliveryBackend>,
        max_batch: usize,
        metrics: Metrics,
        wake: Arc<Notify>,
    ) -> Self {
        let max_batch = max_batch.max(1);
        let (tx, rx) = mpsc::channel(max_batch * 4);
        tokio::spawn(writer(rx, backend, max_batch, metrics, wake));
        Self { tx }
    }

    /// Store `message` with its job; resolves after the commit.
    pub async fn accept(&self, message: NewMessage) -> ApiResult<AcceptOutcome> {
        answered(self.enqueue(message).await?).await
    }

    /// Store each of `messages` with its job, each on its own (a batch request): every one is
    /// queued to the writer before any answer is awaited, so they share group commits.
    /// Answers in the same order.
    pub async fn accept_many(&self, messages: Vec<NewMessage>) -> Vec<ApiResult<AcceptOutcome>> {
        let mut answers = Vec::with_capacity(messages.len());
        for message in messages {
            answers.push(self.enqueue(message).await);
        }
        let mut out = Vec::with_capacity(answers.len());
        for answer in answers {
            out.push(match answer {
                Ok(answer) => answered(answer).await,
                Err(e) => Err(e),
            });
        }
        out
    }

    /// Hand `message` to the writer; the receiver yields its outcome after the commit.
    async fn enqueue(
        &self,
        message: NewMessage,
    ) -> ApiResult<oneshot::Receiver<ApiResult<AcceptOutcome>>> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((message, reply))
            .await
            .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the gateway is shutting down"))?;
        Ok(answer)
    }
}

/// The writer's answer to one enqueued message.
async fn answered(answer: oneshot::Receiver<ApiResult<AcceptOutcome>>) -> ApiResult<AcceptOutcome> {
    answer
        .await
        .map_err(|_| ApiError::internal("accept writer dropped a request"))?
}

async fn writer(
    mut rx: mpsc::Receiver<Pending>,
    backend: Arc<dyn DeliveryBackend>,
    max_batch: usize,
    metrics: Metrics,
    wake: Arc<Notify>,
) {
    // While every batch slot is busy, requests wait in the channel and the next batch grows.
    let slots = Arc::new(Semaphore::new(backend.accept_batches_in_flight().max(1)));
    let mut buf: Vec<Pending> = Vec::with_capacity(max_batch);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if rx.recv_many(&mut buf, max_batch).await == 0 {
            break;
        }
        let batch: Vec<Pending> = std::mem::take(&mut buf);
        let (backend, metrics, wake) = (backend.clone(), metrics.clone(), wake.clone());
        tokio::spawn(async move {
            store_batch(batch, &*backend, &metrics).await;
            drop(slot);
            // One worker; it wakes the next if the batch holds more jobs than it can take.
            wake.notify_one();
        });
    }
    // Let the batches in flight finish before the writer is gone.
    let _ = slots
        .acquire_many(u32::try_from(backend.accept_batches_in_flight().max(1)).unwrap_or(1))
        .await;
}

/// Store one batch and answer each of its requests.
async fn store_batch(batch: Vec<Pending>, backend: &dyn DeliveryBackend, metrics: &Metrics) {
    let (messages, replies): (Vec<NewMessage>, Vec<_>) = batch.into_iter().unzip();
    metrics.accept_batch.observe(messages.len() as f64);
    match backend.accept_messages(&messages).await {
        Ok(results) => {
            for (result, reply) in results.into_iter().zip(replies) {
                let _ = reply.send(result.map_err(ApiError::from));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batch = messages.len(), "accept batch failed");
            for reply in replies {
                let _ = reply.send(Err(ApiError::new(
                    ErrorCode::Internal,
                    "the message was not stored; safe to retry",
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealgate_proto::send::{MessageClass, MlsBody};

    fn text_req(text: &str, channel: Option<TextChannel>) -> SendRequest {
        SendRequest {
            to: "+15551234567".into(),
            class: MessageClass::Transactional,
            ttl_secs: None,
            body: MessageBody {
                text: Some(text.into()),
                channel,
                ..MessageBody::default()
            },
        }
    }

    #[test]
    fn hash_is_canonical_and_sensitive() {
        assert_eq!(
            request_hash(&text_req("hi", None)),
            request_hash(&text_req("hi", Some(TextChannel::Sms)))
        );
        assert_ne!(
            request_hash(&text_req("hi", None)),
            request_hash(&text_req("hi", Some(TextChannel::Rcs)))
        );
        assert_ne!(
            request_hash(&text_req("hi", None)),
            request_hash(&text_req("ho", None))
        );
        let mls = |c: &str| SendRequest {
            to: "alice".into(),
            class: MessageClass::Sensitive,
            ttl_secs: None,
            body: MessageBody {
                mls: Some(MlsBody {
                    conversation: c.into(),
                    message: vec![1],
                }),
                ..MessageBody::default()
            },
        };
        assert_eq!(request_hash(&mls("AB")), request_hash(&mls("ab")));
    }

    /// Keys stored before the hash was streamed must still match: the hash is SHA-256 of the
    /// canonical request's JSON bytes, exactly.
    #[test]
    fn hash_is_sha256_of_the_canonical_json() {
        let old = |req: &SendRequest| {
            let mut canonical = req.clone();
            if canonical.body.text.is_some() && canonical.body.channel.is_none() {
                canonical.body.channel = Some(TextChannel::Sms);
            }
            if let Some(mls) = &mut canonical.body.mls {
                mls.conversation = mls.conversation.to_ascii_lowercase();
            }
            let bytes = serde_json::to_vec(&canonical).unwrap();
            digest::digest(&digest::SHA256, &bytes).as_ref().to_vec()
        };
        let mls = |c: &str| SendRequest {
            to: "alice".into(),
            class: MessageClass::Sensitive,
            ttl_secs: Some(60),
            body: MessageBody {
                mls: Some(MlsBody {
                    conversation: c.into(),
                    message: vec![1, 2, 3],
                }),
                ..MessageBody::default()
            },
        };
        for req in [
            text_req("hi \"there\" é", None),
            text_req(&"x".repeat(5000), Some(TextChannel::Rcs)),
            mls("AbCd"),
            mls("abcd"),
        ] {
            assert_eq!(request_hash(&req), old(&req), "{req:?}");
        }
    }

    #[test]
    fn idempotency_keys() {
        assert!(valid_idempotency_key("order-42"));
        assert!(valid_idempotency_key(&"k".repeat(128)));
        assert!(!valid_idempotency_key(&"k".repeat(129)));
        assert!(!valid_idempotency_key(""));
        assert!(!valid_idempotency_key("has space"));
        assert!(!valid_idempotency_key("é"));
    }

    /// With several batches in flight (PostgreSQL), the same key sent twice at once lands in
    /// different concurrent batches; the unique key must still give one message per key, the
    /// other request answered from it.
    #[tokio::test]
    async fn concurrent_batches_keep_idempotency_exact() {
        let Some(pg) =
            crate::store::postgres::testing::fresh("concurrent_batches_keep_idempotency_exact")
                .await
        else {
            return;
        };
        let store = Arc::new(pg.store.clone());
        assert!(super::super::store::DeliveryStore::accept_batches_in_flight(&*store) > 1);
        let acceptor = Acceptor::spawn(
            store.clone(),
            8,
            Metrics::new().unwrap(),
            Arc::new(Notify::new()),
        );
        // Keys in blocks of one batch, each block sent twice in a row: a key's two requests
        // sit in neighbouring batches, which are in flight together.
        let keys: Vec<usize> = (0..12)
            .flat_map(|block| {
                let block: Vec<usize> = (block * 8..block * 8 + 8).collect();
                [block.clone(), block].concat()
            })
            .collect();
        let sends = keys
            .iter()
            .map(|k| acceptor.accept(super::super::conformance::message(&format!("k{k}"), 7, 0)));
        let outcomes = futures::future::join_all(sends).await;
        let mut accepted = std::collections::HashMap::new();
        let mut replayed = Vec::new();
        for (key, o) in keys.iter().zip(outcomes) {
            match o.unwrap() {
                AcceptOutcome::Accepted { message_id } => {
                    assert!(
                        accepted.insert(*key, message_id).is_none(),
                        "key {key} twice"
                    );
                }
                AcceptOutcome::Replayed { message_id } => replayed.push((*key, message_id)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(accepted.len(), 96);
        assert_eq!(replayed.len(), 96);
        for (key, id) in replayed {
            assert_eq!(
                accepted[&key], id,
                "a replay answers with the stored message"
            );
        }
        let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM send_messages")
            .fetch_one(&pg.store.pool)
            .await
            .unwrap();
        assert_eq!(rows, 96);
    }
}
