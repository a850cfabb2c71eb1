//! Group registration, reads, and the Welcome routing of an add.

use anyhow::{Context, Result};
use mls_rs::{ExtensionList, MlsMessage};
use sealgate_proto::api::{EventKind, GroupMember, SubmitCommitResponse};

use super::harness::{Ds, code, peer};
use crate::support::{TestGateway, mls_client, new_signing_key};

#[tokio::test]
async fn create_group_binds_the_creator_and_rejects_duplicates_and_forgeries() -> Result<()> {
    let gw = TestGateway::start().await?;
    let ds = Ds::new(&gw.http, &gw.base);
    let acme = gw.create_tenant("acme").await?;
    let mut alice = peer(gw.device(&acme.api_key, "alice").await?);
    let mallory = peer(gw.device(&acme.api_key, "mallory").await?);

    let created = ds.create_group(&mut alice).await?;
    assert_eq!(created.epoch, 0);
    assert_eq!(created.group_id, alice.group_id_hex()?);
    assert_eq!(
        created.members,
        vec![GroupMember {
            leaf_index: 0,
            user: "alice".into(),
            device_id: alice.dev.device_id.clone(),
        }]
    );
    let fetched = ds.group(&alice.dev, &created.group_id).await?;
    assert_eq!(fetched.members, created.members);

    // The same GroupInfo again: the id is taken.
    let gi = alice.group()?.group_info_message(true)?.to_bytes()?;
    let (status, p) = code(ds.create_group_raw(&alice.dev, gi.clone()).await?).await?;
    assert_eq!((status, p.code.as_str()), (409, "group_exists"));

    // Mallory registers alice's group as her own: the member is not the caller.
    let other =
        alice
            .client
            .create_group(ExtensionList::default(), ExtensionList::default(), None)?;
    let gi = other.group_info_message(true)?.to_bytes()?;
    let (status, p) = code(ds.create_group_raw(&mallory.dev, gi).await?).await?;
    assert_eq!((status, p.code.as_str()), (403, "identity_mismatch"));

    // Mallory's credential names alice, with mallory's own key: the key is not alice's.
    let (sk, pk) = new_signing_key()?;
    let forged = mls_client(
        alice.dev.identity.to_credential_bytes(),
        sk,
        pk,
        std::time::Duration::from_secs(3600),
    );
    let g = forged.create_group(ExtensionList::default(), ExtensionList::default(), None)?;
    let gi = g.group_info_message(true)?.to_bytes()?;
    let (status, p) = code(ds.create_group_raw(&alice.dev, gi).await?).await?;
    assert_eq!((status, p.code.as_str()), (403, "identity_mismatch"));

    // Garbage and non-GroupInfo bytes.
    let (status, p) = code(ds.create_group_raw(&alice.dev, b"garbage".to_vec()).await?).await?;
    assert_eq!((status, p.code.as_str()), (422, "malformed_mls"));
    let kp = alice.key_package()?.to_bytes()?;
    let (status, p) = code(ds.create_group_raw(&alice.dev, kp).await?).await?;
    assert_eq!((status, p.code.as_str()), (422, "malformed_mls"));
    Ok(())
}

#[tokio::test]
async fn add_routes_the_welcome_only_to_the_added_device_after_the_commit_wins() -> Result<()> {
    let gw = TestGateway::start().await?;
    let ds = Ds::new(&gw.http, &gw.base);
    let acme = gw.create_tenant("acme").await?;
    let mut alice = peer(gw.device(&acme.api_key, "alice").await?);
    let bob = peer(gw.device(&acme.api_key, "bob").await?);
    let carol = peer(gw.device(&acme.api_key, "carol").await?);
    let gid = ds.create_group(&mut alice).await?.group_id;

    let kp = bob.key_package()?;
    let out = alice.group()?.commit_builder().add_member(kp)?.build()?;
    let commit = out.commit_message.to_bytes()?;
    let welcome = out
        .welcome_messages
        .first()
        .context("welcome")?
        .to_bytes()?;

    // First the commit arrives with a corrupted signature: refused, and its Welcome with it.
    let mut bad = commit.clone();
    let at = bad.len() - 33 - 33 - 32;
    bad[at] ^= 0x80;
    let (status, p) = code(
        ds.submit(&alice.dev, &gid, bad, Some(welcome.clone()), None)
            .await?,
    )
    .await?;
    assert_eq!((status, p.code.as_str()), (422, "invalid_commit"));
    assert!(ds.mailbox(&bob.dev, 0, 0).await?.is_empty());
    assert_eq!(ds.group(&alice.dev, &gid).await?.epoch, 0);

    // A commit that adds members but brings no Welcome is refused too.
    let (status, p) = code(
        ds.submit(&alice.dev, &gid, commit.clone(), None, None)
            .await?,
    )
    .await?;
    assert_eq!((status, p.code.as_str()), (422, "invalid_commit"));
    // A Welcome that is not a Welcome.
    let (status, p) = code(
        ds.submit(
            &alice.dev,
            &gid,
            commit.clone(),
            Some(b"junk".to_vec()),
            None,
        )
        .await?,
    )
    .await?;
    assert_eq!((status, p.code.as_str()), (422, "malformed_mls"));
    assert!(ds.mailbox(&bob.dev, 0, 0).await?.is_empty());

    alice.group()?.apply_pending_commit()?;
    let gi = alice.group()?.group_info_message(true)?.to_bytes()?;
    let resp = ds
        .submit(
            &alice.dev,
            &gid,
            commit,
            Some(welcome.clone()),
            Some(gi.clone()),
        )
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.json::<SubmitCommitResponse>().await?.epoch, 1);

    let events = ds.mailbox(&bob.dev, 0, 0).await?;
    assert_eq!(events.len(), 1, "bob gets the Welcome and nothing else");
    let w = &events[0];
    assert_eq!(w.kind, EventKind::Welcome);
    assert_eq!((w.epoch, w.group_id.as_str()), (1, gid.as_str()));
    assert_eq!(w.sender_device, alice.dev.device_id);
    assert_eq!(w.message, welcome);
    assert!(ds.mailbox(&carol.dev, 0, 0).await?.is_empty());
    assert!(ds.mailbox(&alice.dev, 0, 0).await?.is_empty());

    // Bob joins from the routed Welcome and sees the DS's roster.
    let (group, _) = bob
        .client
        .join_group(None, &MlsMessage::from_bytes(&w.message)?, None)?;
    assert_eq!(group.current_epoch(), 1);
    let g = ds.group(&bob.dev, &gid).await?;
    assert_eq!(g.epoch, 1);
    let devices: Vec<_> = g.members.iter().map(|m| m.device_id.clone()).collect();
    assert_eq!(
        devices,
        vec![alice.dev.device_id.clone(), bob.dev.device_id.clone()]
    );

    // The GroupInfo of epoch 1 is served to members.
    let resp = gw
        .http
        .get(gw.url(&format!("/v1/groups/{gid}/group-info")))
        .bearer_auth(&bob.dev.token)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await?;
    assert_eq!(body["epoch"], 1);
    assert_eq!(body["group_info"], sealgate_proto::b64::encode(&gi));
    Ok(())
}

#[tokio::test]
async fn non_members_and_other_tenants_cannot_read_or_post() -> Result<()> {
    let gw = TestGateway::start().await?;
    let ds = Ds::new(&gw.http, &gw.base);
    let acme = gw.create_tenant("acme").await?;
    let globex = gw.create_tenant("globex").await?;
    let mut alice = peer(gw.device(&acme.api_key, "alice").await?);
    let mut bob = peer(gw.device(&acme.api_key, "bob").await?);
    let carol = peer(gw.device(&acme.api_key, "carol").await?);
    let eve = peer(gw.device(&globex.api_key, "eve").await?);
    let gid = ds.create_group(&mut alice).await?.group_id;
    ds.add(&mut alice, &mut bob).await?;

    for outsider in [&carol.dev, &eve.dev] {
        let (status, p) = code(ds.get_group(outsider, &gid).await?).await?;
        assert_eq!((status, p.code.as_str()), (404, "unknown_group"));
        let resp = gw
            .http
            .get(gw.url(&format!("/v1/groups/{gid}/group-info")))
            .bearer_auth(&outsider.token)
            .send()
            .await?;
        assert_eq!(code(resp).await?.1.code, "unknown_group");
    }
    // A ciphertext of the group, replayed by a non-member of the same tenant.
    let msg = alice
        .group()?
        .encrypt_application_message(b"hi", vec![])?
        .to_bytes()?;
    let (status, p) = code(ds.send_raw(&carol.dev, &gid, msg.clone()).await?).await?;
    assert_eq!((status, p.code.as_str()), (403, "not_member"));
    let (status, p) = code(ds.send_raw(&eve.dev, &gid, msg).await?).await?;
    assert_eq!((status, p.code.as_str()), (404, "unknown_group"));
    // Commits too.
    let commit = alice.group()?.commit(vec![])?.commit_message.to_bytes()?;
    let (status, p) = code(
        ds.submit(&carol.dev, &gid, commit.clone(), None, None)
            .await?,
    )
    .await?;
    assert_eq!((status, p.code.as_str()), (403, "not_member"));
    let (status, p) = code(ds.submit(&eve.dev, &gid, commit, None, None).await?).await?;
    assert_eq!((status, p.code.as_str()), (404, "unknown_group"));
    // Unknown and malformed group ids.
    let (status, p) = code(ds.get_group(&alice.dev, "ffff").await?).await?;
    assert_eq!((status, p.code.as_str()), (404, "unknown_group"));
    let (status, _) = code(ds.get_group(&alice.dev, "not-hex").await?).await?;
    assert_eq!(status, 404);
    // Nothing reached anyone's mailbox.
    assert!(ds.mailbox(&bob.dev, 0, 0).await?.is_empty());
    Ok(())
}
