//! Unit tests of the DS engine against real mls-rs clients.

use mls_rs::client_builder::MlsConfig;
use mls_rs::crypto::{SignaturePublicKey, SignatureSecretKey};
use mls_rs::identity::basic::{BasicCredential, BasicIdentityProvider};
use mls_rs::{CipherSuiteProvider, Client, ExtensionList, Group};
use proptest::prelude::*;

use super::*;

const TENANT: &str = "tn-1";

fn id(user: &str, device: &str) -> DeviceIdentity {
    DeviceIdentity::new(TENANT, user, device).expect("valid identity")
}

fn keypair() -> (SignatureSecretKey, SignaturePublicKey) {
    AwsLcCryptoProvider::default()
        .cipher_suite_provider(sealgate_cipher_suite())
        .expect("suite")
        .signature_key_generate()
        .expect("keygen")
}

fn client(
    credential: &DeviceIdentity,
    sk: SignatureSecretKey,
    pk: SignaturePublicKey,
) -> Client<impl MlsConfig + use<>> {
    Client::builder()
        .crypto_provider(AwsLcCryptoProvider::default())
        .identity_provider(BasicIdentityProvider::new())
        .signing_identity(
            SigningIdentity::new(
                BasicCredential::new(credential.to_credential_bytes()).into_credential(),
                pk,
            ),
            sk,
            sealgate_cipher_suite(),
        )
        .build()
}

/// A device's client plus the key it registered.
fn device(user: &str, dev: &str) -> (Client<impl MlsConfig>, DeviceIdentity, Vec<u8>) {
    let (sk, pk) = keypair();
    let identity = id(user, dev);
    let public = pk.as_bytes().to_vec();
    (client(&identity, sk, pk), identity, public)
}

fn directory_of(entries: &[(&DeviceIdentity, &[u8])]) -> HashMap<String, Option<DirectoryEntry>> {
    entries
        .iter()
        .map(|(i, k)| {
            (
                i.device_id.clone(),
                Some(DirectoryEntry {
                    user_id: i.user_id.clone(),
                    signature_key: k.to_vec(),
                    active: true,
                }),
            )
        })
        .collect()
}

fn new_group<C: MlsConfig>(c: &Client<C>) -> Group<C> {
    c.create_group(ExtensionList::default(), ExtensionList::default(), None)
        .expect("create group")
}

fn kp<C: MlsConfig>(c: &Client<C>) -> MlsMessage {
    c.generate_key_package_message(ExtensionList::default(), ExtensionList::default(), None)
        .expect("key package")
}

fn observe<C: MlsConfig>(g: &Group<C>) -> ObservedGroup {
    let gi = g
        .group_info_message(true)
        .expect("group info")
        .to_bytes()
        .expect("encode");
    observe_new_group(&gi, None).expect("observe")
}

#[test]
fn creator_must_be_caller_with_registered_key() {
    let (alice, alice_id, alice_key) = device("alice", "dv-a");
    let g = new_group(&alice);
    let observed = observe(&g);
    assert_eq!(observed.epoch, 0);
    assert_eq!(observed.group_id, g.group_id());

    let entry = check_creator(&observed.creator, &alice_id, Some(&alice_key)).expect("ok");
    assert_eq!(entry.device_id, "dv-a");
    assert_eq!(entry.leaf_index, 0);

    let bob = id("bob", "dv-b");
    assert!(matches!(
        check_creator(&observed.creator, &bob, Some(&alice_key)),
        Err(EngineError::IdentityMismatch(_))
    ));
    let (_, other) = keypair();
    assert!(matches!(
        check_creator(&observed.creator, &alice_id, Some(other.as_bytes())),
        Err(EngineError::IdentityMismatch(_))
    ));
    assert!(matches!(
        check_creator(&observed.creator, &alice_id, None),
        Err(EngineError::IdentityMismatch(_))
    ));
}

#[test]
fn group_info_must_be_one_member_and_well_formed() {
    let (alice, _, _) = device("alice", "dv-a");
    let (bob, _, _) = device("bob", "dv-b");
    let mut g = new_group(&alice);
    g.commit_builder()
        .add_member(kp(&bob))
        .expect("add")
        .build()
        .expect("commit");
    g.apply_pending_commit().expect("apply");
    let gi = g
        .group_info_message(true)
        .expect("gi")
        .to_bytes()
        .expect("enc");
    assert!(matches!(
        observe_new_group(&gi, None),
        Err(EngineError::InvalidCommit(_))
    ));

    assert!(matches!(
        observe_new_group(b"garbage", None),
        Err(EngineError::Malformed(_))
    ));
    // A KeyPackage is an MLS message, but not a GroupInfo.
    let kp_bytes = kp(&bob).to_bytes().expect("enc");
    assert!(matches!(
        observe_new_group(&kp_bytes, None),
        Err(EngineError::Malformed(_))
    ));
    // Without the tree extension the tree must come separately.
    let g = new_group(&alice);
    let gi = g
        .group_info_message(false)
        .expect("gi")
        .to_bytes()
        .expect("enc");
    assert!(matches!(
        observe_new_group(&gi, None),
        Err(EngineError::InvalidCommit(_))
    ));
    let tree = g.export_tree().to_bytes().expect("tree");
    assert!(observe_new_group(&gi, Some(&tree)).is_ok());
    assert!(matches!(
        observe_new_group(&gi, Some(b"\x01\x02")),
        Err(EngineError::Malformed(_))
    ));
}

#[test]
fn add_commit_applies_and_reports_the_added_device() {
    let (alice, alice_id, alice_key) = device("alice", "dv-a");
    let (bob, bob_id, bob_key) = device("bob", "dv-b");
    let mut g = new_group(&alice);
    let observed = observe(&g);

    let out = g
        .commit_builder()
        .add_member(kp(&bob))
        .expect("add")
        .build()
        .expect("commit");
    let bytes = out.commit_message.to_bytes().expect("enc");
    let (msg, sender) = precheck_commit(&bytes, g.group_id(), 0).expect("precheck");
    assert_eq!(sender, 0);
    let applied = apply_commit(&observed.snapshot, msg, &alice_id, 10).expect("apply");
    assert_eq!(applied.new_epoch, 1);
    assert_eq!(applied.added_devices, vec!["dv-b".to_owned()]);
    assert_eq!(applied.old_roster.len(), 1);
    assert_eq!(applied.new_roster.len(), 2);
    // Alice's leaf is rewritten by the update path (new HPKE key) but her signing identity is
    // unchanged, so only Bob's leaf needs a directory check.
    assert_eq!(applied.changed.len(), 1);
    assert_eq!(applied.changed[0].identity.as_ref(), Some(&bob_id));
    assert!(applied.adds_members());
    applied
        .check_welcome(&out.welcome_messages[0])
        .expect("welcome matches");

    let dir = directory_of(&[(&alice_id, &alice_key), (&bob_id, &bob_key)]);
    check_bindings(TENANT, &applied.changed, &dir).expect("bound");
    // Wrong key in the directory, revoked device, unknown device, other tenant.
    let mut wrong = dir.clone();
    if let Some(Some(e)) = wrong.get_mut("dv-b") {
        e.signature_key = alice_key.clone();
    }
    assert!(check_bindings(TENANT, &applied.changed, &wrong).is_err());
    let mut revoked = dir.clone();
    if let Some(Some(e)) = revoked.get_mut("dv-b") {
        e.active = false;
    }
    assert!(check_bindings(TENANT, &applied.changed, &revoked).is_err());
    let mut missing = dir.clone();
    missing.insert("dv-b".into(), None);
    assert!(check_bindings(TENANT, &applied.changed, &missing).is_err());
    assert!(check_bindings("tn-2", &applied.changed, &dir).is_err());

    // The group limit counts leaves after the commit.
    let (msg, _) = precheck_commit(&bytes, g.group_id(), 0).expect("precheck");
    assert!(matches!(
        apply_commit(&observed.snapshot, msg, &alice_id, 1),
        Err(EngineError::InvalidCommit(_))
    ));
    // The committer must be the caller.
    let (msg, _) = precheck_commit(&bytes, g.group_id(), 0).expect("precheck");
    assert!(matches!(
        apply_commit(&observed.snapshot, msg, &bob_id, 10),
        Err(EngineError::IdentityMismatch(_))
    ));

    // The GroupInfo of the new epoch matches; the old one does not.
    g.apply_pending_commit().expect("apply");
    let gi = g
        .group_info_message(true)
        .expect("gi")
        .to_bytes()
        .expect("enc");
    applied
        .check_group_info(&gi)
        .expect("group info of new epoch");
    let (alice2, _, _) = device("alice", "dv-a2");
    let other = new_group(&alice2)
        .group_info_message(true)
        .expect("gi")
        .to_bytes()
        .expect("enc");
    assert!(applied.check_group_info(&other).is_err());
}

#[test]
fn welcome_must_match_the_added_members() {
    let (alice, alice_id, _) = device("alice", "dv-a");
    let (bob, _, _) = device("bob", "dv-b");
    let (carol, _, _) = device("carol", "dv-c");
    let mut g = new_group(&alice);
    let observed = observe(&g);
    let out = g
        .commit_builder()
        .add_member(kp(&bob))
        .expect("add")
        .build()
        .expect("commit");
    let bytes = out.commit_message.to_bytes().expect("enc");
    let (msg, _) = precheck_commit(&bytes, g.group_id(), 0).expect("precheck");
    let applied = apply_commit(&observed.snapshot, msg, &alice_id, 10).expect("apply");

    // A Welcome for carol from another group does not fit this commit.
    let mut other = new_group(&alice);
    let other_out = other
        .commit_builder()
        .add_member(kp(&carol))
        .expect("add")
        .build()
        .expect("commit");
    assert!(matches!(
        applied.check_welcome(&other_out.welcome_messages[0]),
        Err(EngineError::InvalidCommit(_))
    ));
    assert!(parse_welcome(&bytes).is_err());
    assert!(parse_welcome(b"junk").is_err());
}

#[test]
fn precheck_rejects_wrong_group_ciphertext_proposals_and_stale() {
    let (alice, _, _) = device("alice", "dv-a");
    let (bob, _, _) = device("bob", "dv-b");
    let mut g = new_group(&alice);
    let out = g
        .commit_builder()
        .add_member(kp(&bob))
        .expect("add")
        .build()
        .expect("commit");
    let bytes = out.commit_message.to_bytes().expect("enc");

    assert!(matches!(
        precheck_commit(&bytes, b"other group", 0),
        Err(EngineError::InvalidCommit(_))
    ));
    assert!(matches!(
        precheck_commit(&bytes, g.group_id(), 1),
        Err(EngineError::StaleEpoch {
            current: 1,
            attempted: 0
        })
    ));
    assert!(matches!(
        precheck_commit(b"\x00\x01garbage", g.group_id(), 0),
        Err(EngineError::Malformed(_))
    ));
    g.apply_pending_commit().expect("apply");

    let app = g
        .encrypt_application_message(b"hello", vec![])
        .expect("encrypt")
        .to_bytes()
        .expect("enc");
    match precheck_commit(&app, g.group_id(), 1) {
        Err(EngineError::InvalidCommit(d)) => assert!(d.contains("PublicMessage"), "{d}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(check_application(&app, g.group_id()), Ok(1));
    assert!(check_application(&app, b"other").is_err());
    assert!(check_application(&bytes, g.group_id()).is_err());

    let proposal = g
        .propose_update(vec![])
        .expect("propose")
        .to_bytes()
        .expect("enc");
    match precheck_commit(&proposal, g.group_id(), 1) {
        Err(EngineError::InvalidCommit(d)) => assert!(d.contains("proposals"), "{d}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn corrupted_signature_is_rejected() {
    let (alice, alice_id, _) = device("alice", "dv-a");
    let (bob, _, _) = device("bob", "dv-b");
    let mut g = new_group(&alice);
    let observed = observe(&g);
    let out = g
        .commit_builder()
        .add_member(kp(&bob))
        .expect("add")
        .build()
        .expect("commit");
    let mut bytes = out.commit_message.to_bytes().expect("enc");
    // A member's PublicMessage commit ends with the signature (64 bytes), the confirmation
    // tag and the membership tag (32 bytes each), each with a one-byte length: flip a byte in
    // the middle of the signature.
    let at = bytes.len() - 33 - 33 - 32;
    bytes[at] ^= 0x01;
    let (msg, _) = precheck_commit(&bytes, g.group_id(), 0).expect("still parses");
    assert!(matches!(
        apply_commit(&observed.snapshot, msg, &alice_id, 10),
        Err(EngineError::InvalidCommit(_))
    ));
}

#[test]
fn key_substitution_is_a_changed_leaf_that_fails_binding() {
    let (alice, alice_id, alice_key) = device("alice", "dv-a");
    // Mallory's KeyPackage names alice's second device but carries mallory's key.
    let (sk, pk) = keypair();
    let mallory_key = pk.as_bytes().to_vec();
    let fake = client(&id("alice", "dv-a2"), sk, pk);
    let mut g = new_group(&alice);
    let observed = observe(&g);
    let out = g
        .commit_builder()
        .add_member(kp(&fake))
        .expect("add")
        .build()
        .expect("commit");
    let bytes = out.commit_message.to_bytes().expect("enc");
    let (msg, _) = precheck_commit(&bytes, g.group_id(), 0).expect("precheck");
    let applied = apply_commit(&observed.snapshot, msg, &alice_id, 10).expect("apply");
    let (_, real_a2_key) = keypair();
    let a2 = id("alice", "dv-a2");
    let dir = directory_of(&[(&alice_id, &alice_key), (&a2, real_a2_key.as_bytes())]);
    match check_bindings(TENANT, &applied.changed, &dir) {
        Err(EngineError::IdentityMismatch(d)) => assert!(d.contains("signature key"), "{d}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_ne!(mallory_key, real_a2_key.as_bytes());
}

#[test]
fn changed_leaves_sees_new_and_rekeyed_leaves_only() {
    let (_, pk1) = keypair();
    let (_, pk2) = keypair();
    let leaf = |i: u32, user: &str, pk: &SignaturePublicKey| {
        Leaf::from_member(
            i,
            SigningIdentity::new(
                BasicCredential::new(id(user, &format!("d-{user}")).to_credential_bytes())
                    .into_credential(),
                pk.clone(),
            ),
        )
    };
    let old = vec![leaf(0, "a", &pk1), leaf(1, "b", &pk2)];
    assert!(changed_leaves(&old, &old).is_empty());
    let new = vec![leaf(0, "a", &pk2), leaf(1, "b", &pk2), leaf(2, "c", &pk1)];
    let changed: Vec<u32> = changed_leaves(&old, &new)
        .iter()
        .map(|l| l.leaf_index)
        .collect();
    assert_eq!(changed, vec![0, 2]);
    // Removal changes nothing that needs a check.
    assert!(changed_leaves(&old, &old[..1]).is_empty());
}

proptest! {
    /// Over any sequence of commit attempts, the epoch only advances by one, and exactly when
    /// the attempt names the current epoch.
    #[test]
    fn commit_epoch_only_advances_by_one(attempts in proptest::collection::vec(0u64..8, 0..64)) {
        let mut current = 0u64;
        for attempted in attempts {
            let before = current;
            match commit_epoch_decision(current, attempted) {
                EpochDecision::Apply => {
                    prop_assert_eq!(attempted, current);
                    current += 1;
                }
                EpochDecision::Stale { current: c } => {
                    prop_assert_ne!(attempted, current);
                    prop_assert_eq!(c, current);
                }
            }
            prop_assert!(current == before || current == before + 1);
        }
    }

    #[test]
    fn application_window_is_current_and_three_before(current in 0u64..1000, epoch in 0u64..1010) {
        let ok = application_epoch_ok(epoch, current);
        prop_assert_eq!(ok, epoch <= current && current - epoch <= APPLICATION_EPOCH_WINDOW);
    }
}
