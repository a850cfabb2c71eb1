//! Conformance tests of [`DirectoryStore`]: the contract every backend must meet, written
//! once as plain async functions and run by `store::conformance::backend_suite!` against
//! SQLite always and PostgreSQL when its URL is set. The exactly-once rules (enrollment
//! tokens, one-time KeyPackages) are checked under real concurrency.
//!
//! It must only use trait methods, never a backend's tables.

use std::collections::HashSet;
use std::sync::Arc;

use super::store::{
    ClaimOutcome, DirectoryStore, NewDevice, NewEnrollment, NewKeyPackage, PublishOutcome,
    TenantRecord,
};
use crate::store::Store;

const TENANT: &str = "tn-dir-conf";

fn kp(tag: &str, expires_at: i64) -> NewKeyPackage {
    NewKeyPackage {
        kp_ref: format!("ref-{tag}").into_bytes(),
        data: format!("kp-{tag}").into_bytes(),
        expires_at,
    }
}

async fn tenant(store: &dyn DirectoryStore) {
    let t = TenantRecord {
        tenant_id: TENANT.into(),
        name: "dir-conformance".into(),
        created_at: 1,
    };
    assert!(
        store
            .create_tenant(&t, "dir-key-hash")
            .await
            .expect("tenant")
    );
}

/// Enroll `user` and register one device; returns its id.
async fn device(store: &dyn DirectoryStore, user: &str, n: u32) -> String {
    let token = format!("enroll-{user}-{n}");
    let e = NewEnrollment {
        token_hash: token.clone(),
        tenant_id: TENANT.into(),
        user_id: user.into(),
        phone: Some("+15550001111".into()),
        created_at: 10,
        expires_at: 1000,
    };
    assert!(store.create_enrollment(&e).await.expect("enroll"));
    let d = NewDevice {
        device_id: format!("dv-{user}-{n}"),
        token_hash: format!("devtok-{user}-{n}"),
        signature_key: vec![n as u8; 32],
        name: None,
    };
    let rec = store
        .register_device(&token, &d, 20 + i64::from(n))
        .await
        .expect("register")
        .expect("fresh token");
    rec.device_id
}

/// Tenants, keys, enrollment, devices, revocation.
pub async fn tenants_enrollment_devices(store: &dyn Store) {
    tenant(store).await;
    let dup = TenantRecord {
        tenant_id: "other-id".into(),
        name: "dir-conformance".into(),
        created_at: 2,
    };
    assert!(
        !store.create_tenant(&dup, "k2").await.expect("dup"),
        "name taken"
    );
    assert_eq!(
        store
            .tenant_by_api_key_hash("dir-key-hash")
            .await
            .expect("key"),
        Some(TENANT.to_owned())
    );
    assert!(store.tenant("nope").await.expect("tenant").is_none());
    let unknown = NewEnrollment {
        token_hash: "t-x".into(),
        tenant_id: "no-such-tenant".into(),
        user_id: "u".into(),
        phone: None,
        created_at: 0,
        expires_at: 10,
    };
    assert!(!store.create_enrollment(&unknown).await.expect("enroll"));

    let dev = device(store, "alice", 1).await;
    let again = NewDevice {
        device_id: "dv-other".into(),
        token_hash: "devtok-other".into(),
        signature_key: vec![9; 32],
        name: None,
    };
    assert!(
        store
            .register_device("enroll-alice-1", &again, 30)
            .await
            .expect("reuse")
            .is_none(),
        "an enrollment token is single-use"
    );
    let auth = store
        .device_by_token_hash("devtok-alice-1")
        .await
        .expect("auth")
        .expect("active");
    assert_eq!(
        (auth.tenant_id.as_str(), auth.user_id.as_str()),
        (TENANT, "alice")
    );
    assert_eq!(
        store
            .user(TENANT, "alice")
            .await
            .expect("user")
            .and_then(|u| u.phone),
        Some("+15550001111".to_owned())
    );
    assert!(store.revoke_device(TENANT, &dev, 50).await.expect("revoke"));
    assert!(!store.revoke_device(TENANT, &dev, 51).await.expect("twice"));
    assert!(
        store
            .device_by_token_hash("devtok-alice-1")
            .await
            .expect("auth")
            .is_none()
    );
    let rec = store
        .device(TENANT, &dev)
        .await
        .expect("dev")
        .expect("kept");
    assert_eq!(rec.revoked_at, Some(50));
    store.ping().await.expect("ping");
}

/// Publishing: caps, duplicates, expiry, last resort; claiming falls back to last resort.
pub async fn publish_and_claim(store: &dyn Store) {
    tenant(store).await;
    let dev = device(store, "bob", 1).await;
    let out = store
        .publish_key_packages(
            &dev,
            &[kp("a", 500), kp("b", 500)],
            Some(&kp("lr", 500)),
            3,
            100,
        )
        .await
        .expect("publish");
    let PublishOutcome::Stored(stock) = out else {
        panic!("expected Stored, got {out:?}");
    };
    assert_eq!((stock.one_time, stock.last_resort), (2, true));
    assert_eq!(
        store
            .publish_key_packages(&dev, &[kp("c", 500), kp("d", 500)], None, 3, 100)
            .await
            .expect("cap"),
        PublishOutcome::StockFull { have: 2, max: 3 }
    );
    assert_eq!(
        store
            .publish_key_packages(&dev, &[kp("a", 500)], None, 10, 100)
            .await
            .expect("dup"),
        PublishOutcome::Duplicate
    );
    assert_eq!(
        store
            .publish_key_packages("dv-nobody", &[kp("z", 500)], None, 10, 100)
            .await
            .expect("unknown"),
        PublishOutcome::UnknownDevice
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        match store
            .claim_key_packages(TENANT, "bob", None, 100)
            .await
            .expect("claim")
        {
            ClaimOutcome::Claimed(c) => got.push((c[0].data.clone(), c[0].last_resort)),
            other => panic!("expected a claim, got {other:?}"),
        }
    }
    assert_eq!(
        got,
        vec![
            (b"kp-a".to_vec(), false),
            (b"kp-b".to_vec(), false),
            (b"kp-lr".to_vec(), true)
        ],
        "oldest one-time first, then the last-resort one (kept)"
    );
    assert_eq!(
        store
            .claim_key_packages(TENANT, "bob", None, 600)
            .await
            .expect("expired"),
        ClaimOutcome::NoKeyPackage
    );
    assert_eq!(
        store
            .claim_key_packages(TENANT, "bob", Some(&dev), 100)
            .await
            .expect("excluded"),
        ClaimOutcome::UnknownUser
    );
    let stock = store.key_package_stock(&dev, 100).await.expect("stock");
    assert_eq!((stock.one_time, stock.last_resort), (0, true));
}

/// Many concurrent claims: every one-time KeyPackage goes to exactly one caller.
pub async fn concurrent_claims_are_exactly_once(store: Arc<dyn Store>) {
    tenant(store.as_ref()).await;
    let dev = device(store.as_ref(), "carol", 1).await;
    let kps: Vec<NewKeyPackage> = (0..60).map(|i| kp(&format!("c{i}"), 10_000)).collect();
    assert!(matches!(
        store
            .publish_key_packages(&dev, &kps, Some(&kp("c-lr", 10_000)), 100, 100)
            .await
            .expect("publish"),
        PublishOutcome::Stored(_)
    ));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for _ in 0..10 {
                    if let ClaimOutcome::Claimed(c) = store
                        .claim_key_packages(TENANT, "carol", None, 100)
                        .await
                        .expect("claim")
                    {
                        mine.extend(c.into_iter().filter(|k| !k.last_resort).map(|k| k.data));
                    }
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("join"));
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "a one-time KeyPackage was handed out twice"
    );
    assert_eq!(all.len(), 60, "80 claims take all 60 one-time KeyPackages");
}

/// Concurrent redemptions of one enrollment token: exactly one device is created.
pub async fn concurrent_registration_is_exactly_once(store: Arc<dyn Store>) {
    tenant(store.as_ref()).await;
    let e = NewEnrollment {
        token_hash: "race-token".into(),
        tenant_id: TENANT.into(),
        user_id: "dave".into(),
        phone: None,
        created_at: 1,
        expires_at: 1000,
    };
    assert!(store.create_enrollment(&e).await.expect("enroll"));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let d = NewDevice {
                    device_id: format!("dv-race-{i}"),
                    token_hash: format!("devtok-race-{i}"),
                    signature_key: vec![1; 32],
                    name: None,
                };
                store
                    .register_device("race-token", &d, 5)
                    .await
                    .expect("register")
                    .is_some()
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.expect("join"));
    }
    assert_eq!(wins, 1);
    assert_eq!(
        store
            .devices_of_user(TENANT, "dave")
            .await
            .expect("devs")
            .len(),
        1
    );
}
