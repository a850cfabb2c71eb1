//! The harness: an in-process gateway, a tenant, and devices enrolled in it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use sealgate_client::{ClientOptions, Event, SealClient, TextMessage};
use sealgate_proto::api::CreateEnrollmentRequest;
use sealgate_server::{Config, Gateway};
use tempfile::TempDir;
use tokio::sync::oneshot;

pub struct Harness {
    pub dir: TempDir,
    pub url: String,
    pub gateway: Gateway,
    pub tenant_id: String,
    _stop: oneshot::Sender<()>,
}

impl Harness {
    pub async fn start() -> Result<Self> {
        // Server logs go to the test's captured output, so a failure shows the gateway's side.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir()?;
        let gateway = Gateway::open(Config::for_data_dir(&dir.path().join("server"))).await?;
        let tenant = gateway.create_tenant("acme").await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = gateway.clone();
        tokio::spawn(async move {
            let _ = server
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            dir,
            url,
            gateway,
            tenant_id: tenant.tenant_id,
            _stop: stop,
        })
    }

    /// Where a device's home lives (`label` distinguishes devices of one user).
    pub fn home(&self, label: &str) -> PathBuf {
        self.dir.path().join("homes").join(label)
    }

    pub async fn enroll(&self, user: &str) -> Result<String> {
        let e = self
            .gateway
            .create_enrollment(
                &self.tenant_id,
                CreateEnrollmentRequest {
                    user: user.into(),
                    phone: None,
                    ttl_secs: None,
                },
            )
            .await?;
        Ok(e.token)
    }

    /// A new device of `user` in home `label`.
    pub async fn device(&self, user: &str, label: &str) -> Result<SealClient> {
        let token = self.enroll(user).await?;
        Ok(SealClient::init(
            &self.home(label),
            &self.url,
            &token,
            ClientOptions::default(),
        )
        .await?)
    }
}

/// Receive until `n` events arrived (or a few empty long-polls passed).
pub async fn recv_n(client: &mut SealClient, n: usize) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    let mut idle = 0;
    while out.len() < n && idle < 3 {
        let batch = client.receive(Some(Duration::from_secs(1))).await?;
        if batch.is_empty() {
            idle += 1;
        }
        out.extend(batch);
    }
    Ok(out)
}

/// Everything pending right now (no waiting).
pub async fn drain(client: &mut SealClient) -> Result<Vec<Event>> {
    Ok(client.receive(None).await?)
}

pub fn texts(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(TextMessage { from, text, .. }) => Some((from.clone(), text.clone())),
            _ => None,
        })
        .collect()
}

pub fn members(client: &SealClient, conversation: &str) -> Result<(BTreeSet<String>, u64)> {
    let info = client
        .conversations()?
        .into_iter()
        .find(|c| c.conversation == conversation)
        .ok_or_else(|| anyhow::anyhow!("{conversation} not listed"))?;
    Ok((info.members.into_iter().collect(), info.epoch))
}

pub fn set(users: &[&str]) -> BTreeSet<String> {
    users.iter().map(|u| u.to_string()).collect()
}
