//! The DS keeps no group state in memory: a restarted gateway continues every group.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use reqwest::StatusCode;
use sealgate_proto::DeviceIdentity;
use sealgate_proto::api::{
    CreateEnrollmentRequest, RegisterDeviceRequest, RegisterDeviceResponse, SubmitCommitResponse,
};
use sealgate_server::{Config, Gateway};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::harness::{Ds, peer};
use crate::support::{TestDevice, new_signing_key};

/// A gateway on a data folder the test owns, so it can be stopped and opened again.
struct Server {
    base: String,
    gateway: Gateway,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(dir: &Path) -> Result<Self> {
        let gateway = Gateway::open(Config::for_data_dir(dir)).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, rx) = oneshot::channel::<()>();
        let serving = gateway.clone();
        let task = tokio::spawn(async move {
            let _ = serving
                .serve(listener, async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Self {
            base,
            gateway,
            stop,
            task,
        })
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await?;
        drop(self.gateway);
        Ok(())
    }

    async fn device(
        &self,
        http: &reqwest::Client,
        tenant_id: &str,
        user: &str,
    ) -> Result<TestDevice> {
        let enrollment = self
            .gateway
            .create_enrollment(
                tenant_id,
                CreateEnrollmentRequest {
                    user: user.into(),
                    phone: None,
                    ttl_secs: None,
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("enroll: {}", e.problem))?;
        let (secret_key, public_key) = new_signing_key()?;
        let resp = http
            .post(format!("{}/v1/devices", self.base))
            .json(&RegisterDeviceRequest {
                enrollment_token: enrollment.token,
                signature_key: public_key.as_bytes().to_vec(),
                name: None,
            })
            .send()
            .await?;
        ensure!(
            resp.status() == StatusCode::CREATED,
            "register: {}",
            resp.status()
        );
        let r: RegisterDeviceResponse = resp.json().await?;
        Ok(TestDevice {
            identity: DeviceIdentity::new(&r.tenant_id, &r.user, &r.device_id)?,
            tenant_id: r.tenant_id,
            user: r.user,
            device_id: r.device_id,
            token: r.device_token,
            secret_key,
            public_key,
        })
    }
}

#[tokio::test]
async fn groups_and_mailboxes_survive_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let http = reqwest::Client::new();
    let server = Server::start(dir.path()).await?;
    let tenant = server
        .gateway
        .create_tenant("acme")
        .await
        .map_err(|e| anyhow::anyhow!("tenant: {}", e.problem))?;
    let mut alice = peer(server.device(&http, &tenant.tenant_id, "alice").await?);
    let mut bob = peer(server.device(&http, &tenant.tenant_id, "bob").await?);
    let mut carol = peer(server.device(&http, &tenant.tenant_id, "carol").await?);
    let gid = {
        let ds = Ds::new(&http, &server.base);
        let gid = ds.create_group(&mut alice).await?.group_id;
        ds.add(&mut alice, &mut bob).await?;
        ds.send(&mut alice, b"before restart").await?;
        gid
    };
    server.stop().await?;

    let server = Server::start(dir.path()).await?;
    let ds = Ds::new(&http, &server.base);
    // The undelivered message is still there, the group continues at its epoch.
    let events = ds.mailbox(&bob.dev, 0, 0).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(ds.group(&alice.dev, &gid).await?.epoch, 1);
    ds.ack(&bob.dev, events[0].seq).await?;

    // A commit built on the pre-restart state is applied to the reloaded snapshot.
    assert_eq!(ds.add(&mut alice, &mut carol).await?, 2);
    ds.catch_up(&mut bob).await?;
    assert_eq!(bob.group()?.current_epoch(), 2);
    let c = bob.group()?.commit(vec![])?.commit_message.to_bytes()?;
    bob.group()?.apply_pending_commit()?;
    let resp = ds.submit(&bob.dev, &gid, c.clone(), None, None).await?;
    assert_eq!(resp.json::<SubmitCommitResponse>().await?.epoch, 3);
    // The replay after a restart is still stale.
    server.stop().await?;
    let server = Server::start(dir.path()).await?;
    let ds = Ds::new(&http, &server.base);
    let resp = ds.submit(&bob.dev, &gid, c, None, None).await?;
    assert_eq!(resp.status().as_u16(), 409);
    let g = ds.group(&carol.dev, &gid).await?;
    assert_eq!(g.epoch, 3);
    assert_eq!(g.members.len(), 3);
    ds.catch_up(&mut alice).await?;
    ds.catch_up(&mut carol).await?;
    assert_eq!(alice.group()?.current_epoch(), 3);
    assert_eq!(carol.group()?.current_epoch(), 3);
    let _ = carol.group().context("carol joined")?;
    server.stop().await?;
    Ok(())
}
