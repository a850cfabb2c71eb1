//! Application messages: stored once, fanned out to every other member, never to removed
//! members, only as PrivateMessage of the group at a recent epoch.

use anyhow::{Context, Result};
use mls_rs::MlsMessage;
use mls_rs::group::ReceivedMessage;
use sealgate_proto::api::{EventKind, SubmitCommitResponse};

use super::harness::{Ds, code, peer};
use crate::support::TestGateway;

#[tokio::test]
async fn application_message_reaches_every_other_member_once() -> Result<()> {
    let gw = TestGateway::start().await?;
    let ds = Ds::new(&gw.http, &gw.base);
    let acme = gw.create_tenant("acme").await?;
    let mut alice = peer(gw.device(&acme.api_key, "alice").await?);
    let mut bob = peer(gw.device(&acme.api_key, "bob").await?);
    let mut carol = peer(gw.device(&acme.api_key, "carol").await?);
    let gid = ds.create_group(&mut alice).await?.group_id;
    ds.add(&mut alice, &mut bob).await?;
    ds.add(&mut alice, &mut carol).await?;
    ds.catch_up(&mut bob).await?;
    assert_eq!(bob.group()?.current_epoch(), 2);

    let sent = ds.send(&mut alice, b"quarterly numbers").await?;
    assert!(sent.message_id.starts_with("msg_"));
    assert_eq!(sent.recipients, 2);

    for p in [&mut bob, &mut carol] {
        let events = ds.mailbox(&p.dev, 0, 0).await?;
        let apps: Vec<_> = events
            .iter()
            .filter(|e| e.kind == EventKind::Application)
            .collect();
        assert_eq!(apps.len(), 1, "{} gets it once", p.dev.user);
        let e = apps[0];
        assert_eq!((e.group_id.as_str(), e.epoch), (gid.as_str(), 2));
        assert_eq!(e.sender_device, alice.dev.device_id);
        let got = p
            .group()?
            .process_incoming_message(MlsMessage::from_bytes(&e.message)?)?;
        let ReceivedMessage::ApplicationMessage(m) = got else {
            anyhow::bail!("not an application message");
        };
        assert_eq!(m.data(), b"quarterly numbers");
    }
    assert!(
        ds.mailbox(&alice.dev, 0, 0)
            .await?
            .iter()
            .all(|e| e.kind != EventKind::Application),
        "not echoed to the sender"
    );

    // Not a PrivateMessage, another group's message, garbage: invalid_message.
    let commit = alice.group()?.commit(vec![])?.commit_message.to_bytes()?;
    alice.group()?.clear_pending_commit();
    for bad in [commit, b"garbage".to_vec()] {
        let (status, p) = code(ds.send_raw(&alice.dev, &gid, bad).await?).await?;
        assert_eq!((status, p.code.as_str()), (422, "invalid_message"));
    }
    let mut other = peer(gw.device(&acme.api_key, "alice").await?);
    ds.create_group(&mut other).await?;
    let foreign = other
        .group()?
        .encrypt_application_message(b"x", vec![])?
        .to_bytes()?;
    let (status, p) = code(ds.send_raw(&alice.dev, &gid, foreign).await?).await?;
    assert_eq!((status, p.code.as_str()), (422, "invalid_message"));
    Ok(())
}

#[tokio::test]
async fn old_epochs_are_accepted_within_the_window_only() -> Result<()> {
    let gw = TestGateway::start().await?;
    let ds = Ds::new(&gw.http, &gw.base);
    let acme = gw.create_tenant("acme").await?;
    let mut alice = peer(gw.device(&acme.api_key, "alice").await?);
    let mut bob = peer(gw.device(&acme.api_key, "bob").await?);
    let gid = ds.create_group(&mut alice).await?.group_id;
    ds.add(&mut alice, &mut bob).await?;
    // Bob encrypts at epoch 1, then alice moves the group on by four epochs.
    let at_epoch_1 = bob
        .group()?
        .encrypt_application_message(b"late", vec![])?
        .to_bytes()?;
    for expected in 2..=5 {
        let c = alice.group()?.commit(vec![])?.commit_message.to_bytes()?;
        alice.group()?.apply_pending_commit()?;
        let resp = ds.submit(&alice.dev, &gid, c, None, None).await?;
        assert_eq!(resp.json::<SubmitCommitResponse>().await?.epoch, expected);
        if expected == 4 {
            // At epoch 4, epoch 1 is still within the window of three.
            let r = ds.send_raw(&bob.dev, &gid, at_epoch_1.clone()).await?;
            assert_eq!(r.status().as_u16(), 202);
        }
    }
    let (status, p) = code(ds.send_raw(&bob.dev, &gid, at_epoch_1).await?).await?;
    assert_eq!((status, p.code.as_str()), (422, "invalid_message"));
    Ok(())
}

#[tokio::test]
async fn removed_member_learns_of_removal_and_gets_nothing_after() -> Result<()> {
    let gw = TestGateway::start().await?;
    let ds = Ds::new(&gw.http, &gw.base);
    let acme = gw.create_tenant("acme").await?;
    let mut alice = peer(gw.device(&acme.api_key, "alice").await?);
    let mut bob = peer(gw.device(&acme.api_key, "bob").await?);
    let mut carol = peer(gw.device(&acme.api_key, "carol").await?);
    let gid = ds.create_group(&mut alice).await?.group_id;
    ds.add(&mut alice, &mut bob).await?;
    ds.add(&mut alice, &mut carol).await?;
    ds.catch_up(&mut bob).await?;

    let carol_leaf = ds
        .group(&alice.dev, &gid)
        .await?
        .members
        .iter()
        .find(|m| m.device_id == carol.dev.device_id)
        .context("carol in roster")?
        .leaf_index;
    let out = alice
        .group()?
        .commit_builder()
        .remove_member(carol_leaf)?
        .build()?;
    alice.group()?.apply_pending_commit()?;
    let resp = ds
        .submit(&alice.dev, &gid, out.commit_message.to_bytes()?, None, None)
        .await?;
    assert_eq!(resp.json::<SubmitCommitResponse>().await?.epoch, 3);

    // Carol receives the removal commit and can process it.
    let events = ds.mailbox(&carol.dev, 0, 0).await?;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].kind, events[0].epoch), (EventKind::Commit, 3));
    let processed = carol
        .group()?
        .process_incoming_message(MlsMessage::from_bytes(&events[0].message)?)?;
    assert!(matches!(processed, ReceivedMessage::Commit(_)));
    ds.ack(&carol.dev, events[0].seq).await?;
    ds.catch_up(&mut bob).await?;

    // The roster no longer lists her; later messages skip her; she cannot send or read.
    let g = ds.group(&alice.dev, &gid).await?;
    assert!(g.members.iter().all(|m| m.device_id != carol.dev.device_id));
    let sent = ds.send(&mut alice, b"after carol left").await?;
    assert_eq!(sent.recipients, 1);
    assert!(ds.mailbox(&carol.dev, 0, 0).await?.is_empty());
    assert_eq!(ds.mailbox(&bob.dev, 0, 0).await?.len(), 1);
    let stale = carol.group()?.encrypt_application_message(b"x", vec![]);
    // mls-rs refuses to encrypt after removal; replay an old ciphertext instead if it does.
    let bytes = match stale {
        Ok(m) => m.to_bytes()?,
        Err(_) => alice
            .group()?
            .encrypt_application_message(b"y", vec![])?
            .to_bytes()?,
    };
    let (status, p) = code(ds.send_raw(&carol.dev, &gid, bytes).await?).await?;
    assert_eq!((status, p.code.as_str()), (403, "not_member"));
    let (status, _) = code(ds.get_group(&carol.dev, &gid).await?).await?;
    assert_eq!(status, 404);
    Ok(())
}
