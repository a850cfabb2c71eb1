//! Checking members against the key directory, and claiming verified KeyPackages.
//!
//! The pure decision lives in [`crate::verify`]; this module adds the lookups (cached for a
//! few minutes, refetched once before refusing) and the claim flow. It must never add a
//! KeyPackage to a group that has not passed [`SealClient::verify`], and must never trust the
//! mailbox envelope or the claim response's `device_id` on their own.

use mls_rs::MlsMessage;
use mls_rs::identity::SigningIdentity;
use sealgate_proto::api::UserInfo;
use sealgate_proto::{DeviceIdentity, ErrorCode};

use crate::client::SealClient;
use crate::error::Result;
use crate::mls;
use crate::state::{self, now_ms};
use crate::verify::{self, VerifyError};

/// How long a positive directory lookup is trusted.
const DIRECTORY_TTL_MS: i64 = 5 * 60 * 1000;

impl SealClient {
    /// The directory entry of `user`, from the cache when fresh enough.
    async fn directory_user(&mut self, user: &str, fresh: bool) -> Result<Option<UserInfo>> {
        if !fresh
            && let Some(c) = self.state.directory.get(user)
            && now_ms() - c.fetched_at < DIRECTORY_TTL_MS
        {
            return Ok(Some(c.info.clone()));
        }
        match self.api.user(user).await {
            Ok(info) => {
                self.state.directory.insert(
                    user.to_owned(),
                    state::CachedUser {
                        info: info.clone(),
                        fetched_at: now_ms(),
                    },
                );
                Ok(Some(info))
            }
            Err(e) if matches!(e.code(), Some(ErrorCode::UnknownUser)) => {
                self.state.directory.remove(user);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Verify a member's credential against the directory (cached, refetched once on a
    /// mismatch). `Err(Error::Verification)` is a refusal; other errors are transient.
    pub(crate) async fn verify(
        &mut self,
        signing: &SigningIdentity,
        expected_user: Option<&str>,
    ) -> Result<DeviceIdentity> {
        let claimed = verify::claimed_identity(signing)?;
        if claimed == self.own_identity() {
            if signing.signature_key.as_bytes() == self.state.signing_public.as_slice() {
                return Ok(claimed);
            }
            return Err(VerifyError::KeyMismatch {
                user: claimed.user_id,
                device: claimed.device_id,
            }
            .into());
        }
        if claimed.tenant_id != self.state.tenant_id {
            return Err(VerifyError::WrongTenant {
                expected: self.state.tenant_id.clone(),
                found: claimed.tenant_id,
            }
            .into());
        }
        let tenant = self.state.tenant_id.clone();
        let unknown = || VerifyError::UnknownDevice {
            user: claimed.user_id.clone(),
            device: claimed.device_id.clone(),
        };
        if let Some(info) = self.directory_user(&claimed.user_id, false).await?
            && let Ok(id) = verify::verify_member(signing, &tenant, expected_user, &info)
        {
            return Ok(id);
        }
        let info = self
            .directory_user(&claimed.user_id, true)
            .await?
            .ok_or_else(unknown)?;
        Ok(verify::verify_member(
            signing,
            &tenant,
            expected_user,
            &info,
        )?)
    }

    /// Claim one KeyPackage per device of `user` (other than this device) and verify each
    /// against the directory. For our own user, "no other device" is an empty list.
    pub(crate) async fn claim_verified(&mut self, user: &str) -> Result<Vec<MlsMessage>> {
        let own = user == self.state.user;
        let resp = match self.api.claim(user).await {
            Ok(r) => r,
            Err(e)
                if own
                    && matches!(
                        e.code(),
                        Some(ErrorCode::UnknownUser | ErrorCode::NoKeyPackage)
                    ) =>
            {
                return Ok(vec![]);
            }
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for claimed in resp.key_packages {
            let message = mls::decode(&claimed.key_package)?;
            let signing = mls::key_package_identity(&message)?.clone();
            let id = self.verify(&signing, Some(user)).await?;
            if id.device_id != claimed.device_id {
                return Err(VerifyError::UnknownDevice {
                    user: user.to_owned(),
                    device: claimed.device_id,
                }
                .into());
            }
            if id == self.own_identity() {
                continue;
            }
            out.push(message);
        }
        Ok(out)
    }
}
