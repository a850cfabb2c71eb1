//! The attachment SDK against an in-process gateway: the streaming API (reader in, writer
//! out), downloads refused for tampered blobs, wrong keys and non-members, and an upload whose
//! process died resuming from the gateway's offset in a new client.

#[path = "sdk/common.rs"]
#[allow(dead_code)]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use common::{Harness, recv_n};
use sealgate_client::attachment::{AttachmentError, Progress};
use sealgate_client::{
    AttachmentMessage, AttachmentOptions, ClientOptions, Error, Event, SealClient,
};

fn data(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 31 % 251) as u8 ^ (i >> 12) as u8)
        .collect()
}

fn attachments(events: Vec<Event>) -> Vec<AttachmentMessage> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Attachment(a) => Some(a),
            _ => None,
        })
        .collect()
}

/// Every stored object file under the gateway's blob folder.
fn part_files(h: &Harness) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![h.dir.path().join("server/blobs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn stream_in_stream_out_and_tampering_is_refused() -> Result<()> {
    let h = Harness::start().await?;
    let mut alice = h.device("alice", "alice").await?;
    let mut bob = h.device("bob", "bob").await?;
    let carol = h.device("carol", "carol").await?;
    let group = alice.create_group(&["bob".to_owned()]).await?;
    recv_n(&mut bob, 1).await?;

    let plain = data(300 * 1024 + 11);
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    let progress: Progress = Arc::new(move |done, _total| {
        s.store(done, Ordering::SeqCst);
    });
    let mut options = AttachmentOptions::new("notes.txt", "text/plain");
    options.text = Some("caption".into());
    options.request_bytes = 100 * 1024; // several PATCHes
    options.progress = Some(progress);
    let receipt = alice
        .send_attachment(&group, &plain[..], plain.len() as u64, options)
        .await?;
    assert_eq!(receipt.size, plain.len() as u64);
    assert_eq!(receipt.resumed_from, 0);
    assert!(
        part_files(&h).len() >= 3,
        "several PATCHes, one object each"
    );

    let got = attachments(recv_n(&mut bob, 1).await?);
    assert_eq!(got.len(), 1);
    let a = &got[0];
    assert_eq!(
        (a.from.as_str(), a.text.as_deref()),
        ("alice", Some("caption"))
    );
    assert_eq!(a.attachment.name, "notes.txt");
    assert_eq!(a.attachment.digest, receipt.digest);
    assert_eq!(seen.load(Ordering::SeqCst), a.attachment.ciphertext_len);

    let mut out = Vec::new();
    let verified = bob
        .download_attachment(&a.attachment, &mut out, None)
        .await?;
    assert_eq!(verified.size, plain.len() as u64);
    assert!(out == plain);

    // A wrong key (e.g. a forged message) fails at the first chunk.
    let mut forged = a.attachment.clone();
    forged.cek[0] ^= 1;
    let err = bob
        .download_attachment(&forged, &mut Vec::new(), None)
        .await;
    assert!(
        matches!(
            err,
            Err(Error::Attachment(AttachmentError::ChunkCorrupted {
                index: 0
            }))
        ),
        "{err:?}"
    );

    // Carol is not in the conversation: no download URL.
    let err = carol
        .download_attachment(&a.attachment, &mut Vec::new(), None)
        .await;
    assert_eq!(
        err.err()
            .and_then(|e| e.problem().map(|p| p.code.clone()))
            .as_deref(),
        Some("not_member")
    );

    // The gateway (or its disk) altering one stored byte is detected.
    let victim = part_files(&h).into_iter().nth(1).expect("a second part");
    let mut bytes = std::fs::read(&victim)?;
    bytes[10] ^= 0x40;
    std::fs::write(&victim, &bytes)?;
    let err = bob
        .download_attachment(&a.attachment, &mut Vec::new(), None)
        .await;
    assert!(
        matches!(
            err,
            Err(Error::Attachment(AttachmentError::ChunkCorrupted { .. }))
        ),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_short_resumes_in_a_new_client() -> Result<()> {
    let h = Harness::start().await?;
    let mut alice = h.device("alice", "alice").await?;
    let mut bob = h.device("bob", "bob").await?;
    let group = alice.create_group(&["bob".to_owned()]).await?;
    recv_n(&mut bob, 1).await?;

    let plain = data(24 * 1024 * 1024 + 5);
    let file = h.dir.path().join("big.bin");
    std::fs::write(&file, &plain)?;
    let options = || {
        let mut o = AttachmentOptions::new("big.bin", "application/octet-stream");
        o.request_bytes = 512 * 1024;
        o
    };

    // The "process" dies (its task is dropped mid-upload) after a few requests landed.
    let (f, g, o) = (file.clone(), group.clone(), options());
    let task = tokio::spawn(async move { alice.send_attachment_file(&g, &f, o).await });
    let deadline = Instant::now() + Duration::from_secs(60);
    while part_files(&h).len() < 4 {
        assert!(
            !task.is_finished(),
            "the upload finished before it was cut short"
        );
        assert!(Instant::now() < deadline, "no upload progress");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    task.abort();
    let _ = task.await;

    let mut alice = SealClient::open_with(&h.home("alice"), ClientOptions::default()).await?;
    let receipt = alice.send_attachment_file(&group, &file, options()).await?;
    assert!(receipt.resumed_from > 0, "started over instead of resuming");
    assert!(receipt.resumed_from < 24 * 1024 * 1024);

    let got = attachments(recv_n(&mut bob, 1).await?);
    assert_eq!(got.len(), 1, "one message for one file");
    let mut out = Vec::with_capacity(plain.len());
    bob.download_attachment(&got[0].attachment, &mut out, None)
        .await?;
    assert!(out == plain, "the resumed file differs");

    // Nothing is left pending: sending the same file again is a new upload.
    let again = alice.send_attachment_file(&group, &file, options()).await?;
    assert_eq!(again.resumed_from, 0);
    assert_ne!(again.attachment_id, receipt.attachment_id);
    Ok(())
}
