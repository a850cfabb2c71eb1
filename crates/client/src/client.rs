//! `SealClient`: one device, its sealed state, and the operations an application calls.
//!
//! This is where the pieces meet: the key store (state at rest), the MLS core (groups,
//! KeyPackages), the directory checks and the HTTP client. Every operation saves the state
//! before it tells the server anything that depends on it (KeyPackage secrets before
//! publishing them, ratchet state before sending a ciphertext, the cursor before acking). It
//! must never send or log plaintext, and never add a member whose KeyPackage does not match
//! the key directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sealgate_proto::DeviceIdentity;
use sealgate_proto::api::*;
use sealgate_proto::identity::valid_user_id;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::http::Api;
use crate::keystore::{self, Argon2Params, DeviceLock, KeySource, SealKey};
use crate::mls::{self, MlsClient, MlsGroup};
use crate::payload::{MAX_TEXT_BYTES, Payload};
use crate::state::{self, ConversationKind, DeviceState, STATE_VERSION, now_ms};
use crate::storage::{MlsData, MlsStorage, StorageError};

/// One-time KeyPackages published per batch.
pub const KEY_PACKAGE_BATCH: usize = 20;
/// Publish a new batch when the directory holds fewer one-time KeyPackages than this.
pub const KEY_PACKAGE_LOW_WATER: u64 = 10;
/// Attempts at a commit that keeps losing the race for the next epoch.
pub const MAX_COMMIT_ATTEMPTS: u32 = 5;

/// How to open or create a device's home directory.
#[derive(Clone)]
pub struct ClientOptions {
    /// Seal the state under this passphrase (Argon2id) instead of a key file.
    pub passphrase: Option<String>,
    /// Argon2id cost when sealing under a new passphrase.
    pub argon2: Argon2Params,
    /// How long to wait for another process holding the device lock.
    pub lock_timeout: Duration,
    /// Label of the device in the directory (only used by `init`).
    pub device_name: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            passphrase: None,
            argon2: Argon2Params::default(),
            lock_timeout: Duration::from_secs(30),
            device_name: None,
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("passphrase", &self.passphrase.as_ref().map(|_| "<set>"))
            .field("lock_timeout", &self.lock_timeout)
            .field("device_name", &self.device_name)
            .finish()
    }
}

impl ClientOptions {
    /// Defaults, with the passphrase taken from `SEAL_PASSPHRASE` when set and non-empty.
    pub fn from_env() -> Self {
        Self {
            passphrase: std::env::var("SEAL_PASSPHRASE")
                .ok()
                .filter(|p| !p.is_empty()),
            ..Self::default()
        }
    }
}

/// Who this device is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceSummary {
    pub tenant_id: String,
    pub user: String,
    pub device_id: String,
    pub server_url: String,
}

/// A conversation as listed by [`SealClient::conversations`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConversationInfo {
    pub conversation: String,
    /// `direct` or `group`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Users with at least one device in the group, sorted.
    pub members: Vec<String>,
    pub epoch: u64,
}

/// What the gateway said about a sent message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SendReceipt {
    pub conversation: String,
    pub message_id: String,
    pub recipients: u64,
}

/// A device: its sealed state, its MLS client and its connection to the gateway.
pub struct SealClient {
    pub(crate) home: PathBuf,
    _lock: DeviceLock,
    pub(crate) key: SealKey,
    pub(crate) state: DeviceState,
    pub(crate) storage: MlsStorage,
    pub(crate) mls: MlsClient,
    pub(crate) api: Api,
    /// Whether the KeyPackage stock was checked by this process yet.
    pub(crate) stock_checked: bool,
}

impl std::fmt::Debug for SealClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealClient")
            .field("home", &self.home)
            .field("user", &self.state.user)
            .field("device_id", &self.state.device_id)
            .finish_non_exhaustive()
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::CorruptState(e.to_string())
    }
}

impl SealClient {
    /// Set up a new device in `home`: generate its signing key, register it with the gateway at
    /// `server_url` using a one-time `enrollment_token`, publish KeyPackages, save everything.
    pub async fn init(
        home: &Path,
        server_url: &str,
        enrollment_token: &str,
        options: ClientOptions,
    ) -> Result<Self> {
        std::fs::create_dir_all(home).map_err(|e| Error::io(home, e))?;
        let lock = DeviceLock::acquire(home, options.lock_timeout).await?;
        if home.join(keystore::STATE_FILE).exists() {
            return Err(Error::AlreadyInitialized(home.to_path_buf()));
        }
        // A key file without a state is left over from an init that failed before saving;
        // nothing is sealed under it.
        let stale_key = home.join(keystore::KEY_FILE);
        if stale_key.exists() {
            std::fs::remove_file(&stale_key).map_err(|e| Error::io(&stale_key, e))?;
        }
        let source = match &options.passphrase {
            Some(p) => KeySource::Passphrase(p.clone(), options.argon2),
            None => KeySource::KeyFile,
        };
        let key = SealKey::create(home, &source)?;

        let (signing_secret, signing_public) = mls::generate_signing_key()?;
        let anonymous = Api::new(server_url, None)?;
        let reg = anonymous
            .register(&RegisterDeviceRequest {
                enrollment_token: enrollment_token.to_owned(),
                signature_key: signing_public.clone(),
                name: options.device_name.clone(),
            })
            .await?;
        let expected = DeviceIdentity::new(&reg.tenant_id, &reg.user, &reg.device_id)
            .map_err(|e| Error::BadResponse(format!("registration: {e}")))?;
        if reg.credential_identity.as_bytes() != expected.to_credential_bytes() {
            return Err(Error::BadResponse(
                "registration: credential identity does not name this device".into(),
            ));
        }

        let device = DeviceState {
            version: STATE_VERSION,
            server_url: server_url.trim_end_matches('/').to_owned(),
            tenant_id: reg.tenant_id,
            user: reg.user,
            device_id: reg.device_id,
            device_token: reg.device_token,
            credential_identity: reg.credential_identity,
            signing_secret,
            signing_public,
            conversations: Default::default(),
            cursor: 0,
            buffered: vec![],
            pending_events: vec![],
            directory: Default::default(),
            removed_groups: Default::default(),
            pending_uploads: vec![],
        };
        let mut client = Self::assemble(home, lock, key, device, MlsData::default())?;
        // The device token is shown once: save before anything else can fail.
        client.persist()?;
        client.publish_key_packages(true).await?;
        client.stock_checked = true;
        Ok(client)
    }

    /// Open the device in `home`, with the passphrase from `SEAL_PASSPHRASE` if set.
    pub async fn open(home: &Path) -> Result<Self> {
        Self::open_with(home, ClientOptions::from_env()).await
    }

    /// Open the device in `home`.
    pub async fn open_with(home: &Path, options: ClientOptions) -> Result<Self> {
        if !home.join(keystore::STATE_FILE).exists() {
            return Err(Error::NotInitialized(home.to_path_buf()));
        }
        let lock = DeviceLock::acquire(home, options.lock_timeout).await?;
        let (key, device, mls) = state::load(home, options.passphrase.as_deref())?;
        Self::assemble(home, lock, key, device, mls)
    }

    fn assemble(
        home: &Path,
        lock: DeviceLock,
        key: SealKey,
        state: DeviceState,
        mls: MlsData,
    ) -> Result<Self> {
        let storage = MlsStorage::new(mls);
        let client = mls::build_client(
            storage.clone(),
            state.credential_identity.as_bytes(),
            &state.signing_secret,
            &state.signing_public,
        );
        let api = Api::new(&state.server_url, Some(state.device_token.clone()))?;
        Ok(Self {
            home: home.to_path_buf(),
            _lock: lock,
            key,
            state,
            storage,
            mls: client,
            api,
            stock_checked: false,
        })
    }

    /// Seal and save the whole state. The commit point of every operation.
    pub(crate) fn persist(&self) -> Result<()> {
        state::save(
            &self.home,
            &self.key,
            &self.state,
            &self.storage.snapshot()?,
        )
    }

    /// Who this device is.
    pub fn device(&self) -> DeviceSummary {
        DeviceSummary {
            tenant_id: self.state.tenant_id.clone(),
            user: self.state.user.clone(),
            device_id: self.state.device_id.clone(),
            server_url: self.state.server_url.clone(),
        }
    }

    /// This device's entry in the key directory, as the gateway sees it.
    pub async fn directory_entry(&self) -> Result<DeviceInfo> {
        self.api.me().await
    }

    /// A conversation as the delivery service sees it (epoch and member devices).
    pub async fn server_view(&self, conversation: &str) -> Result<GroupInfoResponse> {
        if hex::decode(conversation).is_err() {
            return Err(Error::UnknownConversation(conversation.to_owned()));
        }
        self.api.group(conversation).await
    }

    /// The conversations this device is in, with their current members and epoch.
    pub fn conversations(&self) -> Result<Vec<ConversationInfo>> {
        let mut out = Vec::new();
        for (id, conv) in &self.state.conversations {
            let group = self.load_group(id)?;
            let (kind, peer) = match &conv.kind {
                ConversationKind::Direct { peer } => ("direct", Some(peer.clone())),
                ConversationKind::Group => ("group", None),
            };
            out.push(ConversationInfo {
                conversation: id.clone(),
                kind,
                peer,
                members: mls::users(&mls::roster(&group)),
                epoch: group.current_epoch(),
            });
        }
        Ok(out)
    }

    pub(crate) fn load_group(&self, conversation: &str) -> Result<MlsGroup> {
        let id = hex::decode(conversation)
            .map_err(|_| Error::UnknownConversation(conversation.to_owned()))?;
        if !self.storage.has_group(&id)? {
            return Err(Error::UnknownConversation(conversation.to_owned()));
        }
        Ok(self.mls.load_group(&id)?)
    }

    pub(crate) fn own_identity(&self) -> DeviceIdentity {
        DeviceIdentity {
            tenant_id: self.state.tenant_id.clone(),
            user_id: self.state.user.clone(),
            device_id: self.state.device_id.clone(),
        }
    }

    // -----------------------------------------------------------------------------------------
    // KeyPackages

    /// Generate and publish a batch of one-time KeyPackages (and a new last-resort one).
    async fn publish_key_packages(&mut self, with_last_resort: bool) -> Result<KeyPackageStock> {
        let key_packages = mls::generate_key_packages(&self.mls, KEY_PACKAGE_BATCH)?;
        let last_resort = if with_last_resort {
            Some(mls::generate_last_resort(&self.mls, &self.storage)?)
        } else {
            None
        };
        // Secrets first, then the public halves.
        self.persist()?;
        let stock = self
            .api
            .publish_key_packages(&PublishKeyPackagesRequest {
                key_packages,
                last_resort,
            })
            .await?;
        tracing::debug!(one_time = stock.one_time, "published KeyPackages");
        Ok(stock)
    }

    /// How many KeyPackages the directory holds for this device (read-only).
    pub async fn key_package_stock(&self) -> Result<KeyPackageStock> {
        self.api.stock().await
    }

    /// Publish more KeyPackages when the directory runs low; drop expired secrets.
    pub async fn top_up_key_packages(&mut self) -> Result<KeyPackageStock> {
        let pruned = self.storage.prune_expired((now_ms() / 1000) as u64)?;
        if pruned > 0 {
            self.persist()?;
        }
        let stock = self.api.stock().await?;
        self.stock_checked = true;
        if stock.one_time < KEY_PACKAGE_LOW_WATER || !stock.last_resort {
            return self.publish_key_packages(!stock.last_resort).await;
        }
        Ok(stock)
    }

    // -----------------------------------------------------------------------------------------
    // Conversations

    /// Send `text` to `user` in the 1:1 conversation with them, creating it if needed.
    pub async fn send_to_user(&mut self, user: &str, text: &str) -> Result<SendReceipt> {
        check_text(text)?;
        let conversation = self.direct_conversation(user).await?;
        self.send(&conversation, text).await
    }

    /// The newest 1:1 conversation with `user`, created if there is none.
    pub(crate) async fn direct_conversation(&mut self, user: &str) -> Result<String> {
        check_user(user)?;
        if user == self.state.user {
            return Err(Error::InvalidArgument(
                "cannot start a 1:1 conversation with yourself".into(),
            ));
        }
        let existing = self
            .state
            .conversations
            .iter()
            .filter(|(_, c)| matches!(&c.kind, ConversationKind::Direct { peer } if peer == user))
            .max_by_key(|(_, c)| c.created_at)
            .map(|(id, _)| id.clone());
        match existing {
            Some(id) => Ok(id),
            None => self.create_conversation(&[user.to_owned()], true).await,
        }
    }

    /// Encrypt `text` for a conversation and hand it to the gateway.
    pub async fn send(&mut self, conversation: &str, text: &str) -> Result<SendReceipt> {
        check_text(text)?;
        self.send_payload(conversation, &Payload::text(text, now_ms()))
            .await
    }

    /// Encrypt a payload for a conversation (at its current epoch) and hand it to the gateway.
    pub(crate) async fn send_payload(
        &mut self,
        conversation: &str,
        payload: &Payload,
    ) -> Result<SendReceipt> {
        self.load_group(conversation)?;
        // Catch up first so the message is sent in the group's current epoch.
        self.sync(None).await?;
        let mut group = self.load_group(conversation)?;
        let message = group.encrypt_application_message(&payload.encode(), vec![])?;
        // The ratchet moved: save before the ciphertext leaves, so a key is never reused.
        group.write_to_storage()?;
        self.persist()?;
        let resp = self
            .api
            .send_message(
                conversation,
                &SendMessageRequest {
                    message: message.to_bytes()?,
                },
            )
            .await?;
        Ok(SendReceipt {
            conversation: conversation.to_owned(),
            message_id: resp.message_id,
            recipients: resp.recipients,
        })
    }

    /// Fetch and process the mailbox, then return every event not yet returned. With `wait`,
    /// long-poll up to that long when nothing is pending.
    pub async fn receive(&mut self, wait: Option<Duration>) -> Result<Vec<Event>> {
        let handled = self.sync(wait).await?;
        if (handled > 0 || !self.stock_checked)
            && let Err(e) = self.top_up_key_packages().await
        {
            tracing::warn!(error = %e, "KeyPackage top-up failed");
        }
        let events = std::mem::take(&mut self.state.pending_events);
        if !events.is_empty() {
            self.persist()?;
        }
        Ok(events)
    }
}

pub(crate) fn check_user(user: &str) -> Result<()> {
    if valid_user_id(user) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("invalid user id {user:?}")))
    }
}

pub(crate) fn check_text(text: &str) -> Result<()> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(Error::InvalidArgument(format!(
            "text longer than {MAX_TEXT_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Errors worth retrying later (network, server trouble) rather than refusing the content.
pub(crate) fn is_transient(e: &Error) -> bool {
    match e {
        Error::Transport(_) => true,
        Error::Server(p) => p.status >= 500 || p.status == 429,
        _ => false,
    }
}
