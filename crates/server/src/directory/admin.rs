//! Tenant administration: create tenants with their first API key, list them, issue one-time
//! enrollment tokens. Used by the admin HTTP routes and by `sealgate admin` through
//! [`crate::Gateway`], so both paths apply the same validation.
//!
//! Secrets it issues are returned once and stored only as digests; it must never log them.

use sealgate_proto::ErrorCode;
use sealgate_proto::api::{
    CreateEnrollmentRequest, CreateTenantResponse, EnrollmentResponse, TenantInfo,
};
use sealgate_proto::identity::{valid_e164, valid_id, valid_user_id};

use super::store::{NewEnrollment, TenantRecord};
use crate::AppState;
use crate::auth::{SecretKind, new_secret, random_id, secret_hash};
use crate::error::ApiError;
use crate::store::now_secs;

/// Longest lifetime an enrollment token may be given.
pub const MAX_ENROLLMENT_TTL_SECS: u64 = 30 * 24 * 3600;
/// Shortest lifetime an enrollment token may be given.
pub const MIN_ENROLLMENT_TTL_SECS: u64 = 60;

/// Create a tenant named `name` and its first API key. `409 tenant_exists` if the name is
/// taken, `422 invalid_field` if it is not a valid id.
pub async fn create_tenant(state: &AppState, name: &str) -> Result<CreateTenantResponse, ApiError> {
    if !valid_id(name) {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "name: 1-64 chars of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
        ));
    }
    let record = TenantRecord {
        tenant_id: random_id("tn"),
        name: name.to_owned(),
        created_at: now_secs(),
    };
    let api_key = new_secret(SecretKind::ApiKey);
    if !state
        .store()
        .create_tenant(&record, &secret_hash(&api_key))
        .await?
    {
        return Err(ApiError::new(
            ErrorCode::TenantExists,
            format!("a tenant named {name} already exists"),
        ));
    }
    tracing::info!(tenant_id = %record.tenant_id, "tenant created");
    Ok(CreateTenantResponse {
        tenant_id: record.tenant_id,
        name: record.name,
        api_key,
    })
}

/// All tenants, oldest first.
pub async fn list_tenants(state: &AppState) -> Result<Vec<TenantInfo>, ApiError> {
    Ok(state
        .store()
        .list_tenants()
        .await?
        .into_iter()
        .map(|t| TenantInfo {
            tenant_id: t.tenant_id,
            name: t.name,
            created_at: t.created_at,
        })
        .collect())
}

/// Issue a one-time enrollment token for `req.user` of `tenant_id` (creating the user if new).
/// `404 unknown_tenant`, `422 invalid_field` for a bad user id, phone or ttl.
pub async fn create_enrollment(
    state: &AppState,
    tenant_id: &str,
    req: CreateEnrollmentRequest,
) -> Result<EnrollmentResponse, ApiError> {
    if !valid_user_id(&req.user) {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "user: 1-64 chars of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
        ));
    }
    if let Some(phone) = &req.phone
        && !valid_e164(phone)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "phone: must be E.164 (+ then 8-15 digits)",
        ));
    }
    let ttl = req.ttl_secs.unwrap_or(state.config().enrollment_ttl_secs);
    if !(MIN_ENROLLMENT_TTL_SECS..=MAX_ENROLLMENT_TTL_SECS).contains(&ttl) {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!(
                "ttl_secs: must be between {MIN_ENROLLMENT_TTL_SECS} and {MAX_ENROLLMENT_TTL_SECS}"
            ),
        ));
    }
    let unknown_tenant = || ApiError::new(ErrorCode::UnknownTenant, "no such tenant");
    if !valid_id(tenant_id) {
        return Err(unknown_tenant());
    }
    let token = new_secret(SecretKind::Enrollment);
    let now = now_secs();
    // ttl ≤ 30 days, so the cast cannot truncate.
    let expires_at = now + ttl as i64;
    let created = state
        .store()
        .create_enrollment(&NewEnrollment {
            token_hash: secret_hash(&token),
            tenant_id: tenant_id.to_owned(),
            user_id: req.user.clone(),
            phone: req.phone,
            created_at: now,
            expires_at,
        })
        .await?;
    if !created {
        return Err(unknown_tenant());
    }
    Ok(EnrollmentResponse {
        token,
        tenant_id: tenant_id.to_owned(),
        user: req.user,
        expires_at,
    })
}
