//! Capability-aware send with fallback, through the real binaries: `sealgate serve`, the
//! `seal` CLI (`seal send --to +1555… --class …`) and `sealgate-carrier-sim`.
//!
//! 1. The matrix: a recipient with an E2EE device / RCS without E2EE / SMS only / unreachable,
//!    times each message class under the default policy; the route `seal` reports, the
//!    message's final state, and what the carrier inbox received — never the plaintext of a
//!    `sensitive` message (a canary), only its secure link.
//! 2. Enforcement: a plain SMS for `sensitive` is refused with `policy_forbids_route`, and
//!    `/metrics` counts routes with reasons.
//! 3. `queue_until_e2ee`: a held message goes E2EE once the recipient registers a device, and
//!    runs the next step after its TTL.
//! 4. The browser: headless Chromium opens a secure link from the carrier inbox, gets the
//!    one-time code from the SMS inbox, sees the decrypted text, then sees the link refused
//!    (skipped, with the reason printed, when node, Chromium or the npm packages are missing).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{bin, free_port, spawn_ready};
use serde_json::{Value, json};

const AGENT_TOKEN: &str = "sim-agent-token-fallback";
const WEBHOOK_SECRET: &str = "sim-webhook-secret-fallback";
const E2EE: &str = "+15557000001";
const RCS_ONLY: &str = "+15551000002";
const SMS_ONLY: &str = "+15552000003";
const UNREACHABLE: &str = "+15553000004";

struct Net {
    dir: tempfile::TempDir,
    sim: Child,
    sim_url: String,
    gateway: Child,
    url: String,
    api_key: String,
    http: reqwest::Client,
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in [&mut self.gateway, &mut self.sim] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Net {
    fn start() -> Net {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let sim_config = dir.path().join("sim.toml");
        std::fs::write(
            &sim_config,
            format!(
                r#"
[default]
sms = true
[numbers."{E2EE}"]
rcs = true
e2ee = true
[numbers."{RCS_ONLY}"]
rcs = true
[numbers."{UNREACHABLE}"]
reachable = false
[receipts]
delivered_after_ms = 10
read_after_ms = 20
"#
            ),
        )
        .expect("sim.toml");
        let mut cmd = Command::new(bin("sealgate-carrier-sim"));
        cmd.args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&sim_config)
            .args([
                "--webhook-url",
                &format!("http://127.0.0.1:{port}/v1/webhooks/carrier"),
                "--webhook-secret",
                WEBHOOK_SECRET,
                "--agent-token",
                AGENT_TOKEN,
                "--seed",
                "11",
            ]);
        let (sim, sim_url) = spawn_ready(cmd, &dir.path().join("sim.log"));
        let config = format!(
            r#"
[delivery]
workers = 2
poll_ms = 20
retry_base_ms = 50
retry_cap_ms = 200

[capabilities]
ttl_secs = 30

[transports.rcs]
base_url = "{sim_url}"
agent_token = "{AGENT_TOKEN}"
webhook_secret = "{WEBHOOK_SECRET}"
timeout_ms = 2000

[transports.sms]
base_url = "{sim_url}"
token = "{AGENT_TOKEN}"
from = "BANK"
timeout_ms = 2000
"#
        );
        std::fs::write(dir.path().join("sealgate.toml"), config).expect("sealgate.toml");
        let mut cmd = Command::new(bin("sealgate"));
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data")
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(dir.path().join("sealgate.toml"))
            .env("SEALGATE_LOG", "debug");
        let (gateway, url) = spawn_ready(cmd, &dir.path().join("gateway.log"));
        let mut net = Net {
            dir,
            sim,
            sim_url,
            gateway,
            url,
            api_key: String::new(),
            http: reqwest::Client::new(),
        };
        let tenant = net.admin(&["tenant", "create", "bank"]);
        net.api_key = tenant["api_key"].as_str().expect("api_key").to_owned();
        net
    }

    fn admin(&self, args: &[&str]) -> Value {
        let out = Command::new(bin("sealgate"))
            .args(["admin", "--data"])
            .arg(self.dir.path().join("data"))
            .args(args)
            .output()
            .expect("admin");
        assert!(
            out.status.success(),
            "admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("admin json")
    }

    /// Enroll `user` (optionally with a phone) and `seal init` a device for them.
    fn device(&self, user: &str, phone: Option<&str>) -> PathBuf {
        let mut args = vec!["enroll", "--tenant", "bank", "--user", user];
        if let Some(p) = phone {
            args.extend(["--phone", p]);
        }
        let enrollment = self.admin(&args);
        let home = self.dir.path().join(format!("home-{user}"));
        let token = enrollment["enrollment_token"]
            .as_str()
            .or_else(|| enrollment["token"].as_str())
            .unwrap_or_else(|| panic!("no token in {enrollment}"));
        let out = self.seal(&home, &["init", "--server", &self.url, "--token", token]);
        assert!(
            out.status.success(),
            "seal init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        home
    }

    fn seal(&self, home: &Path, args: &[&str]) -> std::process::Output {
        Command::new(bin("seal"))
            .arg("--home")
            .arg(home)
            .args(args)
            .env("SEAL_API_KEY", &self.api_key)
            .output()
            .expect("seal")
    }

    /// `seal send --to … --class … TEXT`: the outcome line.
    fn send(&self, home: &Path, to: &str, class: &str, text: &str) -> Value {
        let out = self.seal(home, &["send", "--to", to, "--class", class, text]);
        assert!(
            out.status.success(),
            "seal send {to} {class}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("outcome json")
    }

    async fn get(&self, url: &str) -> Value {
        self.http
            .get(url)
            .bearer_auth(&self.api_key)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }

    async fn inbox(&self, phone: &str) -> Vec<Value> {
        let v = self
            .get(&format!("{}/control/inbox/{phone}", self.sim_url))
            .await;
        v["messages"].as_array().cloned().unwrap_or_default()
    }

    /// Wait until a message reaches a final state; its status view.
    async fn settle(&self, message_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self
                .get(&format!("{}/v1/messages/{message_id}", self.url))
                .await;
            let s = v["status"].as_str().unwrap_or_default();
            if matches!(s, "sent" | "delivered" | "read" | "failed" | "expired")
                && (s != "sent" || v["channel"] == "inapp")
            {
                return v;
            }
            assert!(Instant::now() < deadline, "message never settled: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn canary(class: &str, to: &str) -> String {
    format!("CANARY-{class}-{}-plaintext", &to[1..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_matrix_enforcement_queue_and_browser() {
    let net = Net::start();
    let bank = net.device("bank-bot", None);
    let alice = net.device("alice", Some(E2EE));

    // --- 1. the matrix under the default policy -------------------------------------------
    let expected = [
        (E2EE, "sensitive", "e2ee"),
        (E2EE, "transactional", "e2ee"),
        (E2EE, "marketing", "e2ee"),
        (RCS_ONLY, "sensitive", "secure_link"),
        (RCS_ONLY, "transactional", "secure_link"),
        (RCS_ONLY, "marketing", "plain_rcs"),
        (SMS_ONLY, "sensitive", "secure_link"),
        (SMS_ONLY, "transactional", "secure_link"),
        (SMS_ONLY, "marketing", "plain_sms"),
        (UNREACHABLE, "sensitive", "secure_link"),
        (UNREACHABLE, "transactional", "secure_link"),
        (UNREACHABLE, "marketing", "plain_sms"),
    ];
    let mut sent = Vec::new();
    for (to, class, route) in expected {
        let outcome = net.send(&bank, to, class, &canary(class, to));
        assert_eq!(outcome["route"], route, "{to} {class}: {outcome}");
        if route != "e2ee" {
            assert_eq!(outcome["reason"], "no_e2ee_device", "{outcome}");
        }
        sent.push((to, class, route, outcome));
    }
    for (to, class, route, outcome) in &sent {
        let id = outcome["message_id"].as_str().expect("message id");
        let view = net.settle(id).await;
        let status = view["status"].as_str().unwrap_or_default();
        if *to == UNREACHABLE {
            assert_eq!(status, "failed", "{view}");
        } else {
            assert!(
                matches!(status, "sent" | "delivered" | "read"),
                "{to} {class}: {view}"
            );
        }
        if *route == "secure_link" {
            assert_eq!(outcome["channel"], "sms");
        }
    }
    for to in [E2EE, RCS_ONLY, SMS_ONLY, UNREACHABLE] {
        let inbox = net.inbox(to).await;
        let all = serde_json::to_string(&inbox).expect("json");
        assert!(
            !all.contains(&canary("sensitive", to)),
            "sensitive plaintext reached the carrier for {to}: {all}"
        );
        assert!(
            !all.contains(&canary("transactional", to)),
            "transactional plaintext went out instead of a secure link for {to}"
        );
        match to {
            E2EE => assert!(inbox.is_empty(), "E2EE traffic reached the carrier: {all}"),
            UNREACHABLE => assert!(inbox.is_empty(), "{all}"),
            _ => {
                let links = inbox
                    .iter()
                    .filter(|m| {
                        m["text"]
                            .as_str()
                            .is_some_and(|t| t.contains("/l/lk") && t.contains("#k="))
                    })
                    .count();
                assert_eq!(
                    links, 2,
                    "one link each for sensitive and transactional: {all}"
                );
                assert!(
                    all.contains(&canary("marketing", to)),
                    "marketing goes plain: {all}"
                );
                let channel = if to == RCS_ONLY { "rcs" } else { "sms" };
                assert!(
                    inbox.iter().any(|m| m["channel"] == channel
                        && m["text"].as_str() == Some(canary("marketing", to).as_str())),
                    "{all}"
                );
            }
        }
    }
    // Alice's device decrypts all three E2EE messages.
    let out = net.seal(&alice, &["recv", "--wait", "2"]);
    let events = String::from_utf8_lossy(&out.stdout);
    for class in ["sensitive", "transactional", "marketing"] {
        assert!(
            events.contains(&canary(class, E2EE)),
            "{class} missing in {events}"
        );
    }

    // --- 2. enforcement and metrics ---------------------------------------------------------
    let resp = net
        .http
        .post(format!("{}/v1/messages", net.url))
        .bearer_auth(&net.api_key)
        .header("Idempotency-Key", "forbidden-1")
        .json(&json!({"to": SMS_ONLY, "class": "sensitive", "body": {"text": "CANARY-forbidden"}}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 403);
    let problem: Value = resp.json().await.expect("problem");
    assert_eq!(problem["code"], "policy_forbids_route");
    assert!(
        !net.inbox(SMS_ONLY)
            .await
            .iter()
            .any(|m| m["text"] == "CANARY-forbidden")
    );
    let metrics = net
        .http
        .get(format!("{}/metrics", net.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for series in [
        r#"sealgate_route_total{class="sensitive",reason="none",route="e2ee"} 1"#,
        r#"sealgate_route_total{class="sensitive",reason="no_e2ee_device",route="secure_link"} 3"#,
        r#"sealgate_route_total{class="marketing",reason="no_e2ee_device",route="plain_sms"} 2"#,
        r#"sealgate_route_total{class="marketing",reason="no_e2ee_device",route="plain_rcs"} 1"#,
        r#"sealgate_route_refused_total{class="sensitive",route="plain_sms"} 1"#,
    ] {
        assert!(metrics.contains(series), "missing {series} in\n{metrics}");
    }
    let policy = net.admin(&["policy", "get", "--tenant", "bank"]);
    assert_eq!(policy["version"], 0);
    assert_eq!(policy["source"], "default");

    // --- 3. queue_until_e2ee ----------------------------------------------------------------
    let resp = net
        .http
        .put(format!("{}/v1/policy", net.url))
        .bearer_auth(&net.api_key)
        .header("content-type", "application/toml")
        .body(
            "[classes]\ntransactional = [\"e2ee\", { step = \"queue_until_e2ee\", ttl_secs = 2 }, \"plain_sms\"]\n",
        )
        .send()
        .await
        .expect("put policy");
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    // The gateway caches policies for up to 2 s per process; ours changed it, so it is fresh.
    let later = "+15554000005";
    let expires = "+15554000006";
    let q1 = net.send(
        &bank,
        later,
        "transactional",
        "held until carol has a device",
    );
    assert_eq!(q1["route"], "queued", "{q1}");
    let q2 = net.send(&bank, expires, "transactional", "held then plain");
    assert_eq!(q2["route"], "queued", "{q2}");
    let carol = net.device("carol", Some(later));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let out = net.seal(&bank, &["queued"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let by_hold = |h: &Value| {
        lines
            .iter()
            .find(|l| l["hold_id"] == h["hold_id"])
            .unwrap_or_else(|| panic!("no line for {h} in {lines:?}"))["outcome"]
            .clone()
    };
    assert_eq!(by_hold(&q1)["route"], "e2ee");
    let expired = by_hold(&q2);
    assert_eq!(expired["route"], "plain_sms");
    assert_eq!(expired["reason"], "queue_expired");
    assert_eq!(lines.last().expect("summary")["waiting"], json!([]));
    let out = net.seal(&carol, &["recv", "--wait", "2"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("held until carol has a device"));
    assert!(
        net.inbox(later).await.is_empty(),
        "the held message went E2EE only"
    );

    // --- 4. the browser ---------------------------------------------------------------------
    let link_text = net
        .inbox(SMS_ONLY)
        .await
        .into_iter()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .find(|t| t.contains("/l/lk"))
        .expect("a secure link in the SMS inbox");
    let url = link_text
        .split_whitespace()
        .find(|w| w.contains("/l/lk"))
        .expect("url")
        .to_owned();
    browser_opens_link_once(&net, &url, SMS_ONLY).await;

    // Nothing the gateway keeps holds the sensitive plaintext.
    let mut leaked = Vec::new();
    for entry in walk(&net.dir.path().join("data")) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        for to in [RCS_ONLY, SMS_ONLY, E2EE] {
            if memchr::memmem::find(&bytes, canary("sensitive", to).as_bytes()).is_some() {
                leaked.push(entry.display().to_string());
            }
        }
    }
    let log = std::fs::read_to_string(net.dir.path().join("gateway.log")).unwrap_or_default();
    assert!(
        !log.contains("CANARY-sensitive"),
        "plaintext in the gateway log"
    );
    assert!(!log.contains("#k="), "a link key in the gateway log");
    assert!(
        leaked.is_empty(),
        "sensitive plaintext stored in {leaked:?}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Run `tests/browser/secure_link.mjs` in headless Chromium, or say why it cannot run.
async fn browser_opens_link_once(net: &Net, url: &str, phone: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser");
    let chromium =
        std::env::var("SEALGATE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing = if !node_ok {
        Some("`node` is not installed".to_owned())
    } else if !Path::new(&chromium).exists() {
        Some(format!("{chromium} is missing (apt-get install chromium)"))
    } else if !root.join("node_modules/playwright-core").exists() {
        Some(format!(
            "{}/node_modules is missing (npm ci there)",
            root.display()
        ))
    } else {
        None
    };
    if let Some(why) = missing {
        eprintln!("SKIPPING the browser test: {why}");
        return;
    }
    let expected = canary("sensitive", phone);
    let out = tokio::process::Command::new("node")
        .arg(root.join("secure_link.mjs"))
        .args([url, &net.sim_url, phone, &expected])
        .env("SEALGATE_CHROMIUM", &chromium)
        .output()
        .await
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    let result: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("result json");
    eprintln!("browser saw: {result}");
    assert_eq!(result["decrypted"], expected, "{result}");
    assert_eq!(result["second_open"], "used", "{result}");
    // The link's content is gone on the server.
    let resp = net
        .http
        .post(format!(
            "{}/open",
            url.split('#').next().unwrap_or_default()
        ))
        .json(&json!({"code": "000000"}))
        .send()
        .await
        .expect("open");
    assert_eq!(resp.status(), 410);
}
