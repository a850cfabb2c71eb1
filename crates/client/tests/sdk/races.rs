//! Two members committing to the same epoch at once.

use anyhow::Result;

use crate::common::*;

#[tokio::test]
async fn concurrent_commits_converge() -> Result<()> {
    let h = Harness::start().await?;
    let mut alice = h.device("alice", "alice").await?;
    let mut bob = h.device("bob", "bob").await?;
    let mut carol = h.device("carol", "carol").await?;
    let mut dave = h.device("dave", "dave").await?;

    let group = alice.create_group(&["bob".to_string()]).await?;
    recv_n(&mut bob, 1).await?;

    // Both commit on epoch 1; one wins, the other catches up and lands in epoch 3.
    let (a, b) = tokio::join!(
        alice.add_member(&group, "carol"),
        bob.add_member(&group, "dave")
    );
    let (a, b) = (a?, b?);
    let mut epochs = [a, b];
    epochs.sort();
    assert_eq!(epochs, [2, 3]);

    recv_n(&mut carol, 1).await?;
    recv_n(&mut dave, 1).await?;
    // The winner still has the loser's commit to process.
    alice.receive(None).await?;
    bob.receive(None).await?;

    let everyone = set(&["alice", "bob", "carol", "dave"]);
    for c in [&alice, &bob, &carol, &dave] {
        assert_eq!(members(c, &group)?, (everyone.clone(), 3));
    }
    assert_eq!(alice.server_view(&group).await?.epoch, 3);

    // And the converged group works: everyone reads dave.
    dave.send(&group, "hi all").await?;
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(
            texts(&recv_n(c, 1).await?),
            vec![("dave".into(), "hi all".into())]
        );
    }
    Ok(())
}
