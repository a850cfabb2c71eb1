//! The in-app route: an MLS PrivateMessage sent by the tenant backend lands once in the
//! mailbox of each of the recipient's devices in the conversation, wakes them through the
//! push service, and is never delivered twice even if its job runs twice.

use std::time::Duration;

use anyhow::{Context, Result};
use mls_rs::MlsMessage;
use mls_rs::group::ReceivedMessage;
use sealgate_carrier_sim::{FaultConfig, Sim};
use sealgate_proto::api::EventKind;
use sealgate_proto::send::{MessageStatus, MessageView};
use sealgate_server::delivery::{JobKind, NewJob};
use serde_json::json;

use super::harness::{push_config, sim_config};
use crate::ds::harness::{Ds, peer};
use crate::support::TestGateway;

async fn status(gw: &TestGateway, key: &str, id: &str) -> Result<MessageView> {
    Ok(gw
        .http
        .get(gw.url(&format!("/v1/messages/{id}")))
        .bearer_auth(key)
        .send()
        .await?
        .json()
        .await?)
}

async fn wait(gw: &TestGateway, key: &str, id: &str, want: MessageStatus) -> Result<MessageView> {
    for _ in 0..400 {
        let v = status(gw, key, id).await?;
        if v.status == want {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("message {id} never reached {want:?}")
}

#[tokio::test]
async fn mls_message_reaches_the_recipients_mailbox_once_with_a_push() -> Result<()> {
    let mut sc = sim_config(FaultConfig::default());
    sc.webhook_secret = None;
    let sim = Sim::new(sc)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_base = format!("http://{}", listener.local_addr()?);
    let serving = sim.clone();
    let (_stop_sim, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sealgate_carrier_sim::serve(serving, listener, async move {
        let _ = rx.await;
    }));
    let gw = TestGateway::start_with(|c| {
        super::harness::fast(c);
        c.transports.push = Some(push_config(&sim_base));
    })
    .await?;
    let ds = Ds::new(&gw.http, &gw.base);
    let acme = gw.create_tenant("acme").await?;
    let mut bank = peer(gw.device(&acme.api_key, "bank-bot").await?);
    let mut bob = peer(gw.device(&acme.api_key, "bob").await?);
    let carol = gw.device(&acme.api_key, "carol").await?;
    let gid = ds.create_group(&mut bank).await?.group_id;
    ds.add(&mut bank, &mut bob).await?;
    let resp = gw
        .http
        .put(gw.url("/v1/devices/me/push-token"))
        .bearer_auth(&bob.dev.token)
        .json(&json!({"token": "bob-push-token"}))
        .send()
        .await?;
    assert_eq!(resp.status(), 204);

    // The tenant backend encrypts with its own device's group state and sends by API key.
    let ciphertext = bank
        .group()?
        .encrypt_application_message(b"your statement is ready", vec![])?
        .to_bytes()?;
    let body = json!({
        "to": "bob",
        "class": "sensitive",
        "body": {"mls": {"conversation": gid, "message": sealgate_proto::b64::encode(&ciphertext)}}
    });
    let resp = gw
        .http
        .post(gw.url("/v1/messages"))
        .bearer_auth(&acme.api_key)
        .header("Idempotency-Key", "stmt-1")
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<serde_json::Value>().await?["message_id"]
        .as_str()
        .context("id")?
        .to_owned();
    let v = wait(&gw, &acme.api_key, &id, MessageStatus::Sent).await?;
    assert_eq!(v.channel, sealgate_proto::send::Channel::Inapp);

    let events = ds.mailbox(&bob.dev, 0, 0).await?;
    let apps: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::Application)
        .collect();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].sender_user, format!("tenant:{}", acme.tenant_id));
    let got = bob
        .group()?
        .process_incoming_message(MlsMessage::from_bytes(&apps[0].message)?)?;
    let ReceivedMessage::ApplicationMessage(m) = got else {
        anyhow::bail!("not an application message");
    };
    assert_eq!(m.data(), b"your statement is ready");
    assert!(
        ds.mailbox(&bank.dev, 0, 0)
            .await?
            .iter()
            .all(|e| e.kind != EventKind::Application),
        "only the recipient's devices"
    );
    // The push wake-up went out, without content.
    for _ in 0..200 {
        if !sim.push_messages("bob-push-token").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let pushes = sim.push_messages("bob-push-token");
    assert_eq!(pushes.len(), 1);
    assert!(!pushes[0].data.to_string().contains("statement"));

    // A redelivered job (a worker died after storing) does not deliver twice.
    let backend = gw.gateway.state().delivery().backend().clone();
    backend
        .enqueue(&NewJob {
            kind: JobKind::Send,
            tenant_id: acme.tenant_id.clone(),
            message_id: Some(id.clone()),
            payload: None,
            not_before: 0,
        })
        .await?;
    gw.gateway.state().delivery().wake();
    for _ in 0..200 {
        if backend.depth().await? == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(backend.depth().await?, 0);
    let apps = ds
        .mailbox(&bob.dev, 0, 0)
        .await?
        .into_iter()
        .filter(|e| e.kind == EventKind::Application)
        .count();
    assert_eq!(apps, 1);

    // A user with no device in the conversation: failed, with the reason.
    let other = bank
        .group()?
        .encrypt_application_message(b"not for carol", vec![])?
        .to_bytes()?;
    let resp = gw
        .http
        .post(gw.url("/v1/messages"))
        .bearer_auth(&acme.api_key)
        .header("Idempotency-Key", "stmt-2")
        .json(&json!({
            "to": carol.user,
            "class": "sensitive",
            "body": {"mls": {"conversation": gid, "message": sealgate_proto::b64::encode(&other)}}
        }))
        .send()
        .await?;
    assert_eq!(resp.status(), 202);
    let id2 = resp.json::<serde_json::Value>().await?["message_id"]
        .as_str()
        .context("id")?
        .to_owned();
    let v = wait(&gw, &acme.api_key, &id2, MessageStatus::Failed).await?;
    assert_eq!(v.reason.as_deref(), Some("recipient_not_member"));

    // Another tenant cannot send into this conversation.
    let globex = gw.create_tenant("globex").await?;
    let resp = gw
        .http
        .post(gw.url("/v1/messages"))
        .bearer_auth(&globex.api_key)
        .header("Idempotency-Key", "x")
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status(), 404);
    Ok(())
}
