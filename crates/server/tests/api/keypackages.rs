//! KeyPackage publish, stock, exactly-once claim (also under concurrency), last-resort
//! fallback, identity binding (mallory), claim rate limits.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use reqwest::StatusCode;
use sealgate_proto::api::{
    ClaimKeyPackagesRequest, ClaimKeyPackagesResponse, KeyPackageStock, PublishKeyPackagesRequest,
};
use sealgate_proto::{DeviceIdentity, MAX_KEY_PACKAGE_LIFETIME_SECS};

use crate::support::{TestDevice, TestGateway, key_package, new_signing_key, problem};

const LIFETIME: Duration = Duration::from_secs(MAX_KEY_PACKAGE_LIFETIME_SECS);

async fn stock(gw: &TestGateway, device: &TestDevice) -> Result<KeyPackageStock> {
    Ok(gw
        .http
        .get(gw.url("/v1/keypackages/stock"))
        .header("authorization", device.auth())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

async fn publish_raw(
    gw: &TestGateway,
    device: &TestDevice,
    req: &PublishKeyPackagesRequest,
) -> Result<reqwest::Response> {
    Ok(gw
        .http
        .post(gw.url("/v1/keypackages"))
        .header("authorization", device.auth())
        .json(req)
        .send()
        .await?)
}

async fn claim(gw: &TestGateway, auth: &str, user: &str) -> Result<reqwest::Response> {
    Ok(gw
        .http
        .post(gw.url("/v1/keypackages/claim"))
        .header("authorization", auth)
        .json(&ClaimKeyPackagesRequest { user: user.into() })
        .send()
        .await?)
}

#[tokio::test]
async fn publish_claim_and_last_resort() -> Result<()> {
    let gw = TestGateway::start().await?;
    let acme = gw.create_tenant("acme").await?;
    let alice = gw.device(&acme.api_key, "alice").await?;
    let api_key = format!("Bearer {}", acme.api_key);

    // Devices but nothing published yet.
    let (status, p) = problem(claim(&gw, &api_key, "alice").await?).await?;
    assert_eq!((status.as_u16(), p.code.as_str()), (409, "no_key_package"));

    let kps = alice.key_packages(3)?;
    let last = alice.key_packages(1)?.remove(0);
    let resp = publish_raw(
        &gw,
        &alice,
        &PublishKeyPackagesRequest {
            key_packages: kps.clone(),
            last_resort: Some(last.clone()),
        },
    )
    .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let s: KeyPackageStock = resp.json().await?;
    assert_eq!(
        s,
        KeyPackageStock {
            one_time: 3,
            last_resort: true
        }
    );

    // The same KeyPackage twice is refused, whole batch, nothing added.
    let fresh = alice.key_packages(1)?.remove(0);
    let resp = publish_raw(
        &gw,
        &alice,
        &PublishKeyPackagesRequest {
            key_packages: vec![fresh, kps[0].clone()],
            last_resort: None,
        },
    )
    .await?;
    assert_eq!(problem(resp).await?.1.code, "invalid_key_package");
    assert_eq!(stock(&gw, &alice).await?.one_time, 3);

    // Claims hand out the one-time ones oldest first, then the last-resort one repeatedly.
    for expected in kps.iter() {
        let r: ClaimKeyPackagesResponse = claim(&gw, &api_key, "alice").await?.json().await?;
        assert_eq!(r.key_packages.len(), 1);
        assert_eq!(&r.key_packages[0].key_package, expected);
        assert!(!r.key_packages[0].last_resort);
        assert_eq!(r.key_packages[0].device_id, alice.device_id);
    }
    for _ in 0..2 {
        let r: ClaimKeyPackagesResponse = claim(&gw, &api_key, "alice").await?.json().await?;
        assert_eq!(r.key_packages[0].key_package, last);
        assert!(r.key_packages[0].last_resort);
    }
    assert_eq!(
        stock(&gw, &alice).await?,
        KeyPackageStock {
            one_time: 0,
            last_resort: true
        }
    );

    // A new last-resort KeyPackage replaces the old one.
    let newer = alice.key_packages(1)?.remove(0);
    let resp = publish_raw(
        &gw,
        &alice,
        &PublishKeyPackagesRequest {
            key_packages: vec![],
            last_resort: Some(newer.clone()),
        },
    )
    .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let r: ClaimKeyPackagesResponse = claim(&gw, &api_key, "alice").await?.json().await?;
    assert_eq!(r.key_packages[0].key_package, newer);

    // A device never gets its own KeyPackage; with no other device that is unknown_user.
    let (status, p) = problem(claim(&gw, &alice.auth(), "alice").await?).await?;
    assert_eq!((status.as_u16(), p.code.as_str()), (404, "unknown_user"));
    // A second device of alice gets the first device's KeyPackage.
    let alice2 = gw.device(&acme.api_key, "alice").await?;
    let r: ClaimKeyPackagesResponse = claim(&gw, &alice2.auth(), "alice").await?.json().await?;
    assert_eq!(r.key_packages.len(), 1);
    assert_eq!(r.key_packages[0].device_id, alice.device_id);

    let (status, p) = problem(claim(&gw, &api_key, "nobody").await?).await?;
    assert_eq!((status.as_u16(), p.code.as_str()), (404, "unknown_user"));
    Ok(())
}

#[tokio::test]
async fn concurrent_claims_hand_out_each_key_package_once() -> Result<()> {
    let gw = TestGateway::start().await?;
    let acme = gw.create_tenant("acme").await?;
    let alice = gw.device(&acme.api_key, "alice").await?;
    let kps = alice.key_packages(50)?;
    let last = alice.key_packages(1)?.remove(0);
    let resp = publish_raw(
        &gw,
        &alice,
        &PublishKeyPackagesRequest {
            key_packages: kps.clone(),
            last_resort: Some(last.clone()),
        },
    )
    .await?;
    assert_eq!(resp.status(), StatusCode::OK);

    // 8 requesters (devices of bob) x 10 claims = 80 concurrent claims.
    let mut requesters = Vec::new();
    for _ in 0..8 {
        requesters.push(gw.device(&acme.api_key, "bob").await?);
    }
    let claims = requesters.iter().flat_map(|r| {
        (0..10).map(|_| {
            let http = gw.http.clone();
            let url = gw.url("/v1/keypackages/claim");
            let auth = r.auth();
            async move {
                let resp = http
                    .post(url)
                    .header("authorization", auth)
                    .json(&ClaimKeyPackagesRequest {
                        user: "alice".into(),
                    })
                    .send()
                    .await?
                    .error_for_status()?;
                anyhow::Ok(resp.json::<ClaimKeyPackagesResponse>().await?)
            }
        })
    });
    let results = futures::future::try_join_all(claims).await?;
    assert_eq!(results.len(), 80);

    let published: HashSet<&Vec<u8>> = kps.iter().collect();
    let mut handed_out = HashSet::new();
    let mut last_resort_count = 0;
    for r in &results {
        assert_eq!(r.key_packages.len(), 1);
        let kp = &r.key_packages[0];
        if kp.last_resort {
            assert_eq!(kp.key_package, last);
            last_resort_count += 1;
        } else {
            assert!(published.contains(&kp.key_package), "unknown KeyPackage");
            assert!(
                handed_out.insert(kp.key_package.clone()),
                "handed out twice"
            );
        }
    }
    assert_eq!(handed_out.len(), 50);
    assert_eq!(last_resort_count, 30);
    assert_eq!(
        stock(&gw, &alice).await?,
        KeyPackageStock {
            one_time: 0,
            last_resort: true
        }
    );
    Ok(())
}

#[tokio::test]
async fn mallory_cannot_publish_under_another_identity_or_key() -> Result<()> {
    let gw = TestGateway::start().await?;
    let acme = gw.create_tenant("acme").await?;
    let alice = gw.device(&acme.api_key, "alice").await?;
    let mallory = gw.device(&acme.api_key, "mallory").await?;

    let (other_secret, other_public) = new_signing_key()?;
    let mallory_as = |user: &str, device: &str| {
        DeviceIdentity::new(&mallory.tenant_id, user, device).map(|i| i.to_credential_bytes())
    };
    let forgeries = [
        // Alice's exact identity, signed with mallory's own (registered) key.
        key_package(
            &alice.identity.to_credential_bytes(),
            &mallory.secret_key,
            &mallory.public_key,
            LIFETIME,
        )?,
        // Alice's user name on mallory's device id.
        key_package(
            &mallory_as("alice", &mallory.device_id)?,
            &mallory.secret_key,
            &mallory.public_key,
            LIFETIME,
        )?,
        // Mallory's identity, but a key that is not the registered one.
        key_package(
            &mallory.identity.to_credential_bytes(),
            &other_secret,
            &other_public,
            LIFETIME,
        )?,
        // Mallory's identity with alice's registered public key (signature then fails too).
        key_package(
            &mallory.identity.to_credential_bytes(),
            &mallory.secret_key,
            &alice.public_key,
            LIFETIME,
        )?,
        // Not a sealgate identity at all.
        key_package(b"alice", &mallory.secret_key, &mallory.public_key, LIFETIME)?,
    ];
    for (i, forged) in forgeries.into_iter().enumerate() {
        // Alone, and hidden in a batch of valid ones, and as the last-resort KeyPackage.
        let mut batch = mallory.key_packages(2)?;
        batch.insert(1, forged.clone());
        for req in [
            PublishKeyPackagesRequest {
                key_packages: vec![forged.clone()],
                last_resort: None,
            },
            PublishKeyPackagesRequest {
                key_packages: batch,
                last_resort: None,
            },
            PublishKeyPackagesRequest {
                key_packages: vec![],
                last_resort: Some(forged.clone()),
            },
        ] {
            let (status, p) = problem(publish_raw(&gw, &mallory, &req).await?).await?;
            assert_eq!(
                (status.as_u16(), p.code.as_str()),
                (403, "identity_mismatch"),
                "forgery {i}"
            );
        }
    }
    assert_eq!(
        stock(&gw, &mallory).await?,
        KeyPackageStock {
            one_time: 0,
            last_resort: false
        }
    );
    let (_, p) = problem(claim(&gw, &format!("Bearer {}", acme.api_key), "mallory").await?).await?;
    assert_eq!(p.code, "no_key_package");

    // Publishing alice's own genuine KeyPackage from mallory's device is refused too.
    let stolen = alice.key_packages(1)?;
    let resp = publish_raw(
        &gw,
        &mallory,
        &PublishKeyPackagesRequest {
            key_packages: stolen,
            last_resort: None,
        },
    )
    .await?;
    assert_eq!(problem(resp).await?.1.code, "identity_mismatch");
    assert_eq!(stock(&gw, &alice).await?.one_time, 0);
    Ok(())
}

#[tokio::test]
async fn invalid_key_packages_are_refused() -> Result<()> {
    let gw = TestGateway::start_with(|c| c.max_key_packages_per_device = 4).await?;
    let acme = gw.create_tenant("acme").await?;
    let alice = gw.device(&acme.api_key, "alice").await?;

    // mls-rs' default lifetime (365 days) is longer than peers accept.
    let long = key_package(
        &alice.identity.to_credential_bytes(),
        &alice.secret_key,
        &alice.public_key,
        Duration::from_secs(365 * 24 * 3600),
    )?;
    let req = PublishKeyPackagesRequest {
        key_packages: vec![long],
        last_resort: None,
    };
    assert_eq!(
        problem(publish_raw(&gw, &alice, &req).await?).await?.1.code,
        "invalid_key_package"
    );

    // Not a KeyPackage: a KeyPackage message with a flipped byte in the signature.
    let mut tampered = alice.key_packages(1)?.remove(0);
    if let Some(b) = tampered.last_mut() {
        *b ^= 1;
    }
    let req = PublishKeyPackagesRequest {
        key_packages: vec![tampered],
        last_resort: None,
    };
    assert_eq!(
        problem(publish_raw(&gw, &alice, &req).await?).await?.1.code,
        "invalid_key_package"
    );

    // The stock cap: 3 fit, then 2 more exceed 4.
    assert_eq!(gw.publish(&alice, 3, false).await?.one_time, 3);
    let req = PublishKeyPackagesRequest {
        key_packages: alice.key_packages(2)?,
        last_resort: None,
    };
    let (status, p) = problem(publish_raw(&gw, &alice, &req).await?).await?;
    assert_eq!((status.as_u16(), p.code.as_str()), (422, "invalid_field"));
    let req = PublishKeyPackagesRequest {
        key_packages: alice.key_packages(5)?,
        last_resort: None,
    };
    assert_eq!(
        problem(publish_raw(&gw, &alice, &req).await?).await?.1.code,
        "invalid_field"
    );
    assert_eq!(stock(&gw, &alice).await?.one_time, 3);
    Ok(())
}

#[tokio::test]
async fn claims_are_rate_limited_per_requester() -> Result<()> {
    let gw = TestGateway::start_with(|c| {
        c.claim_burst = 2;
        c.claim_rate_per_minute = 1;
    })
    .await?;
    let acme = gw.create_tenant("acme").await?;
    let alice = gw.device(&acme.api_key, "alice").await?;
    gw.publish(&alice, 5, true).await?;
    let bob = gw.device(&acme.api_key, "bob").await?;
    let api_key = format!("Bearer {}", acme.api_key);

    for _ in 0..2 {
        assert_eq!(
            claim(&gw, &api_key, "alice").await?.status(),
            StatusCode::OK
        );
    }
    let resp = claim(&gw, &api_key, "alice").await?;
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (status, p) = problem(resp).await?;
    assert_eq!((status.as_u16(), p.code.as_str()), (429, "rate_limited"));
    assert!((1..=60).contains(&retry_after), "retry-after {retry_after}");
    assert_eq!(p.retry_after, Some(retry_after));

    // Another requester has its own bucket; the refused claim took nothing.
    assert_eq!(
        claim(&gw, &bob.auth(), "alice").await?.status(),
        StatusCode::OK
    );
    assert_eq!(stock(&gw, &alice).await?.one_time, 2);
    Ok(())
}
