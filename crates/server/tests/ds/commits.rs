//! The one-commit-per-epoch rule and every way a commit is refused.

use std::time::Duration;

use anyhow::Result;
use sealgate_proto::api::{EventKind, SubmitCommitResponse};

use super::harness::{Ds, code, peer};
use crate::support::{TestGateway, key_package, new_signing_key};

#[tokio::test]
async fn concurrent_commits_for_one_epoch_exactly_one_wins_and_replays_are_stale() -> Result<()> {
    let gw = TestGateway::start().await?;
    let ds = Ds::new(&gw.http, &gw.base);
    let acme = gw.create_tenant("acme").await?;
    let mut alice = peer(gw.device(&acme.api_key, "alice").await?);
    let mut bob = peer(gw.device(&acme.api_key, "bob").await?);
    let gid = ds.create_group(&mut alice).await?.group_id;
    assert_eq!(ds.add(&mut alice, &mut bob).await?, 1);

    // Both members commit a self-update for epoch 1 at the same time.
    let a = alice.group()?.commit(vec![])?.commit_message.to_bytes()?;
    let b = bob.group()?.commit(vec![])?.commit_message.to_bytes()?;
    let (ra, rb) = tokio::join!(
        ds.submit(&alice.dev, &gid, a.clone(), None, None),
        ds.submit(&bob.dev, &gid, b.clone(), None, None)
    );
    let (ra, rb) = (ra?, rb?);
    let statuses = [ra.status().as_u16(), rb.status().as_u16()];
    assert!(
        statuses == [200, 409] || statuses == [409, 200],
        "exactly one wins: {statuses:?}"
    );
    let (winner, winner_bytes, loser) = if statuses[0] == 200 {
        (ra, a, rb)
    } else {
        (rb, b, ra)
    };
    assert_eq!(winner.json::<SubmitCommitResponse>().await?.epoch, 2);
    let (_, p) = code(loser).await?;
    assert_eq!(p.code, "stale_epoch");
    assert_eq!(p.current_epoch, Some(2));
    assert_eq!(ds.group(&alice.dev, &gid).await?.epoch, 2);

    // The winning commit, replayed.
    let (status, p) = code(
        ds.submit(&alice.dev, &gid, winner_bytes.clone(), None, None)
            .await?,
    )
    .await?;
    assert_eq!(
        (status, p.code.as_str(), p.current_epoch),
        (409, "stale_epoch", Some(2))
    );
    let (status, p) = code(ds.submit(&bob.dev, &gid, winner_bytes, None, None).await?).await?;
    assert_eq!((status, p.code.as_str()), (409, "stale_epoch"));

    // Exactly one commit of epoch 2 reached the loser's side, none the winner's.
    let a_events = ds.mailbox(&alice.dev, 0, 0).await?;
    let b_events = ds.mailbox(&bob.dev, 0, 0).await?;
    let commits = a_events.len() + b_events.len();
    assert_eq!(commits, 1);
    let e = a_events.iter().chain(&b_events).next();
    assert!(matches!(e, Some(e) if e.kind == EventKind::Commit && e.epoch == 2));
    Ok(())
}

#[tokio::test]
async fn many_concurrent_commits_one_winner() -> Result<()> {
    let gw = TestGateway::start().await?;
    let ds = Ds::new(&gw.http, &gw.base);
    let acme = gw.create_tenant("acme").await?;
    let mut alice = peer(gw.device(&acme.api_key, "alice").await?);
    let gid = ds.create_group(&mut alice).await?.group_id;
    // Six different commits for epoch 0 from the same member (each a fresh self-update).
    let mut commits = Vec::new();
    for _ in 0..6 {
        commits.push(alice.group()?.commit(vec![])?.commit_message.to_bytes()?);
        alice.group()?.clear_pending_commit();
    }
    let results = futures::future::join_all(
        commits
            .into_iter()
            .map(|c| ds.submit(&alice.dev, &gid, c, None, None)),
    )
    .await;
    let mut ok = 0;
    for r in results {
        match r?.status().as_u16() {
            200 => ok += 1,
            409 => {}
            other => anyhow::bail!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(ds.group(&alice.dev, &gid).await?.epoch, 1);
    Ok(())
}

#[tokio::test]
async fn bad_commits_are_refused_and_change_nothing() -> Result<()> {
    let gw = TestGateway::start().await?;
    let ds = Ds::new(&gw.http, &gw.base);
    let acme = gw.create_tenant("acme").await?;
    let mut alice = peer(gw.device(&acme.api_key, "alice").await?);
    let mut bob = peer(gw.device(&acme.api_key, "bob").await?);
    let gid = ds.create_group(&mut alice).await?.group_id;
    ds.add(&mut alice, &mut bob).await?;

    // Corrupted signature.
    let mut bad = alice.group()?.commit(vec![])?.commit_message.to_bytes()?;
    alice.group()?.clear_pending_commit();
    let at = bad.len() - 33 - 33 - 32;
    bad[at] ^= 0x01;
    let (status, p) = code(ds.submit(&alice.dev, &gid, bad, None, None).await?).await?;
    assert_eq!((status, p.code.as_str()), (422, "invalid_commit"));

    // A commit of another group, posted to this one.
    let mut other = peer(gw.device(&acme.api_key, "alice").await?);
    ds.create_group(&mut other).await?;
    let foreign = other.group()?.commit(vec![])?.commit_message.to_bytes()?;
    let (status, p) = code(ds.submit(&alice.dev, &gid, foreign, None, None).await?).await?;
    assert_eq!((status, p.code.as_str()), (422, "invalid_commit"));

    // An application message (PrivateMessage) posted as a commit.
    let private = alice
        .group()?
        .encrypt_application_message(b"x", vec![])?
        .to_bytes()?;
    let (status, p) = code(ds.submit(&alice.dev, &gid, private, None, None).await?).await?;
    assert_eq!((status, p.code.as_str()), (422, "invalid_commit"));
    assert!(p.detail.unwrap_or_default().contains("PublicMessage"));

    // A standalone proposal.
    let proposal = alice.group()?.propose_update(vec![])?.to_bytes()?;
    let (status, p) = code(ds.submit(&alice.dev, &gid, proposal, None, None).await?).await?;
    assert_eq!((status, p.code.as_str()), (422, "invalid_commit"));
    assert!(
        p.detail
            .unwrap_or_default()
            .contains("proposals are not supported")
    );
    alice.group()?.clear_proposal_cache();

    // Garbage.
    let (status, p) = code(
        ds.submit(
            &alice.dev,
            &gid,
            b"\x00\x01\x02garbage".to_vec(),
            None,
            None,
        )
        .await?,
    )
    .await?;
    assert_eq!((status, p.code.as_str()), (422, "malformed_mls"));

    // Bob posting alice's commit: signed by another member than the caller.
    let alices = alice.group()?.commit(vec![])?.commit_message.to_bytes()?;
    alice.group()?.clear_pending_commit();
    let (status, p) = code(ds.submit(&bob.dev, &gid, alices, None, None).await?).await?;
    assert_eq!((status, p.code.as_str()), (403, "identity_mismatch"));

    // Nothing changed, nothing was delivered.
    assert_eq!(ds.group(&alice.dev, &gid).await?.epoch, 1);
    assert!(ds.mailbox(&alice.dev, 0, 0).await?.is_empty());
    assert!(ds.mailbox(&bob.dev, 0, 0).await?.is_empty());

    // And the group still works: a valid commit is accepted and bob can follow it.
    let good = alice.group()?.commit(vec![])?.commit_message.to_bytes()?;
    alice.group()?.apply_pending_commit()?;
    let resp = ds.submit(&alice.dev, &gid, good, None, None).await?;
    assert_eq!(resp.status().as_u16(), 200);
    ds.catch_up(&mut bob).await?;
    assert_eq!(bob.group()?.current_epoch(), 2);
    Ok(())
}

#[tokio::test]
async fn key_substitution_by_mallory_is_refused_and_nothing_is_stored() -> Result<()> {
    let gw = TestGateway::start().await?;
    let ds = Ds::new(&gw.http, &gw.base);
    let acme = gw.create_tenant("acme").await?;
    let alice = peer(gw.device(&acme.api_key, "alice").await?);
    let mut bob = peer(gw.device(&acme.api_key, "bob").await?);
    let mut mallory = peer(gw.device(&acme.api_key, "mallory").await?);
    let gid = ds.create_group(&mut mallory).await?.group_id;
    ds.add(&mut mallory, &mut bob).await?;

    // A KeyPackage whose credential names alice's device but whose key is mallory's.
    let (sk, pk) = new_signing_key()?;
    let forged = key_package(
        &alice.dev.identity.to_credential_bytes(),
        &sk,
        &pk,
        Duration::from_secs(3600),
    )?;
    let out = mallory
        .group()?
        .commit_builder()
        .add_member(mls_rs::MlsMessage::from_bytes(&forged)?)?
        .build()?;
    let welcome = out
        .welcome_messages
        .first()
        .map(|w| w.to_bytes())
        .transpose()?;
    let (status, p) = code(
        ds.submit(
            &mallory.dev,
            &gid,
            out.commit_message.to_bytes()?,
            welcome,
            None,
        )
        .await?,
    )
    .await?;
    assert_eq!((status, p.code.as_str()), (403, "identity_mismatch"));

    assert_eq!(ds.group(&bob.dev, &gid).await?.epoch, 1);
    assert_eq!(ds.group(&bob.dev, &gid).await?.members.len(), 2);
    assert!(
        ds.mailbox(&alice.dev, 0, 0).await?.is_empty(),
        "no Welcome for alice"
    );
    assert!(
        ds.mailbox(&bob.dev, 0, 0).await?.is_empty(),
        "no commit for bob"
    );
    Ok(())
}

#[tokio::test]
async fn adding_a_revoked_device_is_refused() -> Result<()> {
    let gw = TestGateway::start().await?;
    let ds = Ds::new(&gw.http, &gw.base);
    let acme = gw.create_tenant("acme").await?;
    let mut alice = peer(gw.device(&acme.api_key, "alice").await?);
    let bob = peer(gw.device(&acme.api_key, "bob").await?);
    let gid = ds.create_group(&mut alice).await?.group_id;
    let kp = bob.key_package()?;
    let resp = gw
        .http
        .delete(gw.url("/v1/devices/me"))
        .bearer_auth(&bob.dev.token)
        .send()
        .await?;
    assert!(resp.status().is_success(), "revoke: {}", resp.status());

    let out = alice.group()?.commit_builder().add_member(kp)?.build()?;
    let welcome = out
        .welcome_messages
        .first()
        .map(|w| w.to_bytes())
        .transpose()?;
    let (status, p) = code(
        ds.submit(
            &alice.dev,
            &gid,
            out.commit_message.to_bytes()?,
            welcome,
            None,
        )
        .await?,
    )
    .await?;
    assert_eq!((status, p.code.as_str()), (403, "identity_mismatch"));
    assert_eq!(ds.group(&alice.dev, &gid).await?.epoch, 0);
    Ok(())
}
