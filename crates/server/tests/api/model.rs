//! Property test of the KeyPackage directory against a simple model: random interleavings of
//! publish, last-resort replacement, single claims and bursts of concurrent claims, run on the
//! SQLite store. Every one-time KeyPackage is handed out exactly once, oldest first; the
//! last-resort one is served (and kept) only when none is left.

use std::collections::{HashSet, VecDeque};

use proptest::prelude::*;
use sealgate_server::directory::store::{
    ClaimOutcome, DirectoryStore, NewDevice, NewEnrollment, NewKeyPackage, PublishOutcome,
    TenantRecord,
};
use sealgate_server::store::sqlite::SqliteStore;

const NOW: i64 = 1_800_000_000;
const MAX: u64 = 20;

#[derive(Debug, Clone)]
enum Op {
    Publish(usize),
    ReplaceLastResort,
    Claim,
    ConcurrentClaims(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..6).prop_map(Op::Publish),
        1 => Just(Op::ReplaceLastResort),
        3 => Just(Op::Claim),
        2 => (2usize..8).prop_map(Op::ConcurrentClaims),
    ]
}

#[derive(Default)]
struct Model {
    one_time: VecDeque<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
}

fn kp(n: &mut u32) -> NewKeyPackage {
    *n += 1;
    NewKeyPackage {
        kp_ref: format!("ref-{n}").into_bytes(),
        data: format!("kp-{n}").into_bytes(),
        expires_at: NOW + 3600,
    }
}

async fn setup(store: &SqliteStore) -> anyhow::Result<String> {
    let tenant = TenantRecord {
        tenant_id: "tn1".into(),
        name: "acme".into(),
        created_at: NOW,
    };
    anyhow::ensure!(store.create_tenant(&tenant, "keyhash").await?);
    anyhow::ensure!(
        store
            .create_enrollment(&NewEnrollment {
                token_hash: "enrollhash".into(),
                tenant_id: "tn1".into(),
                user_id: "alice".into(),
                phone: None,
                created_at: NOW,
                expires_at: NOW + 60,
            })
            .await?
    );
    let device = store
        .register_device(
            "enrollhash",
            &NewDevice {
                device_id: "dv1".into(),
                token_hash: "devhash".into(),
                signature_key: vec![1; 32],
                name: None,
            },
            NOW,
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("enrollment refused"))?;
    Ok(device.device_id)
}

async fn run(ops: Vec<Op>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("model.db")).await?;
    let device = setup(&store).await?;
    let mut model = Model::default();
    let mut counter = 0u32;
    let mut handed_out: HashSet<Vec<u8>> = HashSet::new();

    for op in ops {
        match op {
            Op::Publish(n) => {
                let batch: Vec<_> = (0..n).map(|_| kp(&mut counter)).collect();
                let outcome = store
                    .publish_key_packages(&device, &batch, None, MAX, NOW)
                    .await?;
                if model.one_time.len() + n > MAX as usize {
                    anyhow::ensure!(
                        matches!(outcome, PublishOutcome::StockFull { .. }),
                        "{outcome:?}"
                    );
                } else {
                    model.one_time.extend(batch.into_iter().map(|k| k.data));
                    let PublishOutcome::Stored(stock) = outcome else {
                        anyhow::bail!("{outcome:?}");
                    };
                    anyhow::ensure!(stock.one_time == model.one_time.len() as u64);
                    anyhow::ensure!(stock.last_resort == model.last_resort.is_some());
                }
            }
            Op::ReplaceLastResort => {
                let k = kp(&mut counter);
                let outcome = store
                    .publish_key_packages(&device, &[], Some(&k), MAX, NOW)
                    .await?;
                anyhow::ensure!(matches!(outcome, PublishOutcome::Stored(_)), "{outcome:?}");
                model.last_resort = Some(k.data);
            }
            Op::Claim => {
                let outcome = store.claim_key_packages("tn1", "alice", None, NOW).await?;
                match (model.one_time.pop_front(), &model.last_resort, outcome) {
                    (Some(expected), _, ClaimOutcome::Claimed(got)) => {
                        anyhow::ensure!(got.len() == 1 && !got[0].last_resort);
                        anyhow::ensure!(got[0].data == expected, "not oldest first");
                        anyhow::ensure!(handed_out.insert(expected), "handed out twice");
                    }
                    (None, Some(last), ClaimOutcome::Claimed(got)) => {
                        anyhow::ensure!(got.len() == 1 && got[0].last_resort);
                        anyhow::ensure!(&got[0].data == last);
                    }
                    (None, None, ClaimOutcome::NoKeyPackage) => {}
                    (expected, last, got) => {
                        anyhow::bail!("model {expected:?}/{last:?}, store {got:?}")
                    }
                }
            }
            Op::ConcurrentClaims(n) => {
                let claims = (0..n).map(|_| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        store.claim_key_packages("tn1", "alice", None, NOW).await
                    })
                });
                let results = futures::future::try_join_all(claims).await?;
                let take = n.min(model.one_time.len());
                let expected: HashSet<Vec<u8>> = model.one_time.drain(..take).collect();
                let mut got_one_time = HashSet::new();
                let mut got_last_resort = 0;
                for r in results {
                    match r? {
                        ClaimOutcome::Claimed(got) => {
                            anyhow::ensure!(got.len() == 1);
                            if got[0].last_resort {
                                anyhow::ensure!(Some(&got[0].data) == model.last_resort.as_ref());
                                got_last_resort += 1;
                            } else {
                                anyhow::ensure!(
                                    handed_out.insert(got[0].data.clone()),
                                    "handed out twice"
                                );
                                got_one_time.insert(got[0].data.clone());
                            }
                        }
                        ClaimOutcome::NoKeyPackage => {
                            anyhow::ensure!(model.last_resort.is_none());
                        }
                        other => anyhow::bail!("{other:?}"),
                    }
                }
                anyhow::ensure!(got_one_time == expected, "burst took the wrong ones");
                if model.last_resort.is_some() {
                    anyhow::ensure!(got_last_resort == n - take);
                }
            }
        }
        let stock = store.key_package_stock(&device, NOW).await?;
        anyhow::ensure!(
            stock.one_time == model.one_time.len() as u64,
            "stock drifted"
        );
        anyhow::ensure!(stock.last_resort == model.last_resort.is_some());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn key_package_directory_matches_model(ops in proptest::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        rt.block_on(run(ops)).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
    }
}
