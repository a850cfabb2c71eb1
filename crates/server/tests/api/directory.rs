//! Tenants, API keys, enrollment tokens, device registration, revocation, tenant isolation.

use anyhow::Result;
use reqwest::StatusCode;
use sealgate_proto::api::{
    ClaimKeyPackagesRequest, CreateEnrollmentRequest, DeviceInfo, RegisterDeviceRequest,
    TenantList, UserInfo, UserList,
};
use sealgate_server::directory::store::NewEnrollment;
use sealgate_server::store::now_secs;

use crate::support::{TestGateway, new_signing_key, problem};

#[tokio::test]
async fn tenant_create_list_and_api_key_auth() -> Result<()> {
    let gw = TestGateway::start().await?;
    let acme = gw.create_tenant("acme").await?;
    assert!(acme.api_key.starts_with("sgk_"));
    assert_eq!(acme.name, "acme");

    // Names are unique.
    let resp = gw
        .http
        .post(gw.url("/v1/admin/tenants"))
        .bearer_auth(&gw.operator_token)
        .json(&serde_json::json!({"name": "acme"}))
        .send()
        .await?;
    let (status, p) = problem(resp).await?;
    assert_eq!((status.as_u16(), p.code.as_str()), (409, "tenant_exists"));

    gw.create_tenant("globex").await?;
    let list: TenantList = gw
        .http
        .get(gw.url("/v1/admin/tenants"))
        .bearer_auth(&gw.operator_token)
        .send()
        .await?
        .json()
        .await?;
    let names: Vec<_> = list.tenants.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"acme") && names.contains(&"globex"));

    // The API key authenticates tenant calls, not operator calls.
    let resp = gw
        .http
        .get(gw.url("/v1/admin/tenants"))
        .bearer_auth(&acme.api_key)
        .send()
        .await?;
    assert_eq!(problem(resp).await?.1.code, "unauthenticated");

    let enrollment = gw.enroll(&acme.api_key, "alice").await?;
    assert!(enrollment.token.starts_with("sge_"));
    assert_eq!(enrollment.tenant_id, acme.tenant_id);
    let users: UserList = gw
        .http
        .get(gw.url("/v1/users"))
        .bearer_auth(&acme.api_key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(users.users.len(), 1);
    assert_eq!(users.users[0].user, "alice");

    // The operator may enroll for any tenant; an unknown tenant is 404.
    let resp = gw
        .http
        .post(gw.url(&format!("/v1/admin/tenants/{}/enrollments", acme.tenant_id)))
        .bearer_auth(&gw.operator_token)
        .json(&CreateEnrollmentRequest {
            user: "bob".into(),
            phone: Some("+15551230001".into()),
            ttl_secs: Some(600),
        })
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = gw
        .http
        .post(gw.url("/v1/admin/tenants/tnnope/enrollments"))
        .bearer_auth(&gw.operator_token)
        .json(&serde_json::json!({"user": "bob"}))
        .send()
        .await?;
    assert_eq!(problem(resp).await?.1.code, "unknown_tenant");
    let bob: UserInfo = gw
        .http
        .get(gw.url("/v1/users/bob"))
        .bearer_auth(&acme.api_key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(bob.phone.as_deref(), Some("+15551230001"));
    assert!(bob.devices.is_empty());

    // The same operations through the library API.
    assert_eq!(gw.gateway.list_tenants().await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn enrollment_token_works_exactly_once() -> Result<()> {
    let gw = TestGateway::start().await?;
    let acme = gw.create_tenant("acme").await?;
    let enrollment = gw.enroll(&acme.api_key, "alice").await?;
    let device = gw.register(&enrollment.token).await?;
    assert!(device.device_id.starts_with("dv"));
    assert!(device.token.starts_with("sgd_"));
    assert_eq!(
        device.identity.to_string(),
        format!("sealgate:v1:{}:alice:{}", acme.tenant_id, device.device_id)
    );

    let (_, public) = new_signing_key()?;
    let again = gw
        .http
        .post(gw.url("/v1/devices"))
        .json(&RegisterDeviceRequest {
            enrollment_token: enrollment.token.clone(),
            signature_key: public.as_bytes().to_vec(),
            name: None,
        })
        .send()
        .await?;
    let (status, p) = problem(again).await?;
    assert_eq!(
        (status.as_u16(), p.code.as_str()),
        (401, "invalid_enrollment_token")
    );

    let me: DeviceInfo = gw
        .http
        .get(gw.url("/v1/devices/me"))
        .header("authorization", device.auth())
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(me.device_id, device.device_id);
    assert_eq!(me.signature_key, device.public_key.as_bytes());
    assert_eq!(me.user, "alice");
    Ok(())
}

#[tokio::test]
async fn concurrent_registrations_with_one_token_yield_one_device() -> Result<()> {
    let gw = TestGateway::start().await?;
    let acme = gw.create_tenant("acme").await?;
    let enrollment = gw.enroll(&acme.api_key, "alice").await?;
    let attempts = (0..8).map(|_| {
        let http = gw.http.clone();
        let url = gw.url("/v1/devices");
        let token = enrollment.token.clone();
        async move {
            let (_, public) = new_signing_key()?;
            let resp = http
                .post(url)
                .json(&RegisterDeviceRequest {
                    enrollment_token: token,
                    signature_key: public.as_bytes().to_vec(),
                    name: None,
                })
                .send()
                .await?;
            anyhow::Ok(resp.status())
        }
    });
    let statuses = futures::future::try_join_all(attempts).await?;
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!((created, refused), (1, 7), "{statuses:?}");

    let alice: UserInfo = gw
        .http
        .get(gw.url("/v1/users/alice"))
        .bearer_auth(&acme.api_key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(alice.devices.len(), 1);
    Ok(())
}

#[tokio::test]
async fn expired_enrollment_token_is_refused() -> Result<()> {
    let gw = TestGateway::start().await?;
    let acme = gw.create_tenant("acme").await?;
    // Plant a token that expired a second ago (the API refuses TTLs that short).
    let token = "sge_expired-for-test";
    let now = now_secs();
    let stored = gw
        .gateway
        .state()
        .store()
        .create_enrollment(&NewEnrollment {
            token_hash: sealgate_server::auth::secret_hash(token),
            tenant_id: acme.tenant_id.clone(),
            user_id: "alice".into(),
            phone: None,
            created_at: now - 120,
            expires_at: now - 1,
        })
        .await?;
    assert!(stored);
    let (_, public) = new_signing_key()?;
    let resp = gw
        .http
        .post(gw.url("/v1/devices"))
        .json(&RegisterDeviceRequest {
            enrollment_token: token.into(),
            signature_key: public.as_bytes().to_vec(),
            name: None,
        })
        .send()
        .await?;
    let (status, p) = problem(resp).await?;
    assert_eq!(
        (status.as_u16(), p.code.as_str()),
        (401, "invalid_enrollment_token")
    );
    let devices = gw
        .gateway
        .state()
        .store()
        .devices_of_user(&acme.tenant_id, "alice")
        .await?;
    assert!(devices.is_empty());

    // A TTL outside 60 s ..= 30 days is refused up front.
    for ttl in [1u64, 31 * 24 * 3600] {
        let resp = gw
            .http
            .post(gw.url("/v1/enrollments"))
            .bearer_auth(&acme.api_key)
            .json(&serde_json::json!({"user": "alice", "ttl_secs": ttl}))
            .send()
            .await?;
        assert_eq!(problem(resp).await?.1.code, "invalid_field", "ttl {ttl}");
    }
    Ok(())
}

#[tokio::test]
async fn revoked_device_loses_access_but_stays_listed() -> Result<()> {
    let gw = TestGateway::start().await?;
    let acme = gw.create_tenant("acme").await?;
    let alice = gw.device(&acme.api_key, "alice").await?;
    gw.publish(&alice, 2, true).await?;

    let resp = gw
        .http
        .delete(gw.url("/v1/devices/me"))
        .header("authorization", alice.auth())
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    let resp = gw
        .http
        .get(gw.url("/v1/devices/me"))
        .header("authorization", alice.auth())
        .send()
        .await?;
    assert_eq!(problem(resp).await?.1.code, "unauthenticated");

    let info: UserInfo = gw
        .http
        .get(gw.url("/v1/users/alice"))
        .bearer_auth(&acme.api_key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(info.devices.len(), 1);
    assert!(info.devices[0].revoked_at.is_some());

    // No active device left: claims find no one, and the KeyPackages are gone.
    let resp = gw
        .http
        .post(gw.url("/v1/keypackages/claim"))
        .bearer_auth(&acme.api_key)
        .json(&ClaimKeyPackagesRequest {
            user: "alice".into(),
        })
        .send()
        .await?;
    assert_eq!(problem(resp).await?.1.code, "unknown_user");
    let stock = gw
        .gateway
        .state()
        .store()
        .key_package_stock(&alice.device_id, now_secs())
        .await?;
    assert_eq!((stock.one_time, stock.last_resort), (0, false));
    Ok(())
}

#[tokio::test]
async fn tenants_are_isolated() -> Result<()> {
    let gw = TestGateway::start().await?;
    let a = gw.create_tenant("tenant-a").await?;
    let b = gw.create_tenant("tenant-b").await?;
    let alice = gw.device(&a.api_key, "alice").await?;
    gw.publish(&alice, 3, true).await?;
    let eve = gw.device(&b.api_key, "eve").await?;

    // Tenant B's key sees only B's users.
    let users: UserList = gw
        .http
        .get(gw.url("/v1/users"))
        .bearer_auth(&b.api_key)
        .send()
        .await?
        .json()
        .await?;
    let names: Vec<_> = users.users.iter().map(|u| u.user.as_str()).collect();
    assert_eq!(names, ["eve"]);

    for auth in [format!("Bearer {}", b.api_key), eve.auth()] {
        let resp = gw
            .http
            .get(gw.url("/v1/users/alice"))
            .header("authorization", &auth)
            .send()
            .await?;
        let (status, p) = problem(resp).await?;
        assert_eq!((status.as_u16(), p.code.as_str()), (404, "unknown_user"));

        let resp = gw
            .http
            .post(gw.url("/v1/keypackages/claim"))
            .header("authorization", &auth)
            .json(&ClaimKeyPackagesRequest {
                user: "alice".into(),
            })
            .send()
            .await?;
        assert_eq!(problem(resp).await?.1.code, "unknown_user");
    }

    // Tenant B cannot use the operator route to enroll into A.
    let resp = gw
        .http
        .post(gw.url(&format!("/v1/admin/tenants/{}/enrollments", a.tenant_id)))
        .bearer_auth(&b.api_key)
        .json(&serde_json::json!({"user": "mallory"}))
        .send()
        .await?;
    assert_eq!(problem(resp).await?.1.code, "unauthenticated");

    // Nothing of A's was consumed; A itself can still see alice.
    let stock = gw
        .gateway
        .state()
        .store()
        .key_package_stock(&alice.device_id, now_secs())
        .await?;
    assert_eq!(stock.one_time, 3);
    let resp = gw
        .http
        .get(gw.url("/v1/users/alice"))
        .bearer_auth(&a.api_key)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    Ok(())
}
