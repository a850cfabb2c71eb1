//! JSON bodies of the gateway's HTTP API (`/v1/...`).
//!
//! Binary fields are standard base64 of RFC 9420 `MLSMessage` bytes (KeyPackage, Welcome,
//! GroupInfo, PublicMessage commit, PrivateMessage application message). Handshake messages
//! (commits) must be PublicMessage so the delivery service can follow the group; application
//! messages must be PrivateMessage. Nothing here ever carries plaintext of a conversation.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

// ---------------------------------------------------------------------------------------------
// Operator and tenant administration

/// `POST /v1/admin/tenants` (operator token).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    /// Unique tenant name (same alphabet as user ids).
    pub name: String,
}

/// A new tenant and its first API key. The key is shown once; only its hash is stored.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateTenantResponse {
    pub tenant_id: String,
    pub name: String,
    pub api_key: String,
}

/// One tenant as listed by `GET /v1/admin/tenants`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantInfo {
    pub tenant_id: String,
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantList {
    pub tenants: Vec<TenantInfo>,
}

/// `POST /v1/enrollments` (tenant API key) or `POST /v1/admin/tenants/{tenant_id}/enrollments`
/// (operator token): a one-time token that lets one device of `user` register.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentRequest {
    /// The user the device will belong to; created on first enrollment.
    pub user: String,
    /// Optional E.164 phone number bound to the user.
    #[serde(default)]
    pub phone: Option<String>,
    /// Token lifetime in seconds (default 86400, at most 30 days).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentResponse {
    /// One-time secret; shown once, stored hashed.
    pub token: String,
    pub tenant_id: String,
    pub user: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// A user of a tenant and its devices (`GET /v1/users`, `GET /v1/users/{user}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserInfo {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    pub devices: Vec<DeviceInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserInfo>,
}

// ---------------------------------------------------------------------------------------------
// Devices and the key directory

/// `POST /v1/devices` (no auth header; the enrollment token is the credential).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDeviceRequest {
    pub enrollment_token: String,
    /// The device's MLS signature public key (Ed25519, raw 32 bytes), base64.
    #[serde(with = "crate::b64")]
    #[schema(value_type = String, format = Byte)]
    pub signature_key: Vec<u8>,
    /// Free-form label shown to the user ("alice's laptop"); at most 64 chars.
    #[serde(default)]
    pub name: Option<String>,
}

/// The registered device. `device_token` is shown once and authenticates all device calls
/// (`Authorization: Bearer <device_token>`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterDeviceResponse {
    pub tenant_id: String,
    pub user: String,
    pub device_id: String,
    pub device_token: String,
    /// The exact identity string the device's MLS basic credential must carry.
    pub credential_identity: String,
}

/// Public directory entry of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceInfo {
    pub device_id: String,
    pub user: String,
    /// Ed25519 signature public key, base64.
    #[serde(with = "crate::b64")]
    #[schema(value_type = String, format = Byte)]
    pub signature_key: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; set once the device is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}

/// `POST /v1/keypackages` (device token): publish one-time KeyPackages and optionally replace
/// the last-resort one. Each must be an `MLSMessage` KeyPackage whose credential names this
/// device and whose signature key is the registered one. All or nothing: one bad KeyPackage
/// refuses the whole batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishKeyPackagesRequest {
    #[serde(with = "crate::b64::vec", default)]
    #[schema(value_type = Vec<String>)]
    pub key_packages: Vec<Vec<u8>>,
    #[serde(with = "crate::b64::option", default)]
    #[schema(value_type = Option<String>, format = Byte)]
    pub last_resort: Option<Vec<u8>>,
}

/// How many KeyPackages the directory still holds for the calling device. The SDK tops up
/// when `one_time` falls below its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyPackageStock {
    pub one_time: u64,
    pub last_resort: bool,
}

/// `POST /v1/keypackages/claim` (device token or tenant API key): one KeyPackage for each
/// active device of `user` (excluding the caller's own device). Each one-time KeyPackage is
/// handed out exactly once; the last-resort one is served when none is left.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimKeyPackagesRequest {
    pub user: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClaimedKeyPackage {
    pub device_id: String,
    #[serde(with = "crate::b64")]
    #[schema(value_type = String, format = Byte)]
    pub key_package: Vec<u8>,
    pub last_resort: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClaimKeyPackagesResponse {
    pub user: String,
    pub key_packages: Vec<ClaimedKeyPackage>,
}

// ---------------------------------------------------------------------------------------------
// Delivery service: groups, commits, messages, mailbox

/// `POST /v1/groups` (device token): register a new group with the DS. `group_info` is the
/// creator's GroupInfo `MLSMessage` at epoch 0 (with the ratchet-tree extension or with
/// `ratchet_tree` given); the DS observes the group as a non-member from then on. The creator
/// must be the only member.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    #[serde(with = "crate::b64")]
    #[schema(value_type = String, format = Byte)]
    pub group_info: Vec<u8>,
    /// Exported ratchet tree (TLS-encoded), if the GroupInfo carries no ratchet-tree extension.
    #[serde(with = "crate::b64::option", default)]
    #[schema(value_type = Option<String>, format = Byte)]
    pub ratchet_tree: Option<Vec<u8>>,
}

/// A group as the DS sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupInfoResponse {
    /// Hex of the MLS group id.
    pub group_id: String,
    pub epoch: u64,
    pub members: Vec<GroupMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupMember {
    pub leaf_index: u32,
    pub user: String,
    pub device_id: String,
}

/// `POST /v1/groups/{group_id}/commits` (device token of a member): a PublicMessage commit
/// for the group's current epoch, with the Welcome for any members it adds. Exactly one commit
/// per epoch wins; a commit for any other epoch gets `409 stale_epoch`. The Welcome is routed
/// to the added devices only after the commit is accepted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitCommitRequest {
    #[serde(with = "crate::b64")]
    #[schema(value_type = String, format = Byte)]
    pub commit: Vec<u8>,
    #[serde(with = "crate::b64::option", default)]
    #[schema(value_type = Option<String>, format = Byte)]
    pub welcome: Option<Vec<u8>>,
    /// GroupInfo of the new epoch, kept by the DS for external joins and recovery.
    #[serde(with = "crate::b64::option", default)]
    #[schema(value_type = Option<String>, format = Byte)]
    pub group_info: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubmitCommitResponse {
    /// The group's epoch after this commit.
    pub epoch: u64,
}

/// `POST /v1/groups/{group_id}/messages` (device token of a member): a PrivateMessage
/// application message. Stored once, then a pointer goes into every other member device's
/// mailbox.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessageRequest {
    #[serde(with = "crate::b64")]
    #[schema(value_type = String, format = Byte)]
    pub message: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SendMessageResponse {
    pub message_id: String,
    /// How many device mailboxes received a pointer.
    pub recipients: u64,
}

/// What a mailbox event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A Welcome `MLSMessage` that adds this device to `group_id`.
    Welcome,
    /// An accepted PublicMessage commit of `group_id`.
    Commit,
    /// A PrivateMessage application message of `group_id`.
    Application,
}

/// One entry of a device's mailbox.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MailboxEvent {
    /// Position in this device's mailbox; strictly increasing.
    pub seq: i64,
    pub kind: EventKind,
    /// Hex of the MLS group id.
    pub group_id: String,
    /// Epoch the message belongs to (for a Welcome or commit: the epoch it creates).
    pub epoch: u64,
    /// Directory identity of the sending device, as authenticated by the gateway. Clients
    /// must still take the sender from the MLS message itself.
    pub sender_user: String,
    pub sender_device: String,
    #[serde(with = "crate::b64")]
    #[schema(value_type = String, format = Byte)]
    pub message: Vec<u8>,
    /// Unix milliseconds when the gateway accepted it.
    pub received_at: i64,
}

/// `GET /v1/mailbox?after=SEQ&limit=N&wait=SECS` (device token): events with `seq > after`,
/// oldest first; with `wait`, the call holds until an event arrives or `wait` seconds pass.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MailboxResponse {
    pub events: Vec<MailboxEvent>,
}

/// `POST /v1/mailbox/ack` (device token): remove every event with `seq <= up_to`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub up_to: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AckResponse {
    pub removed: u64,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_fields_are_base64() {
        let r = SubmitCommitRequest {
            commit: vec![0, 1, 255],
            welcome: None,
            group_info: Some(vec![7]),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["commit"], "AAH/");
        assert_eq!(v["group_info"], "Bw==");
        let back: SubmitCommitRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back.commit, vec![0, 1, 255]);
        assert!(back.welcome.is_none());
    }

    #[test]
    fn unknown_fields_and_bad_base64_are_refused() {
        assert!(serde_json::from_str::<SendMessageRequest>(r#"{"message":"AA==","x":1}"#).is_err());
        assert!(serde_json::from_str::<SendMessageRequest>(r#"{"message":"%%%"}"#).is_err());
    }
}
