//! Tenant administration: create tenants with their first API key, issue enrollment tokens.
//! Used by the admin HTTP routes and by `sealgate admin` through [`crate::Gateway`].

use sealgate_proto::api::{
    CreateEnrollmentRequest, CreateTenantResponse, EnrollmentResponse, TenantInfo,
};

use crate::AppState;
use crate::error::ApiError;

pub async fn create_tenant(
    _state: &AppState,
    _name: &str,
) -> Result<CreateTenantResponse, ApiError> {
    Err(ApiError::internal("not yet built"))
}

pub async fn list_tenants(_state: &AppState) -> Result<Vec<TenantInfo>, ApiError> {
    Err(ApiError::internal("not yet built"))
}

pub async fn create_enrollment(
    _state: &AppState,
    _tenant_id: &str,
    _req: CreateEnrollmentRequest,
) -> Result<EnrollmentResponse, ApiError> {
    Err(ApiError::internal("not yet built"))
}
