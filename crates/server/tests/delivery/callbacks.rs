//! Tenant status callbacks: registered with `PUT /v1/callbacks`, signed with HMAC-SHA256,
//! posted for every status change, retried when the tenant's endpoint fails.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, ensure};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use sealgate_carrier_sim::FaultConfig;
use sealgate_proto::send::{CallbackRegistered, MessageStatus, StatusCallback};
use sealgate_server::delivery::signature::verify_callback;
use serde_json::json;

use super::harness::{RCS_PLAIN, Rig, problem, sim_config, text};

/// (signature header, correlation header, body) of one accepted post.
type Post = (String, Option<String>, Vec<u8>);

#[derive(Clone, Default)]
struct Receiver {
    /// (signature header, correlation header, body) of every successful post.
    got: Arc<Mutex<Vec<Post>>>,
    /// Posts to refuse with 503 before accepting.
    fail_first: Arc<Mutex<u32>>,
}

async fn start_receiver(fail_first: u32) -> Result<(String, Receiver)> {
    let rx = Receiver {
        fail_first: Arc::new(Mutex::new(fail_first)),
        ..Receiver::default()
    };
    let state = rx.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                {
                    let mut left = state.fail_first.lock().expect("lock");
                    if *left > 0 {
                        *left -= 1;
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                }
                let sig = headers
                    .get("x-sealgate-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let corr = headers
                    .get("x-correlation-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                state
                    .got
                    .lock()
                    .expect("lock")
                    .push((sig, corr, body.to_vec()));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, rx))
}

#[tokio::test]
async fn status_changes_are_posted_signed_and_retried() -> Result<()> {
    let rig = Rig::start(Some(sim_config(FaultConfig::default())), |_| {}).await?;
    let (url, rx) = start_receiver(2).await?;
    let resp = rig
        .http
        .put(rig.url("/v1/callbacks"))
        .bearer_auth(&rig.api_key)
        .json(&json!({ "url": url }))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let reg: CallbackRegistered = resp.json().await?;
    let secret = reg.secret.expect("a generated secret is returned once");
    assert!(secret.len() >= 32);

    // The client's request id is the correlation id all the way to the callbacks.
    let resp = rig
        .http
        .post(rig.url("/v1/messages"))
        .bearer_auth(&rig.api_key)
        .header("Idempotency-Key", "cb1")
        .header("x-request-id", "corr-cb-1")
        .json(&text(RCS_PLAIN, "hello", "rcs"))
        .send()
        .await?;
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["x-request-id"], "corr-cb-1");
    let id = resp.json::<serde_json::Value>().await?["message_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    rig.wait_for(&id, &[MessageStatus::Read], Duration::from_secs(10))
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = rx.got.lock().unwrap().clone();
        if got.len() >= 3 {
            break got;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "callbacks: {}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let mut statuses = Vec::new();
    for (sig, corr, body) in &got {
        assert!(verify_callback(&secret, body, sig), "signature verifies");
        assert!(!verify_callback("another-secret-0000", body, sig));
        assert_eq!(corr.as_deref(), Some("corr-cb-1"));
        let cb: StatusCallback = serde_json::from_slice(body)?;
        assert_eq!(cb.message_id, id);
        assert!(cb.at > 0);
        statuses.push(cb.status);
    }
    statuses.sort_by_key(|s| s.rank());
    use MessageStatus::*;
    assert_eq!(statuses, [Sent, Delivered, Read]);
    let m = rig.metrics().await?;
    assert!(
        m.contains(
            "sealgate_delivery_retries_total{error_class=\"server_error\",transport=\"webhook\"} 2"
        ),
        "{m}"
    );
    Ok(())
}

#[tokio::test]
async fn callback_registration_is_validated() -> Result<()> {
    let rig = Rig::start(None, |_| {}).await?;
    for body in [
        json!({"url": "ftp://example.com/x"}),
        json!({"url": "not a url"}),
        json!({"url": "https://example.com/x", "secret": "short"}),
    ] {
        let resp = rig
            .http
            .put(rig.url("/v1/callbacks"))
            .bearer_auth(&rig.api_key)
            .json(&body)
            .send()
            .await?;
        let (status, p) = problem(resp).await?;
        assert_eq!((status, p.code.as_str()), (422, "invalid_field"), "{body}");
    }
    let resp = rig
        .http
        .put(rig.url("/v1/callbacks"))
        .bearer_auth(&rig.api_key)
        .json(&json!({"url": "https://example.com/x", "secret": "my-own-secret-0123456789"}))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let reg: CallbackRegistered = resp.json().await?;
    assert!(reg.secret.is_none(), "a caller-chosen secret is not echoed");
    Ok(())
}
