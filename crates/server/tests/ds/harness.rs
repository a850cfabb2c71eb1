//! Helpers for the DS tests: a device with its own mls-rs client (so KeyPackage secrets stay
//! with the client that made them), and typed calls to the DS routes.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mls_rs::client_builder::MlsConfig;
use mls_rs::{Client, ExtensionList, Group, MlsMessage};
use reqwest::StatusCode;
use sealgate_proto::Problem;
use sealgate_proto::api::{
    AckResponse, CreateGroupRequest, EventKind, GroupInfoResponse, MailboxEvent, MailboxResponse,
    SendMessageResponse, SubmitCommitRequest, SubmitCommitResponse,
};

use crate::support::{TestDevice, problem};

/// A device and the mls-rs client acting for it.
pub struct Peer<C: MlsConfig> {
    pub dev: TestDevice,
    pub client: Client<C>,
    pub group: Option<Group<C>>,
}

pub fn peer(dev: TestDevice) -> Peer<impl MlsConfig> {
    let client = dev.mls_client();
    Peer {
        dev,
        client,
        group: None,
    }
}

impl<C: MlsConfig> Peer<C> {
    pub fn group(&mut self) -> Result<&mut Group<C>> {
        self.group.as_mut().context("peer has no group")
    }

    /// A fresh KeyPackage from this peer's own client.
    pub fn key_package(&self) -> Result<MlsMessage> {
        Ok(self.client.generate_key_package_message(
            ExtensionList::default(),
            ExtensionList::default(),
            None,
        )?)
    }

    pub fn group_id_hex(&self) -> Result<String> {
        Ok(hex::encode(
            self.group.as_ref().context("no group")?.group_id(),
        ))
    }
}

/// The DS routes over HTTP.
#[derive(Clone, Copy)]
pub struct Ds<'a> {
    pub http: &'a reqwest::Client,
    pub base: &'a str,
}

impl<'a> Ds<'a> {
    pub fn new(http: &'a reqwest::Client, base: &'a str) -> Self {
        Self { http, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn create_group_raw(
        &self,
        dev: &TestDevice,
        group_info: Vec<u8>,
    ) -> Result<reqwest::Response> {
        Ok(self
            .http
            .post(self.url("/v1/groups"))
            .bearer_auth(&dev.token)
            .json(&CreateGroupRequest {
                group_info,
                ratchet_tree: None,
            })
            .send()
            .await?)
    }

    /// Create an MLS group on `peer` and register it with the DS.
    pub async fn create_group<C: MlsConfig>(
        &self,
        peer: &mut Peer<C>,
    ) -> Result<GroupInfoResponse> {
        let group =
            peer.client
                .create_group(ExtensionList::default(), ExtensionList::default(), None)?;
        let gi = group.group_info_message(true)?.to_bytes()?;
        peer.group = Some(group);
        let resp = self.create_group_raw(&peer.dev, gi).await?;
        ensure!(
            resp.status() == StatusCode::CREATED,
            "create group: {}",
            resp.status()
        );
        Ok(resp.json().await?)
    }

    pub async fn get_group(&self, dev: &TestDevice, gid: &str) -> Result<reqwest::Response> {
        Ok(self
            .http
            .get(self.url(&format!("/v1/groups/{gid}")))
            .bearer_auth(&dev.token)
            .send()
            .await?)
    }

    pub async fn group(&self, dev: &TestDevice, gid: &str) -> Result<GroupInfoResponse> {
        let resp = self.get_group(dev, gid).await?;
        ensure!(
            resp.status() == StatusCode::OK,
            "get group: {}",
            resp.status()
        );
        Ok(resp.json().await?)
    }

    pub async fn submit(
        &self,
        dev: &TestDevice,
        gid: &str,
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
        group_info: Option<Vec<u8>>,
    ) -> Result<reqwest::Response> {
        Ok(self
            .http
            .post(self.url(&format!("/v1/groups/{gid}/commits")))
            .bearer_auth(&dev.token)
            .json(&SubmitCommitRequest {
                commit,
                welcome,
                group_info,
            })
            .send()
            .await?)
    }

    pub async fn send_raw(
        &self,
        dev: &TestDevice,
        gid: &str,
        message: Vec<u8>,
    ) -> Result<reqwest::Response> {
        Ok(self
            .http
            .post(self.url(&format!("/v1/groups/{gid}/messages")))
            .bearer_auth(&dev.token)
            .json(&serde_json::json!({ "message": sealgate_proto::b64::encode(&message) }))
            .send()
            .await?)
    }

    /// Encrypt `text` in `peer`'s group and send it.
    pub async fn send<C: MlsConfig>(
        &self,
        peer: &mut Peer<C>,
        text: &[u8],
    ) -> Result<SendMessageResponse> {
        let gid = peer.group_id_hex()?;
        let msg = peer.group()?.encrypt_application_message(text, vec![])?;
        let resp = self.send_raw(&peer.dev, &gid, msg.to_bytes()?).await?;
        ensure!(
            resp.status() == StatusCode::ACCEPTED,
            "send: {}",
            resp.status()
        );
        Ok(resp.json().await?)
    }

    pub async fn mailbox(
        &self,
        dev: &TestDevice,
        after: i64,
        wait: u64,
    ) -> Result<Vec<MailboxEvent>> {
        let resp = self
            .http
            .get(self.url(&format!("/v1/mailbox?after={after}&wait={wait}")))
            .bearer_auth(&dev.token)
            .timeout(Duration::from_secs(wait + 10))
            .send()
            .await?;
        ensure!(
            resp.status() == StatusCode::OK,
            "mailbox: {}",
            resp.status()
        );
        Ok(resp.json::<MailboxResponse>().await?.events)
    }

    pub async fn ack(&self, dev: &TestDevice, up_to: i64) -> Result<u64> {
        let resp = self
            .http
            .post(self.url("/v1/mailbox/ack"))
            .bearer_auth(&dev.token)
            .json(&serde_json::json!({ "up_to": up_to }))
            .send()
            .await?;
        ensure!(resp.status() == StatusCode::OK, "ack: {}", resp.status());
        Ok(resp.json::<AckResponse>().await?.removed)
    }

    /// `adder` adds `joiner` with a commit + Welcome; the joiner takes the Welcome from its
    /// mailbox and joins. Returns the new epoch.
    pub async fn add<C1: MlsConfig, C2: MlsConfig>(
        &self,
        adder: &mut Peer<C1>,
        joiner: &mut Peer<C2>,
    ) -> Result<u64> {
        let gid = adder.group_id_hex()?;
        let kp = joiner.key_package()?;
        let group = adder.group()?;
        let out = group.commit_builder().add_member(kp)?.build()?;
        group.apply_pending_commit()?;
        let gi = group.group_info_message(true)?.to_bytes()?;
        let welcome = out
            .welcome_messages
            .first()
            .context("welcome")?
            .to_bytes()?;
        let resp = self
            .submit(
                &adder.dev,
                &gid,
                out.commit_message.to_bytes()?,
                Some(welcome),
                Some(gi),
            )
            .await?;
        ensure!(resp.status() == StatusCode::OK, "add: {}", resp.status());
        let epoch = resp.json::<SubmitCommitResponse>().await?.epoch;
        let events = self.mailbox(&joiner.dev, 0, 0).await?;
        let w = events
            .iter()
            .rev()
            .find(|e| e.kind == EventKind::Welcome && e.group_id == gid)
            .context("welcome in the joiner's mailbox")?;
        let welcome = MlsMessage::from_bytes(&w.message)?;
        let (group, _) = joiner.client.join_group(None, &welcome, None)?;
        ensure!(group.current_epoch() == epoch);
        joiner.group = Some(group);
        self.ack(&joiner.dev, w.seq).await?;
        Ok(epoch)
    }

    /// Process every commit for `peer`'s group waiting in its mailbox, then ack them all.
    pub async fn catch_up<C: MlsConfig>(&self, peer: &mut Peer<C>) -> Result<Vec<MailboxEvent>> {
        let events = self.mailbox(&peer.dev, 0, 0).await?;
        let gid = peer.group_id_hex()?;
        for e in &events {
            if e.kind == EventKind::Commit && e.group_id == gid {
                peer.group()?
                    .process_incoming_message(MlsMessage::from_bytes(&e.message)?)?;
            }
        }
        if let Some(last) = events.last() {
            self.ack(&peer.dev, last.seq).await?;
        }
        Ok(events)
    }
}

/// An error response's status and problem code.
pub async fn code(resp: reqwest::Response) -> Result<(u16, Problem)> {
    let (status, p) = problem(resp).await?;
    Ok((status.as_u16(), p))
}
