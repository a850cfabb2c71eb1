//! A gateway wired to an in-process carrier simulator (RCS, SMS and push pointing at it, its
//! receipts pointing back at the gateway), a tenant, and typed calls to the send API.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use reqwest::StatusCode;
use sealgate_carrier_sim::{FaultConfig, Rule, Sim, SimConfig};
use sealgate_proto::Problem;
use sealgate_proto::send::{MessageStatus, MessageView, SendAccepted};
use sealgate_server::config::{PushConfig, RcsConfig, SmsConfig};
use sealgate_server::{Config, Gateway};
use serde_json::{Value, json};

pub const AGENT_TOKEN: &str = "test-agent-token";
pub const CARRIER_SECRET: &str = "test-carrier-webhook-secret";
/// RCS with carrier E2EE.
pub const RCS_E2EE: &str = "+15551000001";
/// RCS without E2EE.
pub const RCS_PLAIN: &str = "+15553000001";
/// SMS only (the simulator's default profile).
pub const SMS_ONLY: &str = "+15552000001";
/// Not reachable at all.
pub const UNREACHABLE: &str = "+15559990000";

/// The simulator's phone network: `+1555100…` RCS with E2EE, `+1555300…` RCS without,
/// everything else SMS only, [`UNREACHABLE`] nothing.
pub fn sim_config(faults: FaultConfig) -> SimConfig {
    let mut c = SimConfig {
        agent_token: AGENT_TOKEN.into(),
        webhook_secret: Some(CARRIER_SECRET.into()),
        seed: Some(42),
        faults,
        ..SimConfig::default()
    };
    c.prefixes.insert(
        "+1555100".into(),
        Rule {
            rcs: Some(true),
            e2ee: Some(true),
            ..Rule::default()
        },
    );
    c.prefixes.insert(
        "+1555300".into(),
        Rule {
            rcs: Some(true),
            e2ee: Some(false),
            ..Rule::default()
        },
    );
    c.numbers.insert(
        UNREACHABLE.into(),
        Rule {
            reachable: Some(false),
            ..Rule::default()
        },
    );
    c.receipts.delivered_after_ms = 5;
    c.receipts.read_after_ms = 10;
    c
}

/// A running gateway (+ simulator); both stop when dropped.
pub struct Rig {
    pub base: String,
    pub http: reqwest::Client,
    pub operator_token: String,
    pub gateway: Gateway,
    pub sim: Option<Sim>,
    pub api_key: String,
    pub tenant_id: String,
    pub data_dir: std::path::PathBuf,
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

/// Fast retries for tests: 20 ms base, 300 ms cap, 20 ms polls.
pub fn fast(c: &mut Config) {
    c.delivery.retry_base_ms = 20;
    c.delivery.retry_cap_ms = 300;
    c.delivery.poll_ms = 20;
}

impl Rig {
    /// A gateway with `sim` (receipts sent unless `sim.receipts` say otherwise) and
    /// `tweak` applied to the gateway config.
    pub async fn start(sim: Option<SimConfig>, tweak: impl FnOnce(&mut Config)) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let gw_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", gw_listener.local_addr()?);
        let mut stop = Vec::new();
        let mut config = Config::for_data_dir(dir.path());
        fast(&mut config);
        let sim = match sim {
            Some(mut sc) => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let sim_base = format!("http://{}", listener.local_addr()?);
                if sc.webhook_secret.is_some() {
                    sc.webhook_url = Some(format!("{base}/v1/webhooks/carrier"));
                }
                let sim = Sim::new(sc)?;
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                stop.push(tx);
                let serving = sim.clone();
                tokio::spawn(async move {
                    let _ = sealgate_carrier_sim::serve(serving, listener, async move {
                        let _ = rx.await;
                    })
                    .await;
                });
                config.transports.rcs = Some(rcs_config(&sim_base));
                config.transports.sms = Some(sms_config(&sim_base));
                config.transports.push = Some(push_config(&sim_base));
                Some(sim)
            }
            None => None,
        };
        tweak(&mut config);
        let gateway = Gateway::open(config).await?;
        let operator_token = std::fs::read_to_string(gateway.operator_token_path())?
            .trim()
            .to_owned();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stop.push(tx);
        let serving = gateway.clone();
        tokio::spawn(async move {
            let _ = serving
                .serve(gw_listener, async move {
                    let _ = rx.await;
                })
                .await;
        });
        let tenant = gateway.create_tenant("acme").await?;
        Ok(Self {
            base,
            http: reqwest::Client::new(),
            operator_token,
            gateway,
            sim,
            api_key: tenant.api_key,
            tenant_id: tenant.tenant_id,
            data_dir: dir.path().to_path_buf(),
            _stop: stop,
            _dir: dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn sim(&self) -> &Sim {
        self.sim.as_ref().expect("started with a simulator")
    }

    /// `POST /v1/messages` with `key` (none if `None`).
    pub async fn send(&self, key: Option<&str>, body: &Value) -> Result<reqwest::Response> {
        let mut req = self
            .http
            .post(self.url("/v1/messages"))
            .bearer_auth(&self.api_key)
            .json(body);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        Ok(req.send().await?)
    }

    /// Send and expect 202; the message id.
    pub async fn send_ok(&self, key: &str, body: &Value) -> Result<String> {
        let resp = self.send(Some(key), body).await?;
        let status = resp.status();
        let text = resp.text().await?;
        ensure!(status == StatusCode::ACCEPTED, "send: {status} {text}");
        let a: SendAccepted = serde_json::from_str(&text)?;
        ensure!(a.status == MessageStatus::Queued);
        Ok(a.message_id)
    }

    pub async fn status(&self, id: &str) -> Result<MessageView> {
        let resp = self
            .http
            .get(self.url(&format!("/v1/messages/{id}")))
            .bearer_auth(&self.api_key)
            .send()
            .await?;
        ensure!(resp.status() == StatusCode::OK, "status: {}", resp.status());
        Ok(resp.json().await?)
    }

    /// Poll until `id`'s status is one of `want`; fail after `limit`.
    pub async fn wait_for(
        &self,
        id: &str,
        want: &[MessageStatus],
        limit: Duration,
    ) -> Result<MessageView> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let v = self.status(id).await?;
            if want.contains(&v.status) {
                return Ok(v);
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "message {id} stuck at {:?} ({:?}), wanted {want:?}",
                v.status,
                v.reason
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn metrics(&self) -> Result<String> {
        Ok(self
            .http
            .get(self.url("/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }

    /// A second connection to the gateway's database, for assertions and fault injection.
    pub async fn db(&self) -> Result<sqlx::SqlitePool> {
        let path = self.data_dir.join(sealgate_server::DATABASE_FILE);
        Ok(sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await?)
    }

    /// Stored messages, those with a send job, and those with an idempotency key (on the
    /// embedded store all three are one row: message, job and key are stored together).
    pub async fn stored(&self) -> Result<(i64, i64, i64)> {
        let db = self.db().await?;
        let counts =
            sqlx::query_as("SELECT COUNT(*), COUNT(job_due), COUNT(idem_key) FROM send_messages")
                .fetch_one(&db)
                .await?;
        db.close().await;
        Ok(counts)
    }

    pub async fn count(&self, sql: &str) -> Result<i64> {
        let db = self.db().await?;
        let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&db).await?;
        db.close().await;
        Ok(n)
    }
}

pub fn rcs_config(base: &str) -> RcsConfig {
    toml::from_str(&format!(
        "base_url = \"{base}\"\nagent_token = \"{AGENT_TOKEN}\"\n\
         webhook_secret = \"{CARRIER_SECRET}\"\ntimeout_ms = 400\n"
    ))
    .expect("rcs config")
}

pub fn sms_config(base: &str) -> SmsConfig {
    toml::from_str(&format!(
        "base_url = \"{base}\"\ntoken = \"{AGENT_TOKEN}\"\nfrom = \"Sealgate\"\ntimeout_ms = 400\n"
    ))
    .expect("sms config")
}

pub fn push_config(base: &str) -> PushConfig {
    toml::from_str(&format!(
        "base_url = \"{base}\"\ntoken = \"{AGENT_TOKEN}\"\ntimeout_ms = 400\n"
    ))
    .expect("push config")
}

/// A plaintext fallback body.
pub fn text(to: &str, text: &str, channel: &str) -> Value {
    json!({"to": to, "class": "transactional", "body": {"text": text, "channel": channel}})
}

/// An error response's status and problem, checking the media type.
pub async fn problem(resp: reqwest::Response) -> Result<(u16, Problem)> {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(
        ct == "application/problem+json",
        "{status}: content-type {ct}"
    );
    Ok((status, resp.json().await.context("problem body")?))
}
