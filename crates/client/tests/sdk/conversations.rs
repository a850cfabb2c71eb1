//! 1:1 conversations and groups: create, add, remove.

use anyhow::Result;
use sealgate_client::{Error, Event, MembershipChange, MembershipKind};

use crate::common::*;

fn membership(events: &[Event]) -> Vec<(MembershipKind, String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Membership(MembershipChange {
                event, member, by, ..
            }) => Some((*event, member.clone(), by.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn direct_message_both_ways_in_one_conversation() -> Result<()> {
    let h = Harness::start().await?;
    let mut alice = h.device("alice", "alice").await?;
    let mut bob = h.device("bob", "bob").await?;

    let sent = alice.send_to_user("bob", "hello bob").await?;
    assert_eq!(sent.recipients, 1);

    let events = recv_n(&mut bob, 2).await?;
    assert_eq!(
        membership(&events),
        vec![(MembershipKind::Joined, "bob".into(), "alice".into())]
    );
    assert_eq!(texts(&events), vec![("alice".into(), "hello bob".into())]);
    let Some(Event::Message(m)) = events.iter().find(|e| matches!(e, Event::Message(_))) else {
        anyhow::bail!("no message");
    };
    assert_eq!(m.conversation, sent.conversation);
    assert_eq!(m.device, alice.device().device_id);

    // Bob knows it is the 1:1 with alice (from the Welcome) and answers in it.
    let convs = bob.conversations()?;
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0].kind, "direct");
    assert_eq!(convs[0].peer.as_deref(), Some("alice"));
    assert_eq!(convs[0].members, vec!["alice", "bob"]);
    let reply = bob.send_to_user("alice", "hi alice").await?;
    assert_eq!(reply.conversation, sent.conversation);

    let events = recv_n(&mut alice, 1).await?;
    assert_eq!(texts(&events), vec![("bob".into(), "hi alice".into())]);

    // A second message reuses the conversation instead of creating another.
    let again = alice.send_to_user("bob", "second").await?;
    assert_eq!(again.conversation, sent.conversation);
    assert_eq!(alice.conversations()?.len(), 1);
    assert_eq!(
        texts(&recv_n(&mut bob, 1).await?),
        vec![("alice".into(), "second".into())]
    );
    Ok(())
}

#[tokio::test]
async fn unknown_user_is_a_server_error_with_a_code() -> Result<()> {
    let h = Harness::start().await?;
    let mut alice = h.device("alice", "alice").await?;
    let err = alice.send_to_user("nobody", "x").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(sealgate_proto::ErrorCode::UnknownUser),
        "{err}"
    );
    assert!(matches!(
        alice.send_to_user("Not A User", "x").await,
        Err(Error::InvalidArgument(_))
    ));
    // Nothing half-created is left behind.
    assert!(alice.conversations()?.is_empty());
    Ok(())
}

#[tokio::test]
async fn group_add_and_remove() -> Result<()> {
    let h = Harness::start().await?;
    let mut alice = h.device("alice", "alice").await?;
    let mut bob = h.device("bob", "bob").await?;
    let mut carol = h.device("carol", "carol").await?;

    let group = alice.create_group(&["bob".to_string()]).await?;
    let events = recv_n(&mut bob, 1).await?;
    assert_eq!(
        membership(&events),
        vec![(MembershipKind::Joined, "bob".into(), "alice".into())]
    );
    assert_eq!(bob.conversations()?[0].kind, "group");

    let epoch = alice.add_member(&group, "carol").await?;
    assert_eq!(epoch, 2);
    let events = recv_n(&mut bob, 1).await?;
    assert_eq!(
        membership(&events),
        vec![(MembershipKind::MemberAdded, "carol".into(), "alice".into())]
    );
    let events = recv_n(&mut carol, 1).await?;
    assert_eq!(
        membership(&events),
        vec![(MembershipKind::Joined, "carol".into(), "alice".into())]
    );
    for c in [&alice, &bob, &carol] {
        assert_eq!(members(c, &group)?, (set(&["alice", "bob", "carol"]), 2));
    }

    bob.send(&group, "before").await?;
    assert_eq!(
        texts(&recv_n(&mut alice, 1).await?),
        vec![("bob".into(), "before".into())]
    );
    assert_eq!(
        texts(&recv_n(&mut carol, 1).await?),
        vec![("bob".into(), "before".into())]
    );

    let epoch = alice.remove_member(&group, "carol").await?;
    assert_eq!(epoch, 3);
    let events = recv_n(&mut carol, 1).await?;
    assert_eq!(
        membership(&events),
        vec![(MembershipKind::Removed, "carol".into(), "alice".into())]
    );
    assert!(carol.conversations()?.is_empty());
    assert!(matches!(
        carol.send(&group, "still here?").await,
        Err(Error::UnknownConversation(_))
    ));

    let events = recv_n(&mut bob, 1).await?;
    assert_eq!(
        membership(&events),
        vec![(
            MembershipKind::MemberRemoved,
            "carol".into(),
            "alice".into()
        )]
    );
    alice.send(&group, "after").await?;
    assert_eq!(
        texts(&recv_n(&mut bob, 1).await?),
        vec![("alice".into(), "after".into())]
    );
    // Carol can no longer read the group: nothing reaches her.
    let late = carol
        .receive(Some(std::time::Duration::from_secs(1)))
        .await?;
    assert!(texts(&late).is_empty(), "{late:?}");

    for c in [&alice, &bob] {
        assert_eq!(members(c, &group)?, (set(&["alice", "bob"]), 3));
    }
    let view = alice.server_view(&group).await?;
    assert_eq!(view.epoch, 3);
    assert_eq!(view.members.len(), 2);

    // Removing someone who is not a member is the caller's mistake.
    assert!(matches!(
        alice.remove_member(&group, "carol").await,
        Err(Error::InvalidArgument(_))
    ));
    Ok(())
}
