//! Integration tests of attachment blobs against a real `Gateway` on a loopback port: the
//! resumable upload protocol, limits and quotas, signed download URLs, and garbage
//! collection of the objects in the data folder.

mod support;

use anyhow::Result;
use reqwest::StatusCode;
use sealgate_proto::attachment::{CreateUploadResponse, DownloadUrlResponse};
use sealgate_server::ds::store::{NewGroup, RosterEntry};
use sealgate_server::store::now_secs;
use support::{TestDevice, TestGateway, problem};

const OCTETS: &str = "application/offset+octet-stream";

/// Register a group directly in the DS store with `members` as its roster.
async fn group(gw: &TestGateway, members: &[&TestDevice]) -> Result<String> {
    let mut id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| anyhow::anyhow!("rng"))?;
    let group_id = hex::encode(id);
    let roster = members
        .iter()
        .enumerate()
        .map(|(i, d)| RosterEntry {
            leaf_index: i as u32,
            user_id: d.user.clone(),
            device_id: d.device_id.clone(),
            signature_key: d.public_key.as_bytes().to_vec(),
        })
        .collect();
    let created = gw
        .gateway
        .state()
        .store()
        .create_group(&NewGroup {
            group_id: group_id.clone(),
            tenant_id: members[0].tenant_id.clone(),
            epoch: 0,
            snapshot: vec![],
            group_info: vec![],
            created_by: members[0].device_id.clone(),
            roster,
            now_ms: 0,
        })
        .await?;
    anyhow::ensure!(created);
    Ok(group_id)
}

async fn create(
    gw: &TestGateway,
    dev: &TestDevice,
    group: &str,
    length: u64,
) -> Result<reqwest::Response> {
    Ok(gw
        .http
        .post(gw.url("/v1/attachments"))
        .bearer_auth(&dev.token)
        .json(&serde_json::json!({"conversation": group, "length": length}))
        .send()
        .await?)
}

async fn create_ok(gw: &TestGateway, dev: &TestDevice, group: &str, length: u64) -> Result<String> {
    let resp = create(gw, dev, group, length).await?;
    anyhow::ensure!(
        resp.status() == StatusCode::CREATED,
        "create: {}",
        resp.status()
    );
    let body: CreateUploadResponse = resp.json().await?;
    assert_eq!(body.offset, 0);
    assert!(body.expires_at > now_secs());
    Ok(body.attachment_id)
}

async fn patch(
    gw: &TestGateway,
    dev: &TestDevice,
    id: &str,
    offset: u64,
    body: Vec<u8>,
) -> Result<reqwest::Response> {
    Ok(gw
        .http
        .patch(gw.url(&format!("/v1/attachments/{id}")))
        .bearer_auth(&dev.token)
        .header("content-type", OCTETS)
        .header("upload-offset", offset.to_string())
        .body(body)
        .send()
        .await?)
}

fn header_u64(resp: &reqwest::Response, name: &str) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// `(offset, length)` from `HEAD`, or the status if it failed.
async fn head(
    gw: &TestGateway,
    dev: &TestDevice,
    id: &str,
) -> Result<Result<(u64, u64), StatusCode>> {
    let resp = gw
        .http
        .head(gw.url(&format!("/v1/attachments/{id}")))
        .bearer_auth(&dev.token)
        .send()
        .await?;
    if resp.status() != StatusCode::OK {
        return Ok(Err(resp.status()));
    }
    Ok(Ok((
        header_u64(&resp, "upload-offset").unwrap_or(u64::MAX),
        header_u64(&resp, "upload-length").unwrap_or(u64::MAX),
    )))
}

async fn download_url(gw: &TestGateway, dev: &TestDevice, id: &str) -> Result<reqwest::Response> {
    Ok(gw
        .http
        .post(gw.url(&format!("/v1/attachments/{id}/download-url")))
        .bearer_auth(&dev.token)
        .send()
        .await?)
}

async fn get(gw: &TestGateway, dev: &TestDevice, url: &str) -> Result<reqwest::Response> {
    Ok(gw
        .http
        .get(gw.url(url))
        .bearer_auth(&dev.token)
        .send()
        .await?)
}

/// Every regular file under the gateway's blob folder.
fn blob_files(gw: &TestGateway) -> Vec<std::path::PathBuf> {
    let root = gw.gateway.state().config().data_dir.join("blobs");
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

struct Setup {
    gw: TestGateway,
    alice: TestDevice,
    bob: TestDevice,
    carol: TestDevice,
    group: String,
}

async fn setup(tweak: impl FnOnce(&mut sealgate_server::Config)) -> Result<Setup> {
    let gw = TestGateway::start_with(tweak).await?;
    let tenant = gw.create_tenant("acme").await?;
    let alice = gw.device(&tenant.api_key, "alice").await?;
    let bob = gw.device(&tenant.api_key, "bob").await?;
    let carol = gw.device(&tenant.api_key, "carol").await?;
    let group = group(&gw, &[&alice, &bob]).await?;
    Ok(Setup {
        gw,
        alice,
        bob,
        carol,
        group,
    })
}

#[tokio::test]
async fn upload_in_pieces_resume_from_head_and_download() -> Result<()> {
    let Setup {
        gw,
        alice,
        bob,
        carol,
        group,
    } = setup(|_| {}).await?;
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let id = create_ok(&gw, &alice, &group, 3000).await?;
    assert_eq!(head(&gw, &alice, &id).await?, Ok((0, 3000)));

    let resp = patch(&gw, &alice, &id, 0, data[..1000].to_vec()).await?;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_u64(&resp, "upload-offset"), Some(1000));
    assert_eq!(head(&gw, &alice, &id).await?, Ok((1000, 3000)));

    // A stale offset (a retry of what already landed) is refused with the current offset.
    let resp = patch(&gw, &alice, &id, 0, data[..1000].to_vec()).await?;
    assert_eq!(header_u64(&resp, "upload-offset"), Some(1000));
    let (status, p) = problem(resp).await?;
    assert_eq!((status.as_u16(), p.code.as_str()), (409, "offset_mismatch"));

    // Not complete yet: no download.
    let (status, p) = problem(download_url(&gw, &bob, &id).await?).await?;
    assert_eq!(
        (status.as_u16(), p.code.as_str()),
        (409, "upload_incomplete")
    );

    // Past the declared length: refused, nothing recorded.
    let (status, p) = problem(patch(&gw, &alice, &id, 1000, vec![0; 2001]).await?).await?;
    assert_eq!(
        (status.as_u16(), p.code.as_str()),
        (413, "attachment_too_large")
    );
    assert_eq!(head(&gw, &alice, &id).await?, Ok((1000, 3000)));

    // Wrong media type; another device's upload; an unknown id.
    let resp = gw
        .http
        .patch(gw.url(&format!("/v1/attachments/{id}")))
        .bearer_auth(&alice.token)
        .header("content-type", "application/octet-stream")
        .header("upload-offset", "1000")
        .body(vec![1u8; 10])
        .send()
        .await?;
    assert_eq!(problem(resp).await?.1.code, "unsupported_media_type");
    assert_eq!(head(&gw, &bob, &id).await?, Err(StatusCode::NOT_FOUND));
    let (_, p) = problem(patch(&gw, &bob, &id, 1000, vec![1; 10]).await?).await?;
    assert_eq!(p.code, "unknown_attachment");
    assert_eq!(
        head(&gw, &alice, "att_nope").await?,
        Err(StatusCode::NOT_FOUND)
    );

    let resp = patch(&gw, &alice, &id, 1000, data[1000..2500].to_vec()).await?;
    assert_eq!(header_u64(&resp, "upload-offset"), Some(2500));
    let resp = patch(&gw, &alice, &id, 2500, data[2500..].to_vec()).await?;
    assert_eq!(header_u64(&resp, "upload-offset"), Some(3000));

    // Bob, a member, downloads the three parts as one stream.
    let resp = download_url(&gw, &bob, &id).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let url: DownloadUrlResponse = resp.json().await?;
    assert_eq!(url.length, 3000);
    assert!(url.expires_at > now_secs() && url.expires_at <= now_secs() + 301);
    let resp = get(&gw, &bob, &url.url).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await?.as_ref(), data.as_slice());

    // Carol is in the tenant but not in the group: no URL, no upload into it.
    let (status, p) = problem(download_url(&gw, &carol, &id).await?).await?;
    assert_eq!((status.as_u16(), p.code.as_str()), (403, "not_member"));
    let (status, p) = problem(create(&gw, &carol, &group, 10).await?).await?;
    assert_eq!((status.as_u16(), p.code.as_str()), (404, "unknown_group"));
    Ok(())
}

#[tokio::test]
async fn size_and_quota_limits_refuse_and_store_nothing() -> Result<()> {
    let Setup {
        gw, alice, group, ..
    } = setup(|c| {
        c.blobs.max_attachment_bytes = 100_000;
        c.blobs.tenant_quota_bytes = 150_000;
        c.blobs.max_chunk_bytes = 64 * 1024;
    })
    .await?;
    let (status, p) = problem(create(&gw, &alice, &group, 100_001).await?).await?;
    assert_eq!(
        (status.as_u16(), p.code.as_str()),
        (413, "attachment_too_large")
    );
    let id = create_ok(&gw, &alice, &group, 100_000).await?;
    let (status, p) = problem(create(&gw, &alice, &group, 60_000).await?).await?;
    assert_eq!(
        (status.as_u16(), p.code.as_str()),
        (403, "storage_quota_exceeded")
    );
    let usage = gw
        .gateway
        .state()
        .blobs()
        .uploads()
        .tenant_usage(&alice.tenant_id, now_secs())
        .await?;
    assert_eq!(usage, 100_000, "the refused reservation must not count");

    // A PATCH over max_chunk_bytes is refused, with nothing stored or recorded.
    let (status, p) = problem(patch(&gw, &alice, &id, 0, vec![7; 70_000]).await?).await?;
    assert_eq!(
        (status.as_u16(), p.code.as_str()),
        (413, "attachment_too_large")
    );
    assert_eq!(head(&gw, &alice, &id).await?, Ok((0, 100_000)));
    assert!(blob_files(&gw).is_empty(), "{:?}", blob_files(&gw));
    // ... while one within the limit lands, larger than the 1 MiB JSON body limit's share.
    let resp = patch(&gw, &alice, &id, 0, vec![7; 60_000]).await?;
    assert_eq!(header_u64(&resp, "upload-offset"), Some(60_000));
    assert_eq!(blob_files(&gw).len(), 1);
    Ok(())
}

#[tokio::test]
async fn bigger_parts_than_the_json_body_limit_are_streamed() -> Result<()> {
    let Setup {
        gw,
        alice,
        bob,
        group,
        ..
    } = setup(|_| {}).await?;
    let len = 3 * 1024 * 1024 + 5;
    let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    let id = create_ok(&gw, &alice, &group, len as u64).await?;
    let resp = patch(&gw, &alice, &id, 0, data.clone()).await?;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let url: DownloadUrlResponse = download_url(&gw, &bob, &id).await?.json().await?;
    let got = get(&gw, &bob, &url.url).await?.bytes().await?;
    assert!(got.as_ref() == data.as_slice());
    Ok(())
}

#[tokio::test]
async fn expired_tampered_and_foreign_download_urls_are_refused() -> Result<()> {
    let Setup {
        gw,
        alice,
        bob,
        group,
        ..
    } = setup(|_| {}).await?;
    let id = create_ok(&gw, &alice, &group, 5).await?;
    patch(&gw, &alice, &id, 0, b"hello".to_vec()).await?;
    let url: DownloadUrlResponse = download_url(&gw, &bob, &id).await?.json().await?;
    assert_eq!(get(&gw, &bob, &url.url).await?.status(), StatusCode::OK);

    let refused = |resp: reqwest::Response| async move {
        let (status, p) = problem(resp).await?;
        anyhow::ensure!(
            (status.as_u16(), p.code.as_str()) == (403, "invalid_download_url"),
            "{status} {}",
            p.code
        );
        Ok::<_, anyhow::Error>(())
    };
    // Bob's URL with Alice's token (a foreign device), even though Alice may download herself.
    refused(get(&gw, &alice, &url.url).await?).await?;
    // Bob's URL rewritten to name Alice.
    let renamed = url.url.replace(&bob.device_id, &alice.device_id);
    refused(get(&gw, &alice, &renamed).await?).await?;
    // A flipped signature digit.
    let sig_at = url.url.find("sig=").expect("sig") + 4;
    let mut tampered = url.url.clone().into_bytes();
    tampered[sig_at] = if tampered[sig_at] == b'0' { b'1' } else { b'0' };
    refused(get(&gw, &bob, &String::from_utf8(tampered)?).await?).await?;
    // A later expiry with the old signature.
    let extended = url.url.replace(
        &format!("exp={}", url.expires_at),
        &format!("exp={}", url.expires_at + 3600),
    );
    refused(get(&gw, &bob, &extended).await?).await?;
    // Correctly signed, but expired.
    let past = now_secs() - 1;
    let sig = gw
        .gateway
        .state()
        .blobs()
        .sign_url(&id, &bob.device_id, past);
    let expired = format!("/v1/blobs/{id}?exp={past}&dev={}&sig={sig}", bob.device_id);
    refused(get(&gw, &bob, &expired).await?).await?;
    // No signature at all; and no token.
    refused(get(&gw, &bob, &format!("/v1/blobs/{id}")).await?).await?;
    let anonymous = gw.http.get(gw.url(&url.url)).send().await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn garbage_collection_deletes_orphaned_uploads_then_expired_attachments() -> Result<()> {
    let Setup {
        gw,
        alice,
        bob,
        group,
        ..
    } = setup(|_| {}).await?;
    let blobs = gw.gateway.state().blobs().clone();
    let (ttl, retention) = (
        blobs.config().upload_ttl_secs as i64,
        blobs.config().retention_secs as i64,
    );
    let orphan = create_ok(&gw, &alice, &group, 10).await?;
    patch(&gw, &alice, &orphan, 0, b"12345".to_vec()).await?;
    let done = create_ok(&gw, &alice, &group, 3).await?;
    patch(&gw, &alice, &done, 0, b"abc".to_vec()).await?;
    assert_eq!(blob_files(&gw).len(), 2);

    // Nothing is due now.
    assert_eq!(blobs.collect_garbage(now_secs()).await?.uploads, 0);
    assert_eq!(blob_files(&gw).len(), 2);

    // Past the upload TTL: the orphan goes (object and rows); the complete one stays.
    let report = blobs.collect_garbage(now_secs() + ttl + 1).await?;
    assert_eq!((report.uploads, report.objects), (1, 1));
    assert!(blobs.uploads().upload(&orphan).await?.is_none());
    assert!(blobs.uploads().parts(&orphan).await?.is_empty());
    let files = blob_files(&gw);
    assert_eq!(files.len(), 1);
    assert!(files[0].to_string_lossy().contains(&done), "{files:?}");
    assert!(
        !gw.gateway
            .state()
            .config()
            .data_dir
            .join("blobs/parts")
            .join(&orphan)
            .exists(),
        "the orphan's folder is removed too"
    );
    let url: DownloadUrlResponse = download_url(&gw, &bob, &done).await?.json().await?;
    assert_eq!(
        get(&gw, &bob, &url.url).await?.bytes().await?.as_ref(),
        b"abc"
    );

    // Past retention: the attachment goes too, and its quota is released.
    let report = blobs.collect_garbage(now_secs() + retention + 1).await?;
    assert_eq!((report.uploads, report.objects), (1, 1));
    assert!(blob_files(&gw).is_empty());
    assert_eq!(
        problem(download_url(&gw, &bob, &done).await?).await?.1.code,
        "unknown_attachment"
    );
    assert_eq!(
        blobs
            .uploads()
            .tenant_usage(&alice.tenant_id, now_secs())
            .await?,
        0
    );
    Ok(())
}
