//! Creating conversations and changing their membership, with the commit race handled.
//!
//! The delivery service accepts exactly one commit per epoch. A commit that loses (409
//! `stale_epoch`) is dropped unapplied, the mailbox (holding the winner) is processed, and the
//! change is planned again at the new epoch, a bounded number of times. Planning is redone
//! from the current roster each time, so a change a concurrent commit already made is not
//! made twice. This module must never apply a commit the delivery service did not accept.

use mls_rs::MlsMessage;
use mls_rs::group::CommitOutput;
use sealgate_proto::ErrorCode;
use sealgate_proto::api::{CreateGroupRequest, SubmitCommitRequest};

use crate::client::{MAX_COMMIT_ATTEMPTS, SealClient, check_user};
use crate::error::{Error, Result};
use crate::mls::{self, MlsGroup, RosterEntry};
use crate::state::{Conversation, ConversationKind, now_ms};
use crate::verify;

impl SealClient {
    /// Create a group with all devices of `members` (and our own other devices).
    pub async fn create_group(&mut self, members: &[String]) -> Result<String> {
        if members.is_empty() {
            return Err(Error::InvalidArgument("a group needs members".into()));
        }
        self.create_conversation(members, false).await
    }

    pub(crate) async fn create_conversation(
        &mut self,
        members: &[String],
        direct: bool,
    ) -> Result<String> {
        let mut users: Vec<String> = Vec::new();
        for m in members {
            check_user(m)?;
            if *m != self.state.user && !users.contains(m) {
                users.push(m.clone());
            }
        }
        if users.is_empty() {
            return Err(Error::InvalidArgument(
                "a conversation needs someone besides you".into(),
            ));
        }
        let mut key_packages = Vec::new();
        for user in &users {
            key_packages.extend(self.claim_verified(user).await?);
        }
        let own = self.state.user.clone();
        key_packages.extend(self.claim_verified(&own).await?);

        let mut group_id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut group_id)
            .map_err(|_| Error::Crypto("random source failed".into()))?;
        let mut group = self.mls.create_group_with_id(
            group_id.to_vec(),
            Default::default(),
            Default::default(),
            None,
        )?;
        let group_info = group.group_info_message(true)?.to_bytes()?;
        group.write_to_storage()?;
        let conversation = hex::encode(group_id);
        if let Err(e) = self
            .api
            .create_group(&CreateGroupRequest {
                group_info,
                ratchet_tree: None,
            })
            .await
        {
            self.storage.delete_group(&group_id)?;
            return Err(e);
        }
        let kind = if direct {
            ConversationKind::Direct {
                peer: users[0].clone(),
            }
        } else {
            ConversationKind::Group
        };
        self.state.conversations.insert(
            conversation.clone(),
            Conversation {
                kind,
                created_at: now_ms(),
            },
        );
        self.persist()?;
        self.add_key_packages(&conversation, key_packages).await?;
        Ok(conversation)
    }

    /// Add every device of `user` to a conversation. Returns the new epoch.
    pub async fn add_member(&mut self, conversation: &str, user: &str) -> Result<u64> {
        check_user(user)?;
        self.load_group(conversation)?;
        let key_packages = self.claim_verified(user).await?;
        if key_packages.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{user} has no device to add"
            )));
        }
        self.add_key_packages(conversation, key_packages).await
    }

    async fn add_key_packages(
        &mut self,
        conversation: &str,
        key_packages: Vec<MlsMessage>,
    ) -> Result<u64> {
        let direct = matches!(
            self.state.conversations.get(conversation).map(|c| &c.kind),
            Some(ConversationKind::Direct { .. })
        );
        self.commit_with_retry(conversation, |group, roster| {
            let mut builder = group.commit_builder();
            let mut any = false;
            for kp in &key_packages {
                let Ok(signing) = mls::key_package_identity(kp) else {
                    continue;
                };
                let device = verify::claimed_identity(signing).ok();
                // Skip devices a concurrent commit already added.
                if roster
                    .iter()
                    .any(|e| e.identity.is_some() && e.identity == device)
                {
                    continue;
                }
                builder = builder.add_member(kp.clone())?;
                any = true;
            }
            if !any {
                return Ok(None);
            }
            let output = builder
                .set_group_info_ext(mls::conversation_kind_ext(direct))
                .build()?;
            Ok(Some(output))
        })
        .await
    }

    /// Remove every device of `user` from a conversation. Returns the new epoch.
    pub async fn remove_member(&mut self, conversation: &str, user: &str) -> Result<u64> {
        check_user(user)?;
        if user == self.state.user {
            return Err(Error::InvalidArgument(
                "removing yourself is not supported; ask another member".into(),
            ));
        }
        let group = self.load_group(conversation)?;
        if !mls::users(&mls::roster(&group)).iter().any(|u| u == user) {
            return Err(Error::InvalidArgument(format!(
                "{user} is not a member of {conversation}"
            )));
        }
        self.commit_with_retry(conversation, |group, roster| {
            let mut builder = group.commit_builder();
            let mut any = false;
            for e in roster {
                if e.identity.as_ref().is_some_and(|i| i.user_id == user) {
                    builder = builder.remove_member(e.index)?;
                    any = true;
                }
            }
            if !any {
                return Ok(None);
            }
            Ok(Some(builder.build()?))
        })
        .await
    }

    /// Build a commit with `plan` at the group's current epoch and submit it; when another
    /// commit won the epoch (409 `stale_epoch`), process the mailbox (which holds the winner)
    /// and plan again, up to [`MAX_COMMIT_ATTEMPTS`] times. `plan` returns `None` when there is
    /// nothing (left) to do.
    pub(crate) async fn commit_with_retry<F>(
        &mut self,
        conversation: &str,
        mut plan: F,
    ) -> Result<u64>
    where
        F: FnMut(&mut MlsGroup, &[RosterEntry]) -> Result<Option<CommitOutput>>,
    {
        for attempt in 1..=MAX_COMMIT_ATTEMPTS {
            let mut group = self.load_group(conversation)?;
            let roster = mls::roster(&group);
            let Some(output) = plan(&mut group, &roster)? else {
                return Ok(group.current_epoch());
            };
            let request = SubmitCommitRequest {
                commit: output.commit_message().to_bytes()?,
                welcome: output
                    .welcome_messages()
                    .first()
                    .map(|w| w.to_bytes())
                    .transpose()?,
                group_info: None,
            };
            match self.api.submit_commit(conversation, &request).await {
                Ok(resp) => {
                    group.apply_pending_commit()?;
                    group.write_to_storage()?;
                    self.persist()?;
                    if resp.epoch != group.current_epoch() {
                        tracing::warn!(
                            server = resp.epoch,
                            local = group.current_epoch(),
                            "gateway reports another epoch than the applied commit"
                        );
                    }
                    return Ok(group.current_epoch());
                }
                Err(e) if matches!(e.code(), Some(ErrorCode::StaleEpoch)) => {
                    tracing::debug!(attempt, "commit lost the race; syncing");
                    // The pending commit dies with `group`; the stored state never saw it.
                    drop(group);
                    self.sync(None).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::CommitContention(MAX_COMMIT_ATTEMPTS))
    }
}
