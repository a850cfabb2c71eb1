//! Conformance tests of [`DsStore`]: one generic suite every backend runs (SQLite always,
//! PostgreSQL once it exists), so the contract is written once.
//!
//! The suite only uses trait methods (plus `DirectoryStore::create_tenant` to satisfy the
//! tenant reference); it must never reach into a backend's tables.

use std::collections::BTreeSet;

use sealgate_proto::api::EventKind;

use super::store::{
    AcceptedCommit, ApplicationOutcome, Delivery, NewGroup, RosterEntry, StoredMessage,
};
use crate::directory::store::TenantRecord;
use crate::store::Store;

pub const TENANT: &str = "tn-conf";
pub const GROUP: &str = "0a0b";

fn member(i: u32, user: &str, device: &str) -> RosterEntry {
    RosterEntry {
        leaf_index: i,
        user_id: user.into(),
        device_id: device.into(),
        signature_key: vec![i as u8; 32],
    }
}

fn message(id: &str, kind: EventKind, epoch: u64, sender: &str) -> StoredMessage {
    StoredMessage {
        message_id: id.into(),
        group_id: GROUP.into(),
        kind,
        epoch,
        sender_user: sender.into(),
        sender_device: format!("dv-{sender}"),
        bytes: format!("opaque-{id}").into_bytes(),
        received_at: 1,
    }
}

/// A tenant and a group at epoch 0 with alice as its only member.
pub async fn setup(store: &dyn Store) {
    let tenant = TenantRecord {
        tenant_id: TENANT.into(),
        name: "conformance".into(),
        created_at: 0,
    };
    assert!(
        store
            .create_tenant(&tenant, "key-hash-conformance")
            .await
            .expect("tenant")
    );
    let group = NewGroup {
        group_id: GROUP.into(),
        tenant_id: TENANT.into(),
        epoch: 0,
        snapshot: b"snapshot-0".to_vec(),
        group_info: b"gi-0".to_vec(),
        created_by: "dv-alice".into(),
        roster: vec![member(0, "alice", "dv-alice")],
        now_ms: 1,
    };
    assert!(store.create_group(&group).await.expect("create"));
    assert!(!store.create_group(&group).await.expect("second create"));
}

/// An accepted commit from `cas` to `cas + 1` that sets the roster to `roster`.
pub fn commit(cas: u64, roster: Vec<RosterEntry>, tag: &str) -> AcceptedCommit {
    let recipients: Vec<String> = roster
        .iter()
        .map(|m| m.device_id.clone())
        .filter(|d| d != "dv-alice")
        .collect();
    AcceptedCommit {
        group_id: GROUP.into(),
        cas_epoch: cas,
        new_epoch: cas + 1,
        snapshot: format!("snapshot-{}", cas + 1).into_bytes(),
        group_info: None,
        roster,
        commit: Delivery {
            message: message(
                &format!("msg_c{cas}{tag}"),
                EventKind::Commit,
                cas + 1,
                "alice",
            ),
            recipients,
        },
        welcome: None,
        now_ms: 2,
    }
}

/// Group creation, reads, CAS commits, fan-out, mailbox and ack with garbage collection.
pub async fn lifecycle(store: &dyn Store) {
    setup(store).await;
    let g = store.group(GROUP).await.expect("read").expect("exists");
    assert_eq!(g.epoch, 0);
    assert_eq!(g.tenant_id, TENANT);
    assert_eq!(g.roster, vec![member(0, "alice", "dv-alice")]);
    assert!(store.group("ffff").await.expect("read").is_none());
    let gi = store.group_info(GROUP).await.expect("gi").expect("some");
    assert_eq!((gi.epoch, gi.group_info.as_slice()), (0, &b"gi-0"[..]));

    // Add bob with a welcome.
    let roster = vec![member(0, "alice", "dv-alice"), member(1, "bob", "dv-bob")];
    let mut c = commit(0, roster.clone(), "");
    c.commit.recipients = vec![];
    c.group_info = Some(b"gi-1".to_vec());
    c.welcome = Some(Delivery {
        message: message("msg_w1", EventKind::Welcome, 1, "alice"),
        recipients: vec!["dv-bob".into()],
    });
    assert!(store.apply_commit(&c).await.expect("apply"));
    // Replaying the same CAS loses.
    assert!(
        !store
            .apply_commit(&commit(0, roster.clone(), "x"))
            .await
            .expect("replay")
    );
    let st = store
        .group_state(GROUP)
        .await
        .expect("state")
        .expect("exists");
    assert_eq!(st.summary.epoch, 1);
    assert_eq!(st.snapshot, b"snapshot-1");
    assert_eq!(st.summary.roster, roster);
    let gi = store.group_info(GROUP).await.expect("gi").expect("some");
    assert_eq!((gi.epoch, gi.group_info.as_slice()), (1, &b"gi-1"[..]));

    let bob = store
        .fetch_mailbox("dv-bob", 0, 100)
        .await
        .expect("mailbox");
    assert_eq!(bob.len(), 1);
    assert_eq!(bob[0].kind, EventKind::Welcome);
    assert_eq!(bob[0].epoch, 1);
    assert!(
        store
            .fetch_mailbox("dv-alice", 0, 100)
            .await
            .expect("mb")
            .is_empty()
    );

    // Application message: every member but the sender, once.
    let m = message("msg_a1", EventKind::Application, 1, "alice");
    assert_eq!(
        store.store_application(TENANT, &m).await.expect("store"),
        ApplicationOutcome::Stored {
            recipients: vec!["dv-bob".into()]
        }
    );
    assert_eq!(
        store
            .store_application("tn-other", &m)
            .await
            .expect("store"),
        ApplicationOutcome::UnknownGroup
    );
    let mut stranger = message("msg_a2", EventKind::Application, 1, "carol");
    assert_eq!(
        store
            .store_application(TENANT, &stranger)
            .await
            .expect("store"),
        ApplicationOutcome::NotMember
    );
    stranger.sender_device = "dv-bob".into();
    stranger.epoch = 2;
    assert_eq!(
        store
            .store_application(TENANT, &stranger)
            .await
            .expect("store"),
        ApplicationOutcome::EpochOutOfRange { current: 1 }
    );

    let bob = store
        .fetch_mailbox("dv-bob", 0, 100)
        .await
        .expect("mailbox");
    assert_eq!(bob.len(), 2);
    assert!(bob[0].seq < bob[1].seq);
    assert_eq!(bob[1].kind, EventKind::Application);
    assert_eq!(bob[1].message, b"opaque-msg_a1");
    let page = store
        .fetch_mailbox("dv-bob", bob[0].seq, 1)
        .await
        .expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].seq, bob[1].seq);
    assert_eq!(store.stored_message_count().await.expect("count"), 2);

    // Ack the welcome: its row goes; the application message stays until acked.
    assert_eq!(store.ack("dv-bob", bob[0].seq).await.expect("ack"), 1);
    assert_eq!(store.stored_message_count().await.expect("count"), 1);
    assert_eq!(store.ack("dv-bob", bob[1].seq).await.expect("ack"), 1);
    assert_eq!(store.stored_message_count().await.expect("count"), 0);
    assert_eq!(store.ack("dv-bob", i64::MAX).await.expect("ack"), 0);

    // A shared message survives until every recipient has acked.
    let roster3 = vec![
        member(0, "alice", "dv-alice"),
        member(1, "bob", "dv-bob"),
        member(2, "carol", "dv-carol"),
    ];
    assert!(
        store
            .apply_commit(&commit(1, roster3, ""))
            .await
            .expect("apply")
    );
    assert_eq!(store.stored_message_count().await.expect("count"), 1);
    let m = message("msg_a3", EventKind::Application, 2, "alice");
    assert!(matches!(
        store.store_application(TENANT, &m).await.expect("store"),
        ApplicationOutcome::Stored { recipients } if recipients.len() == 2
    ));
    assert_eq!(store.ack("dv-bob", i64::MAX).await.expect("ack"), 2);
    assert_eq!(store.stored_message_count().await.expect("count"), 2);
    assert_eq!(store.ack("dv-carol", i64::MAX).await.expect("ack"), 2);
    assert_eq!(store.stored_message_count().await.expect("count"), 0);

    // A message nobody receives is not stored at all.
    let roster1 = vec![member(0, "alice", "dv-alice")];
    assert!(
        store
            .apply_commit(&commit(2, roster1, ""))
            .await
            .expect("apply")
    );
    let m = message("msg_a4", EventKind::Application, 3, "alice");
    assert_eq!(
        store.store_application(TENANT, &m).await.expect("store"),
        ApplicationOutcome::Stored { recipients: vec![] }
    );
    assert_eq!(store.stored_message_count().await.expect("count"), 0);
}

/// Concurrent commits for one epoch: exactly one wins.
pub async fn concurrent_cas(store: std::sync::Arc<dyn Store>) {
    setup(store.as_ref()).await;
    let roster = vec![member(0, "alice", "dv-alice"), member(1, "bob", "dv-bob")];
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let c = commit(0, roster.clone(), &format!("t{i}"));
        tasks.push(tokio::spawn(async move { store.apply_commit(&c).await }));
    }
    let mut wins = 0;
    for t in tasks {
        if t.await.expect("join").expect("apply") {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
    let st = store
        .group_state(GROUP)
        .await
        .expect("state")
        .expect("exists");
    assert_eq!(st.summary.epoch, 1);
    // Exactly one commit was delivered to bob.
    let ids: BTreeSet<String> = store
        .fetch_mailbox("dv-bob", 0, 100)
        .await
        .expect("mb")
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.message).into_owned())
        .collect();
    assert_eq!(ids.len(), 1);
}

/// Replaying random CAS epochs: the stored epoch advances by one exactly when the attempt
/// names the current epoch, and never otherwise.
pub async fn random_cas_sequence(store: &dyn Store, attempts: &[u64]) {
    setup(store).await;
    let roster = vec![member(0, "alice", "dv-alice"), member(1, "bob", "dv-bob")];
    let mut current = 0u64;
    for (i, &cas) in attempts.iter().enumerate() {
        let won = store
            .apply_commit(&commit(cas, roster.clone(), &format!("r{i}")))
            .await
            .expect("apply");
        assert_eq!(won, cas == current, "attempt {cas} at {current}");
        if won {
            current += 1;
        }
        let now = store
            .group(GROUP)
            .await
            .expect("read")
            .expect("exists")
            .epoch;
        assert_eq!(now, current);
    }
    let commits = store.fetch_mailbox("dv-bob", 0, 500).await.expect("mb");
    assert_eq!(commits.len() as u64, current);
    let epochs: Vec<u64> = commits.iter().map(|e| e.epoch).collect();
    assert_eq!(epochs, (1..=current).collect::<Vec<_>>());
}
