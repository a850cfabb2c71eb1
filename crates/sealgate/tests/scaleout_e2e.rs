//! The scale-out layout end to end through the real binaries: two `sealgate serve --role api`
//! and two `--role worker` processes sharing PostgreSQL (metadata), NATS JetStream (queue)
//! and an S3-compatible store (blobs), with `sealgate-carrier-sim` as the phone network.
//!
//! 1. A few hundred messages are sent through both api processes while one worker is killed
//!    with SIGKILL: every accepted message reaches the carrier exactly once.
//! 2. Two members commit to one MLS group at the same moment through different api
//!    processes: exactly one commit wins each epoch (the loser rebases onto the next).
//!
//! Needs `SEALGATE_TEST_POSTGRES_URL`, `SEALGATE_TEST_NATS_URL` and
//! `SEALGATE_TEST_S3_ENDPOINT` (`.ci/run` sets them); without them it prints why and passes.
//! Each run uses its own PostgreSQL schema, JetStream stream and bucket, removed at the end.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bin, spawn_ready};
use sealgate_client::{ClientOptions, Event, SealClient};
use serde_json::{Value, json};

const AGENT_TOKEN: &str = "sim-agent-token-scaleout";
const WEBHOOK_SECRET: &str = "sim-webhook-secret-scaleout";
const MESSAGES: usize = 300;
const PHONES: usize = 15;

struct Services {
    postgres: String,
    nats: String,
    s3: String,
}

fn services() -> Option<Services> {
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (
        get("SEALGATE_TEST_POSTGRES_URL"),
        get("SEALGATE_TEST_NATS_URL"),
        get("SEALGATE_TEST_S3_ENDPOINT"),
    ) {
        (Some(postgres), Some(nats), Some(s3)) => Some(Services { postgres, nats, s3 }),
        _ => {
            eprintln!(
                "skipping the scale-out test: SEALGATE_TEST_POSTGRES_URL, SEALGATE_TEST_NATS_URL \
                 and SEALGATE_TEST_S3_ENDPOINT must all be set (.ci/run sets them)"
            );
            None
        }
    }
}

struct Fleet {
    dir: tempfile::TempDir,
    services: Services,
    schema: String,
    stream: String,
    children: Vec<Child>,
    apis: Vec<String>,
    workers: Vec<Option<Child>>,
    sim_url: String,
    api_key: String,
}

impl Fleet {
    async fn start(services: Services) -> Fleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = sealgate_server::auth::random_id("");
        let schema = format!("sg_e2e_{}", &id[..12]);
        let stream = format!("SG_E2E_{}", &id[..12]);
        let bucket = format!("sg-e2e-{}", &id[..12]);
        let created = reqwest::Client::new()
            .put(format!("{}/{bucket}", services.s3.trim_end_matches('/')))
            .send()
            .await
            .expect("create bucket");
        assert!(
            created.status().is_success(),
            "bucket: {}",
            created.status()
        );

        // The simulator posts receipts to the first api process.
        let api_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        std::fs::write(dir.path().join("sim.toml"), "[default]\nsms = true\n").expect("sim");
        let mut cmd = Command::new(bin("sealgate-carrier-sim"));
        cmd.args(["--listen", "127.0.0.1:0", "--config"])
            .arg(dir.path().join("sim.toml"))
            .args([
                "--webhook-url",
                &format!("http://127.0.0.1:{api_port}/v1/webhooks/carrier"),
                "--webhook-secret",
                WEBHOOK_SECRET,
                "--agent-token",
                AGENT_TOKEN,
            ]);
        let (sim, sim_url) = spawn_ready(cmd, &dir.path().join("sim.log"));
        let config = format!(
            r#"
[store]
backend = "postgres"
url = "{pg}"
schema = "{schema}"
max_connections = 8
migrate_on_start = false

[queue]
backend = "nats"
url = "{nats}"
stream = "{stream}"

[blobs]
backend = "s3"
bucket = "{bucket}"
endpoint = "{s3}"
region = "us-east-1"
access_key_id = "test"
secret_access_key = "test"
allow_http = true

[delivery]
workers = 4
lease_secs = 3
poll_ms = 20
retry_base_ms = 50
retry_cap_ms = 400

[transports.sms]
base_url = "{sim_url}"
token = "{AGENT_TOKEN}"
from = "SEALGATE"
timeout_ms = 1000

[transports.rcs]
base_url = "{sim_url}"
agent_token = "{AGENT_TOKEN}"
webhook_secret = "{WEBHOOK_SECRET}"
timeout_ms = 1000

[transports.webhook]
timeout_ms = 1000
"#,
            pg = services.postgres,
            nats = services.nats,
            s3 = services.s3,
        );
        std::fs::write(dir.path().join("sealgate.toml"), config).expect("config");
        let mut fleet = Fleet {
            dir,
            services,
            schema,
            stream,
            children: vec![sim],
            apis: Vec::new(),
            workers: Vec::new(),
            sim_url,
            api_key: String::new(),
        };
        let out = fleet.sealgate(&["migrate"]);
        assert!(out["migrated"].as_bool().unwrap_or(false), "{out}");
        fleet.api_key = fleet.sealgate(&["admin", "tenant", "create", "bank"])["api_key"]
            .as_str()
            .expect("api_key")
            .to_owned();
        for port in [api_port, 0] {
            let (child, url) = fleet.serve("api", port);
            fleet.children.push(child);
            fleet.apis.push(url);
        }
        for _ in 0..2 {
            let (child, _) = fleet.serve("worker", 0);
            fleet.workers.push(Some(child));
        }
        fleet
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("sealgate"));
        let (command, rest) = args.split_first().expect("subcommand");
        cmd.arg(command)
            .arg("--data")
            .arg(self.dir.path().join("data"))
            .arg("--config")
            .arg(self.dir.path().join("sealgate.toml"));
        // `admin` takes its subcommand after the common flags.
        cmd.args(rest);
        cmd
    }

    fn sealgate(&self, args: &[&str]) -> Value {
        let out = self.command(args).output().expect("sealgate");
        assert!(
            out.status.success(),
            "sealgate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    fn serve(&self, role: &str, port: u16) -> (Child, String) {
        let mut cmd = self.command(&["serve"]);
        cmd.args(["--role", role, "--listen", &format!("127.0.0.1:{port}")]);
        let n = self.children.len() + self.workers.len();
        spawn_ready(cmd, &self.dir.path().join(format!("{role}-{n}.log")))
    }

    async fn inbox(&self, http: &reqwest::Client, phone: &str) -> Vec<String> {
        let v: Value = http
            .get(format!("{}/control/inbox/{phone}", self.sim_url))
            .send()
            .await
            .expect("inbox")
            .json()
            .await
            .expect("json");
        v["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m["message_id"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self
            .children
            .iter_mut()
            .chain(self.workers.iter_mut().flatten())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let (pg, schema) = (self.services.postgres.clone(), self.schema.clone());
        let (nats, stream) = (self.services.nats.clone(), self.stream.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Runtime::new() {
                rt.block_on(async {
                    let _ =
                        sealgate_server::store::postgres::PgStore::drop_schema(&pg, &schema).await;
                    let _ =
                        sealgate_server::delivery::nats::NatsQueue::delete_stream(&nats, &stream)
                            .await;
                });
            }
        })
        .join();
    }
}

async fn recv_until(client: &mut SealClient, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < n && Instant::now() < deadline {
        out.extend(
            client
                .receive(Some(Duration::from_secs(1)))
                .await
                .expect("receive"),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apis_two_workers_exactly_once_and_one_commit_per_epoch() {
    let Some(services) = services() else {
        return;
    };
    let mut fleet = Fleet::start(services).await;

    // --- 1. sends through both api processes, one worker SIGKILLed mid-run ----------------
    let accepted = Arc::new(Mutex::new(BTreeMap::<usize, String>::new()));
    let mut senders = Vec::new();
    for s in 0..6 {
        let url = fleet.apis[s % 2].clone();
        let (accepted, api_key) = (accepted.clone(), fleet.api_key.clone());
        senders.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in (s..MESSAGES).step_by(6) {
                let body = json!({"to": format!("+1555600{:04}", n % PHONES),
                                  "class": "transactional",
                                  "body": {"text": format!("m{n}"), "channel": "sms"}});
                let resp = http
                    .post(format!("{url}/v1/messages"))
                    .bearer_auth(&api_key)
                    .header("Idempotency-Key", format!("so-{n}"))
                    .json(&body)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(resp.status().as_u16(), 202, "message {n}");
                let v: Value = resp.json().await.expect("json");
                let id = v["message_id"].as_str().expect("id").to_owned();
                accepted.lock().expect("lock").insert(n, id);
            }
        }));
    }
    let wait_until = Instant::now() + Duration::from_secs(60);
    while accepted.lock().expect("lock").len() < MESSAGES / 3 && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(mut worker) = fleet.workers[0].take() {
        worker.kill().expect("SIGKILL");
        worker.wait().expect("wait");
    }
    for s in senders {
        s.await.expect("sender");
    }
    let want: BTreeSet<String> = accepted.lock().expect("lock").values().cloned().collect();
    assert_eq!(want.len(), MESSAGES);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut seen = Vec::new();
        for p in 0..PHONES {
            seen.extend(fleet.inbox(&http, &format!("+1555600{p:04}")).await);
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

    // --- 2. concurrent commits to one group through the two api processes --------------
    let mut clients = Vec::new();
    for (i, user) in ["alice", "bob", "carol", "dave"].iter().enumerate() {
        let enrollment = fleet.sealgate(&["admin", "enroll", "--tenant", "bank", "--user", user]);
        let token = enrollment["token"].as_str().expect("token").to_owned();
        let client = SealClient::init(
            &fleet.dir.path().join("homes").join(user),
            &fleet.apis[i % 2],
            &token,
            ClientOptions::default(),
        )
        .await
        .expect("init");
        clients.push(client);
    }
    let [alice, bob, carol, dave] = &mut clients[..] else {
        panic!("four clients");
    };
    let group = alice
        .create_group(&["bob".to_owned()])
        .await
        .expect("group");
    assert!(!recv_until(bob, 1).await.is_empty(), "bob got the welcome");
    // alice talks to api 0, bob to api 1: both commit on epoch 1 at once.
    let (a, b) = tokio::join!(
        alice.add_member(&group, "carol"),
        bob.add_member(&group, "dave")
    );
    let mut epochs = [a.expect("alice commits"), b.expect("bob commits")];
    epochs.sort_unstable();
    assert_eq!(
        epochs,
        [2, 3],
        "one winner for epoch 2, the other rebased to 3"
    );
    assert_eq!(alice.server_view(&group).await.expect("view").epoch, 3);
    assert!(
        !recv_until(carol, 1).await.is_empty(),
        "carol got her welcome"
    );
    assert!(
        !recv_until(dave, 1).await.is_empty(),
        "dave got his welcome"
    );
}
