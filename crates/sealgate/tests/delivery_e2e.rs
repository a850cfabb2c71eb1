//! The business send pipeline end to end through the real binaries: `sealgate serve` and
//! `sealgate-carrier-sim`, talking HTTP on loopback.
//!
//! 1. Carrier faults: with 20 % 5xx, 10 % 429 + Retry-After and some timeouts injected, every
//!    transient failure ends delivered, every permanent one ends failed with its reason, and no
//!    phone's inbox holds a message twice.
//! 2. Crash safety: while a few thousand messages are being sent, the gateway is killed with
//!    SIGKILL several times and restarted; afterwards every message that got a 202 is in exactly
//!    one inbox exactly once, and none that never got one was delivered.
//! 3. `sealgate-load --batch`: batches from the shell, sent twice with the same keys, reach
//!    the carrier once each; the access log ties request id to message id, without the body.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bin, free_port, spawn_ready};
use serde_json::{Value, json};

const AGENT_TOKEN: &str = "sim-agent-token-e2e";
const WEBHOOK_SECRET: &str = "sim-webhook-secret-e2e";

struct Net {
    dir: tempfile::TempDir,
    sim: Child,
    sim_url: String,
    gateway: Option<Child>,
    gateway_port: u16,
    api_key: String,
    http: reqwest::Client,
}

impl Net {
    fn start(sim_toml: &str) -> Net {
        let dir = tempfile::tempdir().expect("tempdir");
        let gateway_port = free_port();
        let sim_config = dir.path().join("sim.toml");
        std::fs::write(&sim_config, sim_toml).expect("sim.toml");
        let mut cmd = Command::new(bin("sealgate-carrier-sim"));
        cmd.args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&sim_config)
            .args([
                "--webhook-url",
                &format!("http://127.0.0.1:{gateway_port}/v1/webhooks/carrier"),
                "--webhook-secret",
                WEBHOOK_SECRET,
                "--agent-token",
                AGENT_TOKEN,
                "--seed",
                "7",
            ]);
        let (sim, sim_url) = spawn_ready(cmd, &dir.path().join("sim.log"));

        let config = format!(
            r#"
[delivery]
workers = 4
lease_secs = 3
poll_ms = 20
retry_base_ms = 50
retry_cap_ms = 400

[transports.rcs]
base_url = "{sim_url}"
agent_token = "{AGENT_TOKEN}"
webhook_secret = "{WEBHOOK_SECRET}"
timeout_ms = 500
concurrency = 16

[transports.sms]
base_url = "{sim_url}"
token = "{AGENT_TOKEN}"
from = "SEALGATE"
timeout_ms = 500
concurrency = 16

[transports.webhook]
timeout_ms = 1000
"#
        );
        std::fs::write(dir.path().join("sealgate.toml"), config).expect("sealgate.toml");
        let mut net = Net {
            dir,
            sim,
            sim_url,
            gateway: None,
            gateway_port,
            api_key: String::new(),
            http: reqwest::Client::new(),
        };
        net.start_gateway();
        let out = Command::new(bin("sealgate"))
            .args(["admin", "--data"])
            .arg(net.data())
            .args(["tenant", "create", "bank"])
            .output()
            .expect("admin");
        assert!(out.status.success());
        let tenant: Value = serde_json::from_slice(&out.stdout).expect("json");
        net.api_key = tenant["api_key"].as_str().expect("api_key").to_owned();
        net
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }

    fn start_gateway(&mut self) {
        let mut cmd = Command::new(bin("sealgate"));
        cmd.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", self.gateway_port),
        ])
        .arg("--data")
        .arg(self.data())
        .arg("--config")
        .arg(self.dir.path().join("sealgate.toml"));
        let (child, _) = spawn_ready(cmd, &self.dir.path().join("gateway.log"));
        self.gateway = Some(child);
    }

    fn kill_gateway(&mut self) {
        if let Some(mut child) = self.gateway.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("wait");
        }
    }

    async fn send(&self, key: &str, body: &Value) -> Result<Value, String> {
        let resp = self
            .http
            .post(format!("{}/v1/messages", self.url()))
            .bearer_auth(&self.api_key)
            .header("Idempotency-Key", key)
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("transport: {e}"))?;
        let status = resp.status();
        let value: Value = resp.json().await.map_err(|e| format!("body: {e}"))?;
        if status.as_u16() == 202 {
            Ok(value)
        } else {
            Err(format!("{status}: {value}"))
        }
    }

    async fn status(&self, id: &str) -> Value {
        self.http
            .get(format!("{}/v1/messages/{id}", self.url()))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json")
    }

    async fn inbox(&self, phone: &str) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/control/inbox/{phone}", self.sim_url))
            .send()
            .await
            .expect("inbox")
            .json()
            .await
            .expect("json");
        v["messages"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.kill_gateway();
        let _ = self.sim.kill();
        let _ = self.sim.wait();
    }
}

fn final_status(s: &str) -> bool {
    matches!(s, "delivered" | "read" | "failed" | "expired")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_faults_end_delivered_or_failed_with_reason_and_never_twice() {
    let net = Net::start(
        r#"
[default]
sms = true
[prefixes."+1555100"]
rcs = true
[prefixes."+1555200"]
rcs = false
sms = true
[prefixes."+1555300"]
rcs = false
sms = false
[faults]
error_5xx = 0.2
rate_429 = 0.1
retry_after_secs = 1
timeout = 0.03
timeout_after_accept = 0.03
timeout_ms = 1500
[receipts]
delivered_after_ms = 10
read_after_ms = 20
"#,
    );
    // (recipient, channel, expected final status, expected reason)
    let mut plan = Vec::new();
    for i in 0..15 {
        plan.push((format!("+155510000{i:02}"), "rcs", "read", None));
        plan.push((format!("+155520000{i:02}"), "sms", "delivered", None));
    }
    for i in 0..5 {
        plan.push((
            format!("+155520001{i:02}"),
            "rcs",
            "failed",
            Some("rcs_not_capable"),
        ));
        plan.push((
            format!("+155530000{i:02}"),
            "sms",
            "failed",
            Some("sms_unreachable"),
        ));
    }
    let mut ids = Vec::new();
    for (n, (to, channel, _, _)) in plan.iter().enumerate() {
        // Plain text over RCS is a marketing route under the default policy.
        let class = if *channel == "rcs" {
            "marketing"
        } else {
            "transactional"
        };
        let body = json!({"to": to, "class": class,
                          "body": {"text": format!("code {n}"), "channel": channel}});
        let accepted = net.send(&format!("fault-{n}"), &body).await.expect("202");
        ids.push(accepted["message_id"].as_str().expect("id").to_owned());
    }

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut finals = BTreeMap::new();
    while finals.len() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "not every message reached a final state: {} of {}",
            finals.len(),
            ids.len()
        );
        for id in &ids {
            if finals.contains_key(id) {
                continue;
            }
            let s = net.status(id).await;
            let status = s["status"].as_str().unwrap_or_default().to_owned();
            // A message waits for READ before counting as final on RCS.
            let done = final_status(&status) && !(status == "delivered" && s["channel"] == "rcs");
            if done {
                finals.insert(id.clone(), s);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for ((to, _, want, reason), id) in plan.iter().zip(&ids) {
        let s = &finals[id];
        assert_eq!(s["status"], *want, "{to}: {s}");
        if let Some(reason) = reason {
            assert_eq!(s["reason"], *reason, "{to}: {s}");
            let failed = s["history"]
                .as_array()
                .expect("history")
                .iter()
                .filter(|h| h["status"] == "failed")
                .count();
            assert_eq!(failed, 1, "{to}: {s}");
        }
    }
    // Each phone holds exactly the one message sent to it, even though some sends timed out
    // after the carrier had stored them (and were retried).
    for ((to, _, want, _), id) in plan.iter().zip(&ids) {
        let inbox = net.inbox(to).await;
        let expected = usize::from(*want != "failed");
        assert_eq!(inbox.len(), expected, "{to}: {inbox:?}");
        if expected == 1 {
            assert_eq!(inbox[0]["message_id"], id.as_str());
        }
    }
    let stats: Value = net
        .http
        .get(format!("{}/control/stats", net.sim_url))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    let faults = &stats["faults"];
    assert!(
        faults["5xx"].as_u64().unwrap_or(0) > 0 && faults["429"].as_u64().unwrap_or(0) > 0,
        "the faults were really injected: {stats}"
    );
    // A permanent refusal is final: the carrier refused each such message exactly once (a
    // retry after it would show up here as a second refusal).
    let rejected = &stats["rejected"];
    assert_eq!(rejected["not_rcs"], 5, "{stats}");
    assert_eq!(
        rejected["not_sms"].as_u64().unwrap_or(0) + rejected["unreachable"].as_u64().unwrap_or(0),
        5,
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_send_run_loses_nothing_and_duplicates_nothing() {
    const MESSAGES: usize = 2000;
    const PHONES: usize = 20;
    let mut net = Net::start("[default]\nsms = true\n");
    let net_url = net.url();
    let api_key = net.api_key.clone();

    // Senders: each message is retried with its own Idempotency-Key until it gets a 202 —
    // through the kills — exactly as a careful tenant backend would.
    let accepted = Arc::new(std::sync::Mutex::new(BTreeMap::<usize, String>::new()));
    let mut senders = Vec::new();
    for worker in 0..8 {
        let (accepted, url, api_key) = (accepted.clone(), net_url.clone(), api_key.clone());
        senders.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in (worker..MESSAGES).step_by(8) {
                let body = json!({"to": format!("+1555400{:04}", n % PHONES), "class": "transactional",
                                  "body": {"text": format!("m{n}"), "channel": "sms"}});
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    assert!(Instant::now() < deadline, "message {n} never accepted");
                    let sent = http
                        .post(format!("{url}/v1/messages"))
                        .bearer_auth(&api_key)
                        .header("Idempotency-Key", format!("crash-{n}"))
                        .json(&body)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    match sent {
                        Ok(resp) if resp.status().as_u16() == 202 => {
                            if let Ok(v) = resp.json::<Value>().await {
                                let id = v["message_id"].as_str().expect("id").to_owned();
                                let mut acc = accepted.lock().expect("lock");
                                if let Some(prev) = acc.insert(n, id.clone()) {
                                    assert_eq!(prev, id, "one key, one message id");
                                }
                                break;
                            }
                        }
                        Ok(resp) if resp.status().is_client_error() => {
                            panic!("message {n} refused: {}", resp.status())
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        }));
    }

    // Kill the gateway three times while the run is in progress.
    for _ in 0..3 {
        let target = accepted.lock().expect("lock").len() + MESSAGES / 5;
        let wait_until = Instant::now() + Duration::from_secs(60);
        while accepted.lock().expect("lock").len() < target.min(MESSAGES - 1)
            && Instant::now() < wait_until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        net.kill_gateway();
        net.start_gateway();
    }
    for s in senders {
        s.await.expect("sender");
    }
    let accepted = accepted.lock().expect("lock").clone();
    assert_eq!(accepted.len(), MESSAGES);

    // Wait until every accepted message is in an inbox, then check nothing is there twice and
    // nothing is there that was not accepted.
    let want: BTreeSet<String> = accepted.values().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut seen = Vec::new();
        for p in 0..PHONES {
            for m in net.inbox(&format!("+1555400{p:04}")).await {
                seen.push(m["message_id"].as_str().expect("id").to_owned());
            }
        }
        let unique: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "a phone received a message twice");
        assert!(
            unique.is_subset(&want),
            "a message nobody accepted was delivered"
        );
        if unique == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted messages delivered",
            unique.len(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `sealgate-load --batch` sends from the shell through `POST /v1/messages/batch`; running
/// it again with the same keys is answered from the stored messages, and the carrier gets
/// each message exactly once. Before it, one single send checks the access log: one line ties
/// the request id to the message id, and no line holds the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealgate_load_sends_batches_from_the_shell_exactly_once() {
    const MESSAGES: usize = 300;
    const ALL: usize = MESSAGES + 1;
    let phones = ["+15554100001", "+15554100002", "+15554100003"];
    let net = Net::start("[default]\nsms = true\n");
    let load = || {
        let out = Command::new(bin("sealgate-load"))
            .args(["--url", &net.url(), "--api-key", &net.api_key, "--to"])
            .arg(phones.join(","))
            .args(["--count", &MESSAGES.to_string(), "--batch", "64"])
            .args([
                "--concurrency",
                "3",
                "--size",
                "200",
                "--key-prefix",
                "shell",
            ])
            .output()
            .expect("sealgate-load");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
        report
    };
    // One single send first: its one access-log line ties the request (correlation) id to
    // the message id, and the body is in no log line.
    let body = "log canary 5e1d: must stay out of the log";
    let resp = net
        .http
        .post(format!("{}/v1/messages", net.url()))
        .bearer_auth(&net.api_key)
        .header("Idempotency-Key", "log-1")
        .header("X-Request-Id", "corr-log-5e1d")
        .json(&json!({"to": phones[0], "class": "transactional",
                      "body": {"text": body, "channel": "sms"}}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.expect("json")["message_id"]
        .as_str()
        .expect("id")
        .to_owned();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = std::fs::read_to_string(net.dir.path().join("gateway.log")).expect("log");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("corr-log-5e1d"))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains(&id)),
        "no log line with both ids: {lines:?}"
    );
    assert!(!log.contains("log canary 5e1d"), "a body reached the log");

    let first = load();
    assert_eq!(first["accepted"], MESSAGES);
    assert_eq!(first["errors"], 0);
    assert_eq!(first["messages_per_request"], 64);
    // The same keys again: every message answered from the store, none stored twice.
    let again = load();
    assert_eq!(again["accepted"], MESSAGES);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = Vec::new();
        for p in phones {
            for m in net.inbox(p).await {
                seen.push(m["message_id"].as_str().expect("id").to_owned());
            }
        }
        let unique: BTreeSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "a phone received a message twice");
        assert!(seen.len() <= ALL, "more deliveries than messages");
        if seen.len() == ALL {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {ALL} delivered",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Settle: nothing more arrives late.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut total = 0;
    for p in phones {
        total += net.inbox(p).await.len();
    }
    assert_eq!(total, ALL);
}
