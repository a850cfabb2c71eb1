//! Test harness: a simulator served in process, an HTTP client with helpers for each
//! endpoint, and a recording webhook server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use reqwest::Response;
use sealgate_carrier_sim::{Sim, SimConfig};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "test-agent-token";
pub const SECRET: &str = "test-webhook-secret";

pub struct Harness {
    pub base: String,
    pub http: reqwest::Client,
    #[allow(dead_code)]
    pub sim: Sim,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A config with the test token and a fixed seed; callers adjust the rest.
pub fn config() -> SimConfig {
    SimConfig {
        agent_token: TOKEN.into(),
        seed: Some(42),
        ..SimConfig::default()
    }
}

impl Harness {
    pub async fn start(config: SimConfig) -> Harness {
        let sim = Sim::new(config).expect("valid config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sealgate_carrier_sim::serve(sim.clone(), listener, async {
            let _ = stopped.await;
        }));
        Harness {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            sim,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and checks that `serve` returned cleanly.
    #[allow(dead_code)]
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn rcs_text(&self, msisdn: &str, id: &str, text: &str) -> Response {
        self.rcs(msisdn, id, json!({"contentMessage": {"text": text}}))
            .await
    }

    pub async fn rcs(&self, msisdn: &str, id: &str, body: Value) -> Response {
        self.http
            .post(self.url(&format!("/v1/phones/{msisdn}/agentMessages")))
            .query(&[("messageId", id)])
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn sms(&self, to: &str, reference: &str, text: &str) -> Response {
        self.http
            .post(self.url("/sms/v1/messages"))
            .bearer_auth(TOKEN)
            .json(&json!({"to": to, "from": "SEALGATE", "text": text, "reference": reference}))
            .send()
            .await
            .unwrap()
    }

    pub async fn capabilities(&self, msisdn: &str) -> Response {
        self.http
            .get(self.url(&format!("/v1/phones/{msisdn}/capabilities")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Value {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
        resp.json().await.unwrap()
    }

    pub async fn put(&self, path: &str, body: Value) -> Response {
        self.http
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str) -> Value {
        let resp = self.http.post(self.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "POST {path}");
        resp.json().await.unwrap()
    }

    pub async fn inbox(&self, msisdn: &str) -> Vec<Value> {
        let v = self.get(&format!("/control/inbox/{msisdn}")).await;
        v["messages"].as_array().unwrap().clone()
    }

    pub async fn stats(&self) -> Value {
        self.get("/control/stats").await
    }
}

/// Reads a Google-style error body and returns its `status` name, checking `code` matches.
pub async fn error_status(resp: Response) -> String {
    let code = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    body["error"]["status"].as_str().unwrap().to_owned()
}

/// One request the webhook received.
#[derive(Clone)]
pub struct Hook {
    pub signature: Option<String>,
    pub body: Bytes,
    /// What the webhook answered.
    pub status: u16,
}

impl Hook {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A webhook receiver that records every request and fails the first `fail_first` with 500.
pub struct Webhook {
    pub url: String,
    pub received: Arc<Mutex<Vec<Hook>>>,
}

impl Webhook {
    pub async fn start(fail_first: usize) -> Webhook {
        let received: Arc<Mutex<Vec<Hook>>> = Arc::default();
        let failures = Arc::new(AtomicUsize::new(fail_first));
        let log = received.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let log = log.clone();
                let failures = failures.clone();
                async move {
                    let fail = failures
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    let status = if fail {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    };
                    log.lock().unwrap().push(Hook {
                        signature: headers
                            .get("x-goog-signature")
                            .map(|v| v.to_str().unwrap().to_owned()),
                        body,
                        status: status.as_u16(),
                    });
                    status
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Webhook {
            url: format!("http://{addr}/hook"),
            received,
        }
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.received.lock().unwrap().clone()
    }
}
