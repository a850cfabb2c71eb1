//! RFC 7807 problem documents and the stable error codes every HTTP error carries.
//!
//! Clients branch on `code`, never on `title` or `detail`; a code, once published, keeps its
//! meaning. Adding a code is fine, renaming one is a breaking change.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 7807 `application/problem+json` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type: `https://sealgate.dev/problems/{code}`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short human summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Human explanation of this occurrence; never contains message content or secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Stable machine-readable code (see [`ErrorCode`]).
    pub code: String,
    /// For `stale_epoch`: the group's current epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_epoch: Option<u64>,
    /// For `rate_limited`: seconds until a retry may succeed (also in `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident = ($code:literal, $status:literal, $title:literal), )*) => {
        /// Every error code the API can return, with its HTTP status and title.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// All codes, for documentation and tests.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The stable string form used in `code`.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// The HTTP status this code is returned with.
            pub fn status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// Short human title.
            pub fn title(self) -> &'static str {
                match self { $(ErrorCode::$variant => $title,)* }
            }

            /// Parse the string form.
            pub fn parse(code: &str) -> Option<Self> {
                match code { $($code => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

codes! {
    /// The body is not valid JSON or does not match the schema.
    MalformedBody = ("malformed_body", 400, "Malformed request body"),
    /// A field has an invalid value (bad name, bad phone number, bad base64, ...).
    InvalidField = ("invalid_field", 422, "Invalid field"),
    /// Bytes that should be an MLS message could not be decoded, or are the wrong kind.
    MalformedMls = ("malformed_mls", 422, "Malformed MLS message"),
    /// The request body exceeds the configured limit.
    PayloadTooLarge = ("payload_too_large", 413, "Payload too large"),
    /// The Content-Type is not application/json.
    UnsupportedMediaType = ("unsupported_media_type", 415, "Unsupported media type"),
    /// No or unknown credentials.
    Unauthenticated = ("unauthenticated", 401, "Authentication required"),
    /// Valid credentials that may not do this.
    Forbidden = ("forbidden", 403, "Forbidden"),
    /// The enrollment token is unknown, used or expired.
    InvalidEnrollmentToken = ("invalid_enrollment_token", 401, "Invalid enrollment token"),
    /// No such route.
    NotFound = ("not_found", 404, "Not found"),
    /// The method is not allowed on this route.
    MethodNotAllowed = ("method_not_allowed", 405, "Method not allowed"),
    /// The tenant does not exist.
    UnknownTenant = ("unknown_tenant", 404, "Unknown tenant"),
    /// The user does not exist in this tenant, or has no active device.
    UnknownUser = ("unknown_user", 404, "Unknown user"),
    /// The device does not exist in this tenant, or was revoked.
    UnknownDevice = ("unknown_device", 404, "Unknown device"),
    /// The group does not exist, or the caller is not allowed to see it.
    UnknownGroup = ("unknown_group", 404, "Unknown group"),
    /// A tenant with that name already exists.
    TenantExists = ("tenant_exists", 409, "Tenant exists"),
    /// A group with that id already exists.
    GroupExists = ("group_exists", 409, "Group exists"),
    /// A KeyPackage's credential or signature key does not match the registered device, or
    /// a commit adds a leaf whose identity does not match the key directory.
    IdentityMismatch = ("identity_mismatch", 403, "Identity does not match the key directory"),
    /// The KeyPackage is invalid (signature, lifetime, cipher suite, duplicate).
    InvalidKeyPackage = ("invalid_key_package", 422, "Invalid KeyPackage"),
    /// The user has devices, but none has a KeyPackage left (not even a last-resort one).
    NoKeyPackage = ("no_key_package", 409, "No KeyPackage available"),
    /// The commit is for an epoch other than the group's current one (a concurrent commit
    /// won, or the commit is replayed). Fetch the mailbox, then retry in `current_epoch`.
    StaleEpoch = ("stale_epoch", 409, "Stale epoch"),
    /// The commit or message failed MLS verification (bad signature, bad membership tag,
    /// wrong group, not a PublicMessage commit, ...).
    InvalidCommit = ("invalid_commit", 422, "Invalid commit"),
    /// An application message is not a PrivateMessage of this group at an epoch the DS knows.
    InvalidMessage = ("invalid_message", 422, "Invalid message"),
    /// The calling device is not a member of the group.
    NotMember = ("not_member", 403, "Not a member of the group"),
    /// Too many requests; retry after `retry_after` seconds.
    RateLimited = ("rate_limited", 429, "Too many requests"),
    /// The server failed; nothing was stored. Safe to retry.
    Internal = ("internal", 500, "Internal error"),
    /// The server is shutting down or not ready.
    Unavailable = ("unavailable", 503, "Service unavailable"),
    /// `POST /v1/messages` needs an `Idempotency-Key` header of 1 to 128 visible ASCII
    /// characters.
    IdempotencyKeyRequired = ("idempotency_key_required", 400, "Idempotency key required"),
    /// The idempotency key was already used with a different request body.
    IdempotencyKeyReused = ("idempotency_key_reused", 422, "Idempotency key reused"),
    /// A webhook's signature is missing or does not verify.
    InvalidSignature = ("invalid_signature", 401, "Invalid signature"),
    /// No such message (in the caller's tenant).
    UnknownMessage = ("unknown_message", 404, "Unknown message"),
    /// No such dead letter.
    UnknownDeadLetter = ("unknown_dead_letter", 404, "Unknown dead letter"),
    /// The tenant's message quota for the current period is used up; retry after
    /// `retry_after` seconds.
    QuotaExceeded = ("quota_exceeded", 429, "Quota exceeded"),
    /// The attachment is larger than the tenant's per-attachment limit, or a PATCH would
    /// write past its declared length or over the per-request limit.
    AttachmentTooLarge = ("attachment_too_large", 413, "Attachment too large"),
    /// The tenant's attachment storage quota is used up; nothing was stored. Unlike
    /// `quota_exceeded` this does not clear with time alone: it needs attachments to expire.
    StorageQuotaExceeded = ("storage_quota_exceeded", 403, "Storage quota exceeded"),
    /// A PATCH's `Upload-Offset` is not the upload's current offset (also sent in the
    /// `Upload-Offset` response header). `HEAD` the upload and continue from there.
    OffsetMismatch = ("offset_mismatch", 409, "Upload offset mismatch"),
    /// No such attachment upload for the caller (unknown, expired, or another device's).
    UnknownAttachment = ("unknown_attachment", 404, "Unknown attachment"),
    /// The attachment's upload is not complete yet, so it cannot be downloaded.
    UploadIncomplete = ("upload_incomplete", 409, "Upload incomplete"),
    /// A download URL is expired, altered, or was issued to another device.
    InvalidDownloadUrl = ("invalid_download_url", 403, "Invalid download URL"),
    /// The policy document is invalid; `errors` lists every problem with its path.
    InvalidPolicy = ("invalid_policy", 422, "Invalid policy"),
    /// The tenant's policy does not allow this kind of submission for the message class
    /// (e.g. plain SMS for `sensitive`).
    PolicyForbidsRoute = ("policy_forbids_route", 403, "Policy forbids this route"),
    /// No such secure link (or not the caller's).
    UnknownLink = ("unknown_link", 404, "Unknown link"),
    /// The secure link expired; its content is deleted.
    LinkExpired = ("link_expired", 410, "Link expired"),
    /// The secure link was already opened once; its content is deleted.
    LinkUsed = ("link_used", 410, "Link already used"),
    /// The one-time code is wrong, expired or was never requested.
    InvalidCode = ("invalid_code", 403, "Invalid code"),
    /// Too many wrong codes (or code requests): the link is locked and its content deleted.
    TooManyAttempts = ("too_many_attempts", 429, "Too many attempts"),
    /// No such held message.
    UnknownHold = ("unknown_hold", 404, "Unknown hold"),
    /// The OIDC ID token offered to open a secure link does not verify (signature, issuer,
    /// audience, lifetime or recipient binding). Counts as a wrong attempt.
    InvalidIdToken = ("invalid_id_token", 401, "Invalid ID token"),
    /// An ID token was offered but the link's tenant has no OIDC sign-in configured.
    OidcNotConfigured = ("oidc_not_configured", 409, "OIDC not configured"),
    /// The link's tenant requires OIDC sign-in; the one-time code cannot open it.
    OidcRequired = ("oidc_required", 403, "OIDC sign-in required"),
}

impl Problem {
    /// A problem document for `code` with an optional human detail.
    pub fn new(code: ErrorCode, detail: impl Into<Option<String>>) -> Self {
        Self {
            type_uri: format!("https://sealgate.dev/problems/{}", code.as_str()),
            title: code.title().to_owned(),
            status: code.status(),
            detail: detail.into(),
            code: code.as_str().to_owned(),
            current_epoch: None,
            retry_after: None,
        }
    }

    /// The parsed code, if it is one this version knows.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.code)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.title, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate {}", c.as_str());
            assert_eq!(ErrorCode::parse(c.as_str()), Some(*c));
            assert!((400..600).contains(&c.status()));
        }
    }

    #[test]
    fn problem_json_shape() {
        let p = Problem::new(ErrorCode::StaleEpoch, Some("epoch 3 is current".into()));
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "https://sealgate.dev/problems/stale_epoch");
        assert_eq!(v["status"], 409);
        assert_eq!(v["code"], "stale_epoch");
        assert!(v.get("retry_after").is_none());
    }
}
