//! Exactly-once delivery, persistence across reopen, multiple devices, key store options.

use std::time::{Duration, Instant};

use anyhow::Result;
use sealgate_client::{Argon2Params, ClientOptions, Error, SealClient};

use crate::common::*;

#[tokio::test]
async fn reopen_keeps_state_and_never_redelivers() -> Result<()> {
    let h = Harness::start().await?;
    let mut alice = h.device("alice", "alice").await?;
    let mut bob = h.device("bob", "bob").await?;

    for i in 0..3 {
        alice.send_to_user("bob", &format!("m{i}")).await?;
    }
    let got = texts(&recv_n(&mut bob, 4).await?);
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].1, "m2");

    // While bob's client is open, a second one cannot take the device.
    let locked = SealClient::open_with(
        &h.home("bob"),
        ClientOptions {
            lock_timeout: Duration::from_millis(200),
            ..ClientOptions::default()
        },
    )
    .await;
    assert!(matches!(locked, Err(Error::Locked { .. })), "{locked:?}");

    let conversation = bob.conversations()?[0].conversation.clone();
    drop(bob);
    let mut bob = SealClient::open_with(&h.home("bob"), ClientOptions::default()).await?;
    assert_eq!(bob.conversations()?[0].conversation, conversation);
    let started = Instant::now();
    assert!(bob.receive(Some(Duration::from_secs(1))).await?.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "long-poll did not wait"
    );

    alice.send_to_user("bob", "after reopen").await?;
    let got = texts(&recv_n(&mut bob, 1).await?);
    assert_eq!(got, vec![("alice".into(), "after reopen".into())]);
    assert!(drain(&mut bob).await?.is_empty());

    // And bob can still talk in the old conversation after the reopen.
    bob.send(&conversation, "still works").await?;
    assert_eq!(
        texts(&recv_n(&mut alice, 1).await?),
        vec![("bob".into(), "still works".into())]
    );
    Ok(())
}

#[tokio::test]
async fn every_device_gets_each_message_exactly_once() -> Result<()> {
    let h = Harness::start().await?;
    let mut alice1 = h.device("alice", "alice1").await?;
    let mut alice2 = h.device("alice", "alice2").await?;
    let mut bob = h.device("bob", "bob").await?;

    // Bob's 1:1 with alice reaches both of her devices.
    let sent = bob.send_to_user("alice", "to both").await?;
    assert_eq!(sent.recipients, 2);
    for a in [&mut alice1, &mut alice2] {
        let got = texts(&recv_n(a, 2).await?);
        assert_eq!(got, vec![("bob".into(), "to both".into())]);
    }

    // What alice1 says reaches bob and her own other device, once each.
    alice1.send(&sent.conversation, "from alice1").await?;
    alice1.send(&sent.conversation, "again").await?;
    for c in [&mut bob, &mut alice2] {
        let got = texts(&recv_n(c, 2).await?);
        assert_eq!(
            got,
            vec![
                ("alice".into(), "from alice1".into()),
                ("alice".into(), "again".into())
            ]
        );
        assert!(drain(c).await?.is_empty());
    }
    assert!(drain(&mut alice1).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn key_packages_are_published_at_init() -> Result<()> {
    let h = Harness::start().await?;
    let alice = h.device("alice", "alice").await?;
    let stock = alice.key_package_stock().await?;
    assert_eq!(stock.one_time, sealgate_client::KEY_PACKAGE_BATCH as u64);
    assert!(stock.last_resort);
    let me = alice.directory_entry().await?;
    assert_eq!(me.device_id, alice.device().device_id);
    Ok(())
}

#[tokio::test]
async fn passphrase_protected_home() -> Result<()> {
    let h = Harness::start().await?;
    let cheap = Argon2Params {
        m_cost_kib: 256,
        t_cost: 1,
        p_cost: 1,
    };
    let options = |p: Option<&str>| ClientOptions {
        passphrase: p.map(String::from),
        argon2: cheap,
        ..ClientOptions::default()
    };
    let token = h.enroll("alice").await?;
    let home = h.home("alice");
    let alice = SealClient::init(&home, &h.url, &token, options(Some("right"))).await?;
    let id = alice.device().device_id;
    drop(alice);
    assert!(!home.join("keystore.key").exists());
    let before = std::fs::read(home.join("state.sealed"))?;

    assert!(matches!(
        SealClient::open_with(&home, options(Some("wrong"))).await,
        Err(Error::Unlock)
    ));
    assert!(matches!(
        SealClient::open_with(&home, options(None)).await,
        Err(Error::PassphraseRequired)
    ));
    assert_eq!(std::fs::read(home.join("state.sealed"))?, before);

    let alice = SealClient::open_with(&home, options(Some("right"))).await?;
    assert_eq!(alice.device().device_id, id);

    // A used enrollment token cannot register a second device; init twice is refused.
    drop(alice);
    assert!(matches!(
        SealClient::init(&home, &h.url, &token, options(Some("right"))).await,
        Err(Error::AlreadyInitialized(_))
    ));
    Ok(())
}

#[tokio::test]
async fn last_resort_key_package_is_reusable_and_stock_is_topped_up() -> Result<()> {
    let h = Harness::start().await?;
    let mut alice = h.device("alice", "alice").await?;
    let mut bob = h.device("bob", "bob").await?;

    // 20 groups use bob's one-time KeyPackages, the last two his last-resort one, twice.
    let n = sealgate_client::KEY_PACKAGE_BATCH + 2;
    let mut groups = Vec::new();
    for _ in 0..n {
        groups.push(alice.create_group(&["bob".to_string()]).await?);
    }
    let events = recv_n(&mut bob, n).await?;
    let joined = events
        .iter()
        .filter(|e| matches!(e, sealgate_client::Event::Membership(_)))
        .count();
    assert_eq!(joined, n, "{events:?}");
    assert_eq!(bob.conversations()?.len(), n);

    // Both groups joined through the last-resort KeyPackage work.
    for g in &groups[n - 2..] {
        alice.send(g, "via last resort").await?;
    }
    let got = texts(&recv_n(&mut bob, 2).await?);
    assert_eq!(got.len(), 2);

    // Receiving noticed the empty stock and published a fresh batch.
    let stock = bob.key_package_stock().await?;
    assert_eq!(stock.one_time, sealgate_client::KEY_PACKAGE_BATCH as u64);
    assert!(stock.last_resort);
    Ok(())
}
