//! Mailbox long-poll wake-ups, paging and acknowledgement with garbage collection.

use std::time::{Duration, Instant};

use anyhow::Result;
use sealgate_proto::api::EventKind;

use super::harness::{Ds, code, peer};
use crate::support::TestGateway;

#[tokio::test]
async fn long_poll_wakes_on_a_new_message() -> Result<()> {
    let gw = TestGateway::start().await?;
    let ds = Ds::new(&gw.http, &gw.base);
    let acme = gw.create_tenant("acme").await?;
    let mut alice = peer(gw.device(&acme.api_key, "alice").await?);
    let mut bob = peer(gw.device(&acme.api_key, "bob").await?);
    ds.create_group(&mut alice).await?;
    ds.add(&mut alice, &mut bob).await?;

    let started = Instant::now();
    let poll = ds.mailbox(&bob.dev, 0, 5);
    let send = async {
        // Give the poll time to register and find the mailbox empty.
        tokio::time::sleep(Duration::from_millis(300)).await;
        ds.send(&mut alice, b"wake up").await
    };
    let (events, sent) = tokio::join!(poll, send);
    let (events, _) = (events?, sent?);
    let elapsed = started.elapsed();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Application);
    assert!(
        elapsed < Duration::from_secs(2),
        "woken by the message, not the timeout: {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(300),
        "it did wait: {elapsed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn long_poll_without_events_returns_empty_after_wait() -> Result<()> {
    let gw = TestGateway::start_with(|c| c.max_poll_wait_secs = 1).await?;
    let ds = Ds::new(&gw.http, &gw.base);
    let acme = gw.create_tenant("acme").await?;
    let bob = peer(gw.device(&acme.api_key, "bob").await?);
    let started = Instant::now();
    // Asks for 30 s; the server caps it at 1 s.
    let events = ds.mailbox(&bob.dev, 0, 30).await?;
    assert!(events.is_empty());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn ack_removes_events_and_unreferenced_messages() -> Result<()> {
    let gw = TestGateway::start().await?;
    let ds = Ds::new(&gw.http, &gw.base);
    let store = gw.gateway.state().store();
    let acme = gw.create_tenant("acme").await?;
    let mut alice = peer(gw.device(&acme.api_key, "alice").await?);
    let mut bob = peer(gw.device(&acme.api_key, "bob").await?);
    let mut carol = peer(gw.device(&acme.api_key, "carol").await?);
    ds.create_group(&mut alice).await?;
    ds.add(&mut alice, &mut bob).await?;
    ds.add(&mut alice, &mut carol).await?;
    ds.catch_up(&mut bob).await?;
    assert_eq!(
        store.stored_message_count().await?,
        0,
        "everything acked so far"
    );

    for text in [&b"one"[..], b"two", b"three"] {
        ds.send(&mut alice, text).await?;
    }
    assert_eq!(store.stored_message_count().await?, 3, "stored once each");

    // Paging and `after`.
    let bob_events = ds.mailbox(&bob.dev, 0, 0).await?;
    assert_eq!(bob_events.len(), 3);
    assert!(bob_events.windows(2).all(|w| w[0].seq < w[1].seq));
    let resp = gw
        .http
        .get(gw.url(&format!("/v1/mailbox?after={}&limit=1", bob_events[0].seq)))
        .bearer_auth(&bob.dev.token)
        .send()
        .await?;
    let page: sealgate_proto::api::MailboxResponse = resp.json().await?;
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].seq, bob_events[1].seq);
    let resp = gw
        .http
        .get(gw.url("/v1/mailbox?after=abc"))
        .bearer_auth(&bob.dev.token)
        .send()
        .await?;
    assert_eq!(code(resp).await?.1.code, "invalid_field");

    // Bob acks the first two: carol still holds pointers, so every row stays.
    assert_eq!(ds.ack(&bob.dev, bob_events[1].seq).await?, 2);
    let left = ds.mailbox(&bob.dev, 0, 0).await?;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].seq, bob_events[2].seq);
    assert_eq!(store.stored_message_count().await?, 3);

    // Carol acks everything: the first two rows are unreferenced now.
    let carol_events = ds.mailbox(&carol.dev, 0, 0).await?;
    let last = carol_events.last().map_or(0, |e| e.seq);
    assert_eq!(ds.ack(&carol.dev, last).await?, carol_events.len() as u64);
    assert_eq!(store.stored_message_count().await?, 1);
    assert!(ds.mailbox(&carol.dev, 0, 0).await?.is_empty());

    // Acking someone else's seq range removes only one's own pointers.
    assert_eq!(ds.ack(&alice.dev, i64::MAX).await?, 0);
    assert_eq!(ds.ack(&bob.dev, i64::MAX).await?, 1);
    assert_eq!(store.stored_message_count().await?, 0);
    Ok(())
}
