//! Processing the mailbox: Welcomes, commits and application messages, exactly once each.
//!
//! Events are handled in `seq` order. Anything that changes state is saved (together with the
//! new cursor) before the mailbox is acknowledged, so a crash between the two only makes the
//! client skip `seq <= cursor` on redelivery. Joins and commits are accepted only if every new
//! or changed member matches the key directory; otherwise the group's in-memory change is
//! discarded and an error event is emitted. A message for an epoch (or group) not reached yet
//! is buffered and retried after later events. The sender of a message is the MLS sender,
//! never the envelope. This module must never log plaintext.

use std::time::Duration;

use mls_rs::group::{CommitEffect, ReceivedMessage};
use sealgate_proto::api::{EventKind, MailboxEvent};

use crate::client::{SealClient, is_transient};
use crate::error::{Error, Result};
use crate::event::{AttachmentMessage, Event, MembershipKind, TextMessage};
use crate::mls::{self, MlsGroup, RosterEntry};
use crate::payload::Payload;
use crate::state::{Buffered, Conversation, ConversationKind, now_ms};

/// Mailbox page size.
const PAGE: u32 = 100;
/// Buffered messages older than this are given up on.
const BUFFER_MAX_AGE_MS: i64 = 10 * 60 * 1000;
/// At most this many messages are buffered.
const BUFFER_MAX_ITEMS: usize = 1000;

/// What became of one mailbox event.
enum Outcome {
    /// Processed (or deliberately dropped); events, if any, are pending.
    Done,
    /// Not processable yet: keep it for later.
    Buffer,
}

impl SealClient {
    /// Fetch, process, save, acknowledge; repeat while full pages come. Returns how many
    /// mailbox events were handled. Produced events go to `state.pending_events`.
    pub(crate) async fn sync(&mut self, wait: Option<Duration>) -> Result<usize> {
        let mut wait = if self.state.pending_events.is_empty() {
            wait
        } else {
            None
        };
        let mut handled = 0;
        loop {
            let page = self.api.mailbox(self.state.cursor, PAGE, wait).await?;
            wait = None;
            let full = page.events.len() >= PAGE as usize;
            if page.events.is_empty() {
                break;
            }
            let mut failure = None;
            for event in page.events {
                if event.seq <= self.state.cursor {
                    continue; // redelivered after a crash between save and ack
                }
                let seq = event.seq;
                match self.handle(event.clone()).await {
                    Ok(Outcome::Done) => {}
                    Ok(Outcome::Buffer) => self.buffer(event),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
                self.state.cursor = seq;
                handled += 1;
            }
            if failure.is_none() {
                self.retry_buffered().await;
            }
            self.persist()?;
            self.api.ack(self.state.cursor).await?;
            if let Some(e) = failure {
                return Err(e);
            }
            if !full {
                break;
            }
        }
        Ok(handled)
    }

    fn buffer(&mut self, event: MailboxEvent) {
        self.state.buffered.push(Buffered {
            event,
            buffered_at: now_ms(),
        });
        while self.state.buffered.len() > BUFFER_MAX_ITEMS {
            let dropped = self.state.buffered.remove(0);
            self.emit(Event::error(
                &dropped.event.group_id,
                "dropped an undecryptable message: too many buffered",
            ));
        }
    }

    fn emit(&mut self, event: Event) {
        self.state.pending_events.push(event);
    }

    /// Retry buffered messages until none makes progress; expire old ones.
    async fn retry_buffered(&mut self) {
        loop {
            let mut progress = false;
            let items = std::mem::take(&mut self.state.buffered);
            let mut keep = Vec::new();
            for item in items {
                if progress {
                    // Re-check everything after any progress, in order.
                    keep.push(item);
                    continue;
                }
                match self.handle(item.event.clone()).await {
                    Ok(Outcome::Done) => progress = true,
                    Ok(Outcome::Buffer) | Err(_) => {
                        if now_ms() - item.buffered_at > BUFFER_MAX_AGE_MS {
                            self.emit(Event::error(
                                &item.event.group_id,
                                "gave up on a message for an epoch this device never reached",
                            ));
                        } else {
                            keep.push(item);
                        }
                    }
                }
            }
            self.state.buffered = keep;
            if !progress {
                break;
            }
        }
    }

    /// Handle one event. `Err` only for transient trouble (the event stays unprocessed);
    /// refusals become error events.
    async fn handle(&mut self, event: MailboxEvent) -> Result<Outcome> {
        let conversation = event.group_id.clone();
        let result = match event.kind {
            EventKind::Welcome => self.handle_welcome(&event).await,
            EventKind::Commit | EventKind::Application => self.handle_group(&event).await,
        };
        match result {
            Ok(o) => Ok(o),
            Err(e) if is_transient(&e) => Err(e),
            Err(e) => {
                tracing::debug!(seq = event.seq, error = %e, "mailbox event refused");
                self.emit(Event::error(&conversation, e.to_string()));
                Ok(Outcome::Done)
            }
        }
    }

    async fn handle_welcome(&mut self, event: &MailboxEvent) -> Result<Outcome> {
        let message = mls::decode(&event.message)?;
        let (mut group, info) = self.mls.join_group(None, &message, None)?;
        let conversation = hex::encode(group.group_id());
        if self.storage.has_group(group.group_id())? {
            return Ok(Outcome::Done); // already joined
        }
        let roster = mls::roster(&group);
        for entry in &roster {
            if let Err(e) = self.verify(&entry.signing, None).await {
                if is_transient(&e) {
                    return Err(e);
                }
                // `group` is dropped unsaved: nothing joined, the KeyPackage secret stays.
                self.emit(Event::error(&conversation, format!("refused to join: {e}")));
                return Ok(Outcome::Done);
            }
        }
        group.write_to_storage()?;
        let others: Vec<String> = mls::users(&roster)
            .into_iter()
            .filter(|u| *u != self.state.user)
            .collect();
        let kind = match others.as_slice() {
            [peer] if mls::is_direct(&info.group_info_extensions) => {
                ConversationKind::Direct { peer: peer.clone() }
            }
            _ => ConversationKind::Group,
        };
        self.state.conversations.insert(
            conversation.clone(),
            Conversation {
                kind,
                created_at: now_ms(),
            },
        );
        self.state.removed_groups.remove(&conversation);
        let by = user_at(&roster, info.sender);
        let me = self.state.user.clone();
        self.emit(Event::membership(
            &conversation,
            MembershipKind::Joined,
            &me,
            &by,
        ));
        Ok(Outcome::Done)
    }

    async fn handle_group(&mut self, event: &MailboxEvent) -> Result<Outcome> {
        let conversation = event.group_id.clone();
        if self.state.removed_groups.contains(&conversation) {
            return Ok(Outcome::Done); // we were removed: drop
        }
        let Ok(group_id) = hex::decode(&conversation) else {
            return Err(Error::BadResponse(
                "mailbox event with a bad group id".into(),
            ));
        };
        if !self.storage.has_group(&group_id)? {
            return Ok(Outcome::Buffer); // its Welcome has not come (yet)
        }
        let message = mls::decode(&event.message)?;
        if message.group_id() != Some(group_id.as_slice()) {
            return Err(Error::BadResponse(
                "mailbox event names another group than its message".into(),
            ));
        }
        let epoch = message
            .epoch()
            .ok_or_else(|| Error::BadResponse("not a group message".into()))?;
        let group = self.mls.load_group(&group_id)?;
        let current = group.current_epoch();
        if epoch > current {
            return Ok(Outcome::Buffer);
        }
        match event.kind {
            EventKind::Commit if epoch < current => {
                tracing::debug!(epoch, current, "ignoring a commit for a past epoch");
                Ok(Outcome::Done)
            }
            EventKind::Commit => self.apply_commit(group, message, event).await,
            _ => self.decrypt_application(group, message, event),
        }
    }

    async fn apply_commit(
        &mut self,
        mut group: MlsGroup,
        message: mls_rs::MlsMessage,
        event: &MailboxEvent,
    ) -> Result<Outcome> {
        let conversation = event.group_id.clone();
        let before = mls::roster(&group);
        let ReceivedMessage::Commit(desc) = group.process_incoming_message(message)? else {
            return Err(Error::BadResponse("commit event is not a commit".into()));
        };
        let by = user_at(&before, desc.committer);
        match desc.effect {
            CommitEffect::Removed { .. } => {
                self.storage.delete_group(group.group_id())?;
                self.state.conversations.remove(&conversation);
                self.state.removed_groups.insert(conversation.clone());
                self.state
                    .buffered
                    .retain(|b| b.event.group_id != conversation);
                let me = self.state.user.clone();
                self.emit(Event::membership(
                    &conversation,
                    MembershipKind::Removed,
                    &me,
                    &by,
                ));
                Ok(Outcome::Done)
            }
            CommitEffect::NewEpoch(_) => {
                let after = mls::roster(&group);
                for entry in after.iter().filter(|e| !before.contains(e)) {
                    if let Err(e) = self.verify(&entry.signing, None).await {
                        if is_transient(&e) {
                            return Err(e);
                        }
                        // Discard the in-memory change: the stored state is still the old epoch.
                        self.emit(Event::error(
                            &conversation,
                            format!("refused a commit by {by}: {e}"),
                        ));
                        return Ok(Outcome::Done);
                    }
                }
                group.write_to_storage()?;
                let old_users = mls::users(&before);
                let new_users = mls::users(&after);
                for user in new_users.iter().filter(|u| !old_users.contains(u)) {
                    self.emit(Event::membership(
                        &conversation,
                        MembershipKind::MemberAdded,
                        user,
                        &by,
                    ));
                }
                for user in old_users.iter().filter(|u| !new_users.contains(u)) {
                    self.emit(Event::membership(
                        &conversation,
                        MembershipKind::MemberRemoved,
                        user,
                        &by,
                    ));
                }
                Ok(Outcome::Done)
            }
            CommitEffect::ReInit(_) => Err(Error::BadResponse(
                "group re-initialisation is not supported".into(),
            )),
        }
    }

    fn decrypt_application(
        &mut self,
        mut group: MlsGroup,
        message: mls_rs::MlsMessage,
        event: &MailboxEvent,
    ) -> Result<Outcome> {
        let conversation = event.group_id.clone();
        let ReceivedMessage::ApplicationMessage(desc) = group.process_incoming_message(message)?
        else {
            return Err(Error::BadResponse(
                "application event is not an application message".into(),
            ));
        };
        // Save the ratchet before anything else: the key is gone once used.
        group.write_to_storage()?;
        let sender = group
            .member_at_index(desc.sender_index)
            .and_then(|m| crate::verify::claimed_identity(&m.signing_identity).ok())
            .ok_or_else(|| Error::BadResponse("message from an unknown member".into()))?;
        if sender.user_id != event.sender_user || sender.device_id != event.sender_device {
            self.emit(Event::warning(
                &conversation,
                format!(
                    "envelope names {}/{} but the message is signed by {}/{}",
                    event.sender_user, event.sender_device, sender.user_id, sender.device_id
                ),
            ));
        }
        match Payload::decode(desc.data()) {
            Ok(Payload::Text { text, sent_at }) => self.emit(Event::Message(TextMessage {
                conversation,
                from: sender.user_id,
                device: sender.device_id,
                text,
                sent_at,
            })),
            Ok(Payload::Attachment {
                attachment,
                text,
                sent_at,
            }) => match attachment.check_labels().and_then(|()| attachment.key()) {
                Ok(_) => self.emit(Event::Attachment(AttachmentMessage {
                    conversation,
                    from: sender.user_id,
                    device: sender.device_id,
                    attachment,
                    text,
                    sent_at,
                })),
                Err(e) => self.emit(Event::error(
                    &conversation,
                    format!("unusable attachment from {}: {e}", sender.user_id),
                )),
            },
            Err(e) => self.emit(Event::error(&conversation, e.to_string())),
        }
        Ok(Outcome::Done)
    }
}

/// The user of the leaf at `index`, or `"unknown"`.
fn user_at(roster: &[RosterEntry], index: u32) -> String {
    roster
        .iter()
        .find(|e| e.index == index)
        .and_then(|e| e.identity.as_ref())
        .map(|i| i.user_id.clone())
        .unwrap_or_else(|| "unknown".into())
}
