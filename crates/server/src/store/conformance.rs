//! The one conformance suite of the metadata backends, as a macro: each backend's test module
//! invokes `backend_suite!(open)` with its own opener, and gets every contract test of every
//! area (directory, DS, send pipeline and table queue, upload metadata). SQLite runs it
//! always; PostgreSQL when `SEALGATE_TEST_POSTGRES_URL` is set (the opener prints why it
//! skips otherwise). The NATS queue runs the queue part in `delivery::nats`.
//!
//! `open(test_name)` must return `Option<(guard, Arc<backend>)>`: `None` = skipped, the guard
//! keeps the backend's resources (temp folder, schema) alive for the test. The tests may only
//! use trait methods, never a backend's tables.

use crate::blobs::store::{CreateOutcome, Part, Upload, UploadStore};

fn upload(id: &str, tenant: &str, length: u64) -> Upload {
    Upload {
        attachment_id: id.into(),
        tenant_id: tenant.into(),
        group_id: "0a0b".into(),
        created_by: "dv-up".into(),
        length,
        offset: 0,
        created_at: 100,
        completed_at: None,
        expires_at: 1000,
    }
}

/// Quotas, the offset compare-and-swap, completion, expiry and deletion.
pub async fn uploads_lifecycle(store: &dyn UploadStore) {
    assert_eq!(
        store
            .create_upload(&upload("up1", "t", 60), 100, 100)
            .await
            .expect("create"),
        CreateOutcome::Created
    );
    assert_eq!(
        store
            .create_upload(&upload("up2", "t", 50), 100, 100)
            .await
            .expect("quota"),
        CreateOutcome::QuotaExceeded { used: 60 }
    );
    assert_eq!(
        store
            .create_upload(&upload("up3", "other", 50), 100, 100)
            .await
            .expect("other tenant"),
        CreateOutcome::Created
    );
    let part = |offset, length, key: &str| Part {
        offset,
        length,
        object_key: key.into(),
    };
    let u = store
        .append_part("up1", &part(0, 40, "k0"), 200, 5000)
        .await
        .expect("append")
        .expect("at offset 0");
    assert_eq!((u.offset, u.completed_at), (40, None));
    assert!(
        store
            .append_part("up1", &part(0, 40, "k0b"), 200, 5000)
            .await
            .expect("stale")
            .is_none(),
        "a stale offset loses"
    );
    assert!(
        store
            .append_part("up1", &part(40, 30, "kx"), 200, 5000)
            .await
            .expect("long")
            .is_none(),
        "past the declared length"
    );
    let done = store
        .append_part("up1", &part(40, 20, "k1"), 300, 5000)
        .await
        .expect("append")
        .expect("completes");
    assert_eq!((done.completed_at, done.expires_at), (Some(300), 5300));
    let parts = store.parts("up1").await.expect("parts");
    assert_eq!(
        parts
            .iter()
            .map(|p| p.object_key.as_str())
            .collect::<Vec<_>>(),
        ["k0", "k1"]
    );
    assert_eq!(store.tenant_usage("t", 100).await.expect("usage"), 60);
    assert_eq!(
        store.expired_uploads(2000, 10).await.expect("expired"),
        ["up3"]
    );
    store.delete_upload("up3").await.expect("delete");
    assert!(store.upload("up3").await.expect("gone").is_none());
    assert_eq!(store.tenant_usage("t", 6000).await.expect("usage"), 0);
}

/// Concurrent appends at one offset: exactly one is recorded.
pub async fn concurrent_appends_one_wins(store: std::sync::Arc<dyn UploadStore>) {
    assert_eq!(
        store
            .create_upload(&upload("race", "t", 100), 1000, 100)
            .await
            .expect("create"),
        CreateOutcome::Created
    );
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let p = Part {
                    offset: 0,
                    length: 10,
                    object_key: format!("k{i}"),
                };
                store
                    .append_part("race", &p, 200, 10)
                    .await
                    .expect("append")
                    .is_some()
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.expect("join"));
    }
    assert_eq!(wins, 1);
    assert_eq!(store.parts("race").await.expect("parts").len(), 1);
}

/// Every contract test, against the backend `$open` gives. See the module docs.
macro_rules! backend_suite {
    ($open:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn directory_tenants_enrollment_devices() {
            let Some((_guard, b)) = $open("directory_tenants_enrollment_devices").await else {
                return;
            };
            $crate::directory::conformance::tenants_enrollment_devices(b.as_ref()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn directory_publish_and_claim() {
            let Some((_guard, b)) = $open("directory_publish_and_claim").await else {
                return;
            };
            $crate::directory::conformance::publish_and_claim(b.as_ref()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn directory_concurrent_claims() {
            let Some((_guard, b)) = $open("directory_concurrent_claims").await else {
                return;
            };
            $crate::directory::conformance::concurrent_claims_are_exactly_once(b).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn directory_concurrent_registration() {
            let Some((_guard, b)) = $open("directory_concurrent_registration").await else {
                return;
            };
            $crate::directory::conformance::concurrent_registration_is_exactly_once(b).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn policy_and_holds() {
            let Some((_guard, b)) = $open("policy_and_holds").await else {
                return;
            };
            $crate::policy::conformance::policy_and_holds(b.as_ref()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn links_lifecycle() {
            let Some((_guard, b)) = $open("links_lifecycle").await else {
                return;
            };
            $crate::policy::conformance::links_lifecycle(b.as_ref()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn ds_lifecycle() {
            let Some((_guard, b)) = $open("ds_lifecycle").await else {
                return;
            };
            $crate::ds::conformance::lifecycle(b.as_ref()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn ds_concurrent_commits_one_wins() {
            let Some((_guard, b)) = $open("ds_concurrent_commits_one_wins").await else {
                return;
            };
            $crate::ds::conformance::concurrent_cas(b).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn ds_cas_sequence() {
            let Some((_guard, b)) = $open("ds_cas_sequence").await else {
                return;
            };
            $crate::ds::conformance::random_cas_sequence(b.as_ref(), &[0, 0, 1, 3, 2, 2, 1, 3, 4])
                .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn delivery_contract() {
            use $crate::delivery::conformance as c;
            let Some((_g, b)) = $open("delivery_contract").await else {
                return;
            };
            c::idempotency_inside_and_across_batches(b.as_ref()).await;
            let Some((_g, b)) = $open("delivery_contract").await else {
                return;
            };
            c::a_large_batch_replays_every_key(b.as_ref()).await;
            let Some((_g, b)) = $open("delivery_contract").await else {
                return;
            };
            c::lease_retry_ack(b.as_ref()).await;
            let Some((_g, b)) = $open("delivery_contract").await else {
                return;
            };
            c::expired_lease_is_leased_again(b.as_ref()).await;
            let Some((_g, b)) = $open("delivery_contract").await else {
                return;
            };
            c::dead_letter_and_replay(b.as_ref()).await;
            let Some((_g, b)) = $open("delivery_contract").await else {
                return;
            };
            c::statuses_move_forward_with_callbacks(b.as_ref()).await;
            let Some((_g, b)) = $open("delivery_contract").await else {
                return;
            };
            c::receipt_before_sent_records_sent_first(b.as_ref()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn delivery_concurrent_leases() {
            let Some((_guard, b)) = $open("delivery_concurrent_leases").await else {
                return;
            };
            $crate::delivery::conformance::concurrent_leases_are_disjoint(b).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn delivery_daily_quota() {
            let Some((_guard, b)) = $open("delivery_daily_quota").await else {
                return;
            };
            $crate::delivery::conformance::daily_quota(b).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn queue_on_the_real_clock() {
            let Some((_guard, b)) = $open("queue_on_the_real_clock").await else {
                return;
            };
            $crate::delivery::conformance::real_clock_queue(
                b.as_ref(),
                &$crate::delivery::conformance::RealClock::table(),
            )
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn uploads_lifecycle() {
            let Some((_guard, b)) = $open("uploads_lifecycle").await else {
                return;
            };
            $crate::store::conformance::uploads_lifecycle(b.as_ref()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn uploads_concurrent_appends() {
            let Some((_guard, b)) = $open("uploads_concurrent_appends").await else {
                return;
            };
            $crate::store::conformance::concurrent_appends_one_wins(b).await;
        }
    };
}
pub(crate) use backend_suite;
