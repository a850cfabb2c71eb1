//! HTTP routes of the key directory and tenant administration (`/v1/admin/...`,
//! `/v1/enrollments`, `/v1/users`, `/v1/devices`, `/v1/keypackages`).
//!
//! Handlers authenticate, validate, and call the store; every scoping decision (which tenant a
//! caller may see) is made here from the authenticated identity, never from the request body.
//! They must never log request bodies, tokens or KeyPackage bytes.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use sealgate_proto::api::{
    ClaimKeyPackagesRequest, ClaimKeyPackagesResponse, ClaimedKeyPackage, CreateEnrollmentRequest,
    CreateTenantRequest, CreateTenantResponse, DeviceInfo, EnrollmentResponse, KeyPackageStock,
    PublishKeyPackagesRequest, RegisterDeviceRequest, RegisterDeviceResponse, TenantList, UserInfo,
    UserList,
};
use sealgate_proto::identity::valid_user_id;
use sealgate_proto::{DeviceIdentity, ErrorCode, Problem};

use super::admin;
use super::keypackage;
use super::store::{ClaimOutcome, DeviceRecord, NewDevice, PublishOutcome, UserRecord};
use crate::AppState;
use crate::api::extract::Path;
use crate::api::json::Json;
use crate::auth::{
    DeviceAuth, OperatorAuth, SecretKind, TenantAuth, TenantOrDevice, new_secret, random_id,
    secret_hash,
};
use crate::error::{ApiError, ApiResult};
use crate::store::now_secs;

/// Length of an Ed25519 public key.
const ED25519_PUBLIC_KEY_LEN: usize = 32;
/// Longest device label, in characters.
const MAX_DEVICE_NAME_CHARS: usize = 64;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/tenants", post(create_tenant).get(list_tenants))
        .route(
            "/v1/admin/tenants/{tenant_id}/enrollments",
            post(admin_create_enrollment),
        )
        .route("/v1/enrollments", post(create_enrollment))
        .route("/v1/users", get(list_users))
        .route("/v1/users/{user}", get(get_user))
        .route("/v1/devices", post(register_device))
        .route("/v1/devices/me", get(device_me).delete(revoke_device))
        .route("/v1/keypackages", post(publish_key_packages))
        .route("/v1/keypackages/stock", get(key_package_stock))
        .route("/v1/keypackages/claim", post(claim_key_packages))
}

fn device_info(d: DeviceRecord) -> DeviceInfo {
    DeviceInfo {
        device_id: d.device_id,
        user: d.user_id,
        signature_key: d.signature_key,
        name: d.name,
        created_at: d.created_at,
        revoked_at: d.revoked_at,
    }
}

fn user_info(u: UserRecord, devices: Vec<DeviceRecord>) -> UserInfo {
    UserInfo {
        user: u.user_id,
        phone: u.phone,
        devices: devices.into_iter().map(device_info).collect(),
    }
}

fn unknown_user() -> ApiError {
    ApiError::new(ErrorCode::UnknownUser, "no such user in this tenant")
}

// ---------------------------------------------------------------------------------------------
// Operator administration

/// Create a tenant and its first API key (shown once).
#[utoipa::path(
    post, path = "/v1/admin/tenants", tag = "admin",
    request_body = CreateTenantRequest,
    security(("operator_token" = [])),
    responses(
        (status = 201, description = "Tenant created", body = CreateTenantResponse),
        (status = 401, description = "No or wrong operator token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`tenant_exists`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_field`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_tenant(
    State(state): State<AppState>,
    _: OperatorAuth,
    Json(req): Json<CreateTenantRequest>,
) -> ApiResult<(StatusCode, Json<CreateTenantResponse>)> {
    let created = admin::create_tenant(&state, &req.name).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// List every tenant.
#[utoipa::path(
    get, path = "/v1/admin/tenants", tag = "admin",
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "All tenants", body = TenantList),
        (status = 401, description = "No or wrong operator token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_tenants(
    State(state): State<AppState>,
    _: OperatorAuth,
) -> ApiResult<Json<TenantList>> {
    Ok(Json(TenantList {
        tenants: admin::list_tenants(&state).await?,
    }))
}

/// Issue a one-time enrollment token for a user of any tenant.
#[utoipa::path(
    post, path = "/v1/admin/tenants/{tenant_id}/enrollments", tag = "admin",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request_body = CreateEnrollmentRequest,
    security(("operator_token" = [])),
    responses(
        (status = 201, description = "Enrollment token (shown once)", body = EnrollmentResponse),
        (status = 401, description = "No or wrong operator token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`unknown_tenant`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_field`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn admin_create_enrollment(
    State(state): State<AppState>,
    _: OperatorAuth,
    Path(tenant_id): Path<String>,
    Json(req): Json<CreateEnrollmentRequest>,
) -> ApiResult<(StatusCode, Json<EnrollmentResponse>)> {
    let enrollment = admin::create_enrollment(&state, &tenant_id, req).await?;
    Ok((StatusCode::CREATED, Json(enrollment)))
}

// ---------------------------------------------------------------------------------------------
// Tenant API

/// Issue a one-time enrollment token for a user of the API key's tenant.
#[utoipa::path(
    post, path = "/v1/enrollments", tag = "directory",
    request_body = CreateEnrollmentRequest,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Enrollment token (shown once)", body = EnrollmentResponse),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_field`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_enrollment(
    State(state): State<AppState>,
    auth: TenantAuth,
    Json(req): Json<CreateEnrollmentRequest>,
) -> ApiResult<(StatusCode, Json<EnrollmentResponse>)> {
    let enrollment = admin::create_enrollment(&state, &auth.tenant_id, req).await?;
    Ok((StatusCode::CREATED, Json(enrollment)))
}

/// Every user of the API key's tenant with all their devices.
#[utoipa::path(
    get, path = "/v1/users", tag = "directory",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Users of the tenant", body = UserList),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_users(
    State(state): State<AppState>,
    auth: TenantAuth,
) -> ApiResult<Json<UserList>> {
    let users = state.store().users_of_tenant(&auth.tenant_id).await?;
    let mut devices = state.store().devices_of_tenant(&auth.tenant_id).await?;
    let users = users
        .into_iter()
        .map(|u| {
            let (mine, rest) = devices.drain(..).partition(|d| d.user_id == u.user_id);
            devices = rest;
            user_info(u, mine)
        })
        .collect();
    Ok(Json(UserList { users }))
}

/// A user of the caller's tenant with all devices, revoked ones included: the public
/// directory clients verify group members against.
#[utoipa::path(
    get, path = "/v1/users/{user}", tag = "directory",
    params(("user" = String, Path, description = "User id")),
    security(("api_key" = []), ("device_token" = [])),
    responses(
        (status = 200, description = "The user and its devices", body = UserInfo),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`unknown_user`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_user(
    State(state): State<AppState>,
    auth: TenantOrDevice,
    Path(user): Path<String>,
) -> ApiResult<Json<UserInfo>> {
    if !valid_user_id(&user) {
        return Err(unknown_user());
    }
    let tenant_id = auth.tenant_id();
    let record = state
        .store()
        .user(tenant_id, &user)
        .await?
        .ok_or_else(unknown_user)?;
    let devices = state.store().devices_of_user(tenant_id, &user).await?;
    Ok(Json(user_info(record, devices)))
}

// ---------------------------------------------------------------------------------------------
// Devices

/// Register a device with a one-time enrollment token; returns its device token (shown once)
/// and the identity its MLS credential must carry.
#[utoipa::path(
    post, path = "/v1/devices", tag = "devices",
    request_body = RegisterDeviceRequest,
    responses(
        (status = 201, description = "Device registered", body = RegisterDeviceResponse),
        (status = 401, description = "`invalid_enrollment_token`: unknown, used or expired", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_field`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn register_device(
    State(state): State<AppState>,
    Json(req): Json<RegisterDeviceRequest>,
) -> ApiResult<(StatusCode, Json<RegisterDeviceResponse>)> {
    if req.signature_key.len() != ED25519_PUBLIC_KEY_LEN {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "signature_key: must be a raw 32-byte Ed25519 public key",
        ));
    }
    if let Some(name) = &req.name
        && (name.chars().count() > MAX_DEVICE_NAME_CHARS || name.chars().any(char::is_control))
    {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "name: at most 64 characters, no control characters",
        ));
    }
    let device_token = new_secret(SecretKind::Device);
    let new = NewDevice {
        device_id: random_id("dv"),
        token_hash: secret_hash(&device_token),
        signature_key: req.signature_key,
        name: req.name,
    };
    let device = state
        .store()
        .register_device(&secret_hash(&req.enrollment_token), &new, now_secs())
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidEnrollmentToken,
                "the enrollment token is unknown, used or expired",
            )
        })?;
    let identity = DeviceIdentity::new(&device.tenant_id, &device.user_id, &device.device_id)
        .map_err(ApiError::internal)?;
    tracing::info!(tenant_id = %device.tenant_id, device_id = %device.device_id, "device registered");
    crate::capabilities::devices_changed(&state, &device.tenant_id, &device.user_id).await;
    Ok((
        StatusCode::CREATED,
        Json(RegisterDeviceResponse {
            tenant_id: device.tenant_id,
            user: device.user_id,
            device_id: device.device_id,
            device_token,
            credential_identity: identity.to_string(),
        }),
    ))
}

/// The calling device's directory entry.
#[utoipa::path(
    get, path = "/v1/devices/me", tag = "devices",
    security(("device_token" = [])),
    responses(
        (status = 200, description = "This device", body = DeviceInfo),
        (status = 401, description = "`unauthenticated` (also once revoked)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn device_me(
    State(state): State<AppState>,
    auth: DeviceAuth,
) -> ApiResult<Json<DeviceInfo>> {
    let device = state
        .store()
        .device(&auth.tenant_id, &auth.device_id)
        .await?
        .filter(DeviceRecord::is_active)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "unknown or revoked device"))?;
    Ok(Json(device_info(device)))
}

/// Revoke the calling device: its token stops working and its KeyPackages are deleted. It
/// stays in the directory with `revoked_at`.
#[utoipa::path(
    delete, path = "/v1/devices/me", tag = "devices",
    security(("device_token" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_device(
    State(state): State<AppState>,
    auth: DeviceAuth,
) -> ApiResult<StatusCode> {
    if !state
        .store()
        .revoke_device(&auth.tenant_id, &auth.device_id, now_secs())
        .await?
    {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "unknown or revoked device",
        ));
    }
    tracing::info!(tenant_id = %auth.tenant_id, device_id = %auth.device_id, "device revoked");
    crate::capabilities::devices_changed(&state, &auth.tenant_id, &auth.user_id).await;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// KeyPackages

/// Publish one-time KeyPackages and optionally replace the last-resort one. All or nothing.
#[utoipa::path(
    post, path = "/v1/keypackages", tag = "keypackages",
    request_body = PublishKeyPackagesRequest,
    security(("device_token" = [])),
    responses(
        (status = 200, description = "Stored; the device's stock now", body = KeyPackageStock),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`identity_mismatch`: credential or key is not this device's", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`malformed_mls`, `invalid_key_package` (also duplicates), `invalid_field` (stock cap)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn publish_key_packages(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Json(req): Json<PublishKeyPackagesRequest>,
) -> ApiResult<Json<KeyPackageStock>> {
    let max = u64::from(state.config().max_key_packages_per_device);
    if u64::try_from(req.key_packages.len()).unwrap_or(u64::MAX) > max {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("key_packages: at most {max} per device"),
        ));
    }
    if req.key_packages.is_empty() && req.last_resort.is_none() {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "key_packages: nothing to publish",
        ));
    }
    let device = state
        .store()
        .device(&auth.tenant_id, &auth.device_id)
        .await?
        .filter(DeviceRecord::is_active)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "unknown or revoked device"))?;
    let identity = DeviceIdentity::new(&auth.tenant_id, &auth.user_id, &auth.device_id)
        .map_err(ApiError::internal)?;
    // Signature checks are CPU work; keep them off the async threads.
    let (one_time, last_resort) = tokio::task::spawn_blocking(move || {
        let one_time = req
            .key_packages
            .iter()
            .map(|kp| keypackage::validate(kp, &identity, &device.signature_key))
            .collect::<Result<Vec<_>, _>>()?;
        let last_resort = req
            .last_resort
            .as_deref()
            .map(|kp| keypackage::validate(kp, &identity, &device.signature_key))
            .transpose()?;
        Ok::<_, keypackage::KeyPackageError>((one_time, last_resort))
    })
    .await
    .map_err(ApiError::internal)??;
    let outcome = state
        .store()
        .publish_key_packages(
            &auth.device_id,
            &one_time,
            last_resort.as_ref(),
            max,
            now_secs(),
        )
        .await?;
    match outcome {
        PublishOutcome::Stored(stock) => Ok(Json(stock)),
        PublishOutcome::Duplicate => Err(ApiError::new(
            ErrorCode::InvalidKeyPackage,
            "a KeyPackage was already published",
        )),
        PublishOutcome::StockFull { have, max } => Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("key_packages: the directory holds {have} of at most {max} for this device"),
        )),
        PublishOutcome::UnknownDevice => Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "unknown or revoked device",
        )),
    }
}

/// How many KeyPackages the directory holds for the calling device.
#[utoipa::path(
    get, path = "/v1/keypackages/stock", tag = "keypackages",
    security(("device_token" = [])),
    responses(
        (status = 200, description = "Stock", body = KeyPackageStock),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn key_package_stock(
    State(state): State<AppState>,
    auth: DeviceAuth,
) -> ApiResult<Json<KeyPackageStock>> {
    Ok(Json(
        state
            .store()
            .key_package_stock(&auth.device_id, now_secs())
            .await?,
    ))
}

/// Claim one KeyPackage for each active device of a user of the caller's tenant (not the
/// caller's own device). One-time KeyPackages are handed out exactly once; the last-resort one
/// when none is left. Rate-limited per requester.
#[utoipa::path(
    post, path = "/v1/keypackages/claim", tag = "keypackages",
    request_body = ClaimKeyPackagesRequest,
    security(("api_key" = []), ("device_token" = [])),
    responses(
        (status = 200, description = "One KeyPackage per device", body = ClaimKeyPackagesResponse),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`unknown_user`: no such user or no active device", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`no_key_package`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`, with Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn claim_key_packages(
    State(state): State<AppState>,
    auth: TenantOrDevice,
    Json(req): Json<ClaimKeyPackagesRequest>,
) -> ApiResult<Json<ClaimKeyPackagesResponse>> {
    let (requester, exclude) = match &auth {
        TenantOrDevice::Tenant(t) => (format!("tenant:{}", t.tenant_id), None),
        TenantOrDevice::Device(d) => (d.device_id.clone(), Some(d.device_id.as_str())),
    };
    if let Err(wait) = state.claim_limiter().check(&requester, 1) {
        // Whole seconds, rounded up, so a client that waits exactly this long succeeds.
        return Err(ApiError::rate_limited(wait.as_secs_f64().ceil() as u64));
    }
    if !valid_user_id(&req.user) {
        return Err(unknown_user());
    }
    let outcome = state
        .store()
        .claim_key_packages(auth.tenant_id(), &req.user, exclude, now_secs())
        .await?;
    match outcome {
        ClaimOutcome::Claimed(kps) => Ok(Json(ClaimKeyPackagesResponse {
            user: req.user,
            key_packages: kps
                .into_iter()
                .map(|kp| ClaimedKeyPackage {
                    device_id: kp.device_id,
                    key_package: kp.data,
                    last_resort: kp.last_resort,
                })
                .collect(),
        })),
        ClaimOutcome::UnknownUser => Err(unknown_user()),
        ClaimOutcome::NoKeyPackage => Err(ApiError::new(
            ErrorCode::NoKeyPackage,
            "the user's devices have no KeyPackage left",
        )),
    }
}
