//! Contract tests of [`PolicyStore`] and [`LinkStore`], run against every backend by
//! `store::conformance::backend_suite!`. Trait methods only, never a backend's tables.

use sealgate_proto::policy::HoldStatus;
use sealgate_proto::send::MessageClass;

use super::store::{HoldRecord, PolicyStore};
use crate::links::store::{LinkState, LinkStore, NewLink, OpenOutcome, Proof};

/// Versions count up per tenant, every change is audited with both digests, holds move
/// waiting → ready → done.
pub async fn policy_and_holds(store: &dyn PolicyStore) {
    assert!(store.policy("t1").await.expect("read").is_none());
    let v1 = store
        .set_policy("t1", "{\"a\":1}", "d1", "api_key:1", 10)
        .await
        .expect("set");
    assert_eq!(v1.version, 1);
    let v2 = store
        .set_policy("t1", "{\"a\":2}", "d2", "operator", 20)
        .await
        .expect("set");
    assert_eq!(v2.version, 2);
    assert_eq!(store.policy("t1").await.expect("read"), Some(v2));
    store
        .set_policy("t2", "{}", "x", "operator", 30)
        .await
        .expect("other tenant");
    let h = store.policy_history("t1", 10).await.expect("history");
    assert_eq!(h.len(), 2);
    assert_eq!((h[0].version, h[0].previous_version), (2, 1));
    assert_eq!(
        (h[0].digest.as_str(), h[0].previous_digest.as_str()),
        ("d2", "d1")
    );
    assert_eq!(
        (h[1].previous_version, h[1].actor.as_str()),
        (0, "api_key:1")
    );
    assert_eq!(h[1].previous_digest, super::default_digest());

    let hold = |id: &str, to: &str| HoldRecord {
        hold_id: id.into(),
        tenant_id: "t1".into(),
        recipient: to.into(),
        class: MessageClass::Transactional,
        created_at: 100,
        expires_at: 1000,
        ready_at: None,
        done_at: None,
    };
    store
        .create_hold(&hold("h1", "+15550001"))
        .await
        .expect("hold");
    store.create_hold(&hold("h2", "bob")).await.expect("hold");
    store
        .create_hold(&hold("h3", "+15550002"))
        .await
        .expect("hold");
    let n = store
        .mark_holds_ready("t1", &["bob".into(), "+15550001".into()], 500)
        .await
        .expect("ready");
    assert_eq!(n, 2);
    let h1 = store.hold("t1", "h1").await.expect("read").expect("h1");
    assert_eq!(h1.status(600), HoldStatus::Ready);
    let h3 = store.hold("t1", "h3").await.expect("read").expect("h3");
    assert_eq!(
        (h3.status(600), h3.status(1000)),
        (HoldStatus::Waiting, HoldStatus::Expired)
    );
    assert_eq!(
        store
            .mark_holds_ready("t1", &["+15550002".into()], 1000)
            .await
            .expect("late"),
        0,
        "an expired hold stays expired"
    );
    assert!(
        store.hold("t2", "h1").await.expect("read").is_none(),
        "per tenant"
    );
    assert!(store.finish_hold("t1", "h1", 700).await.expect("finish"));
    assert!(!store.finish_hold("t1", "h1", 700).await.expect("twice"));
    let open = store.open_holds("t1", 10).await.expect("list");
    assert_eq!(
        open.iter().map(|h| h.hold_id.as_str()).collect::<Vec<_>>(),
        ["h2", "h3"]
    );
}

/// One open per link, attempts lock, expiry wipes.
pub async fn links_lifecycle(store: &dyn LinkStore) {
    let link = |id: &str, expires_at| NewLink {
        link_id: id.into(),
        tenant_id: "t1".into(),
        recipient: "+15550001".into(),
        ciphertext: vec![1, 2, 3],
        created_at: 100,
        expires_at,
    };
    store
        .create_link(&link("l1", 10_000))
        .await
        .expect("create");
    store
        .create_link(&link("l2", 10_000))
        .await
        .expect("create");
    store.create_link(&link("l3", 200)).await.expect("create");
    assert_eq!(
        store
            .open_link("l1", Proof::Code("c"), 150, 3)
            .await
            .expect("open"),
        OpenOutcome::NoCode
    );
    assert!(store.set_otp("l1", "good", 5000, 150).await.expect("otp"));
    assert_eq!(
        store
            .open_link("l1", Proof::Code("bad"), 160, 3)
            .await
            .expect("open"),
        OpenOutcome::WrongCode { remaining: 2 }
    );
    assert_eq!(
        store
            .open_link("l1", Proof::Code("good"), 6000, 3)
            .await
            .expect("open"),
        OpenOutcome::NoCode,
        "the code expired"
    );
    assert_eq!(
        store
            .open_link("l1", Proof::Code("good"), 170, 3)
            .await
            .expect("open"),
        OpenOutcome::Opened(vec![1, 2, 3])
    );
    assert_eq!(
        store
            .open_link("l1", Proof::Code("good"), 180, 3)
            .await
            .expect("open"),
        OpenOutcome::NotActive(LinkState::Used)
    );
    let meta = store.link("l1").await.expect("meta").expect("l1");
    assert_eq!((meta.otp_sends, meta.attempts), (1, 1));
    assert!(
        !store.set_otp("l1", "again", 5000, 190).await.expect("otp"),
        "used"
    );

    assert!(store.set_otp("l2", "good", 5000, 150).await.expect("otp"));
    for remaining in [2, 1, 0] {
        assert_eq!(
            store
                .open_link("l2", Proof::Code("bad"), 160, 3)
                .await
                .expect("open"),
            OpenOutcome::WrongCode { remaining }
        );
    }
    assert_eq!(
        store
            .open_link("l2", Proof::Code("good"), 170, 3)
            .await
            .expect("open"),
        OpenOutcome::NotActive(LinkState::Locked)
    );
    assert_eq!(
        store.purge_links(300).await.expect("purge"),
        1,
        "only l3 expired with content"
    );
    assert_eq!(
        store
            .open_link("l3", Proof::Code("x"), 300, 3)
            .await
            .expect("open"),
        OpenOutcome::NotActive(LinkState::Expired)
    );
    assert_eq!(
        store
            .open_link("nope", Proof::Code("x"), 300, 3)
            .await
            .expect("open"),
        OpenOutcome::Unknown
    );
    // A proof checked outside the store (an OIDC ID token): failures count, success opens
    // once, without any code having been requested.
    store
        .create_link(&link("l4", 10_000))
        .await
        .expect("create");
    assert_eq!(
        store
            .open_link("l4", Proof::Failed, 310, 3)
            .await
            .expect("open"),
        OpenOutcome::WrongCode { remaining: 2 }
    );
    assert_eq!(
        store
            .open_link("l4", Proof::Verified, 320, 3)
            .await
            .expect("open"),
        OpenOutcome::Opened(vec![1, 2, 3])
    );
    assert_eq!(
        store
            .open_link("l4", Proof::Verified, 330, 3)
            .await
            .expect("open"),
        OpenOutcome::NotActive(LinkState::Used)
    );
}
