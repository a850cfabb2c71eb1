//! Fault injection: shares hold with a fixed seed, faulted requests leave no trace, 429
//! carries Retry-After, timeouts hang then answer 504, timeout_after_accept stores first.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sealgate_carrier_sim::Rule;
use serde_json::{Value, json};

use crate::common::{Harness, config, error_status};

const N: &str = "+15550001000";

async fn statuses(h: &Harness, count: usize, tag: &str) -> Vec<u16> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        out.push(h.sms(N, &format!("{tag}-{i}"), "x").await.status().as_u16());
    }
    out
}

#[tokio::test]
async fn shares_hold_with_a_seed_and_faulted_requests_leave_nothing() {
    let h = Harness::start(config()).await;
    let r = h
        .put(
            "/control/faults",
            json!({"error_5xx": 0.3, "rate_429": 0.2, "permanent_4xx": 0.1}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let got = h.get("/control/faults").await;
    assert_eq!(got["error_5xx"], 0.3);
    assert_eq!(got["retry_after_secs"], 1, "unset keys take their defaults");

    let n = 400;
    let first = statuses(&h, n, "a").await;
    let count = |codes: &[u16]| first.iter().filter(|s| codes.contains(s)).count();
    let (s5, s429, s4, ok) = (
        count(&[500, 503]),
        count(&[429]),
        count(&[400]),
        count(&[202]),
    );
    assert_eq!(s5 + s429 + s4 + ok, n, "{first:?}");
    // Binomial(400, p): ±4.5 standard deviations.
    assert!((80..=160).contains(&s5), "5xx {s5}");
    assert!((46..=114).contains(&s429), "429 {s429}");
    assert!((13..=67).contains(&s4), "4xx {s4}");
    assert!(count(&[500]) > 0 && count(&[503]) > 0);

    // Only the accepted ones are in the inbox; the counters agree.
    assert_eq!(h.inbox(N).await.len(), ok);
    let stats = h.stats().await;
    assert_eq!(stats["accepted"]["sms"], ok);
    assert_eq!(stats["faults"]["5xx"], s5);
    assert_eq!(stats["faults"]["429"], s429);
    assert_eq!(stats["faults"]["4xx"], s4);

    // Reset re-seeds: the same faults in the same order. It also clears faults and inboxes.
    h.post("/control/reset").await;
    assert_eq!(h.get("/control/faults").await["error_5xx"], 0.0);
    assert!(h.inbox(N).await.is_empty());
    h.put(
        "/control/faults",
        json!({"error_5xx": 0.3, "rate_429": 0.2, "permanent_4xx": 0.1}),
    )
    .await;
    assert_eq!(statuses(&h, n, "b").await, first);
}

#[tokio::test]
async fn rate_limit_carries_retry_after_and_stores_nothing() {
    let h = Harness::start(config()).await;
    h.put(
        "/control/faults",
        json!({"rate_429": 1.0, "retry_after_secs": 7}),
    )
    .await;
    let r = h.sms(N, "r-1", "x").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(error_status(r).await, "RESOURCE_EXHAUSTED");
    assert!(h.inbox(N).await.is_empty());
    assert_eq!(h.stats().await["accepted"]["sms"], 0);
}

#[tokio::test]
async fn faults_refused_when_shares_exceed_one() {
    let h = Harness::start(config()).await;
    let r = h
        .put(
            "/control/faults",
            json!({"error_5xx": 0.6, "rate_429": 0.5}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(h.get("/control/faults").await["error_5xx"], 0.0);
}

#[tokio::test]
async fn timeout_hangs_then_504_without_side_effect() {
    let h = Harness::start(config()).await;
    h.put(
        "/control/faults",
        json!({"timeout": 1.0, "timeout_ms": 200}),
    )
    .await;
    let start = Instant::now();
    let r = h.sms(N, "t-1", "x").await;
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(error_status(r).await, "DEADLINE_EXCEEDED");
    assert!(h.inbox(N).await.is_empty());
    assert_eq!(h.stats().await["faults"]["timeout"], 1);
}

#[tokio::test]
async fn timeout_after_accept_stores_then_504_and_the_retry_is_a_duplicate() {
    let mut c = config();
    c.numbers.insert(
        N.into(),
        Rule {
            rcs: Some(true),
            ..Rule::default()
        },
    );
    let h = Harness::start(c).await;
    h.put(
        "/control/faults",
        json!({"timeout_after_accept": 1.0, "timeout_ms": 100}),
    )
    .await;
    let r = h.rcs_text(N, "m-1", "hi").await;
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(h.inbox(N).await.len(), 1, "stored despite the 504");

    // The gateway retries: idempotent 200, counted as a duplicate, not stored again.
    h.put("/control/faults", json!({})).await;
    let r = h.rcs_text(N, "m-1", "hi").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(h.inbox(N).await.len(), 1);
    let stats: Value = h.stats().await;
    assert_eq!(stats["faults"]["timeout_after_accept"], 1);
    assert_eq!(stats["accepted"]["rcs"], 1);
    assert_eq!(stats["duplicates"]["rcs"], 1);
}

#[tokio::test]
async fn rule_faults_replace_global_ones_for_their_numbers() {
    let mut c = config();
    c.prefixes.insert(
        "+1666".into(),
        Rule {
            faults: Some(sealgate_carrier_sim::FaultConfig {
                error_5xx: 1.0,
                ..Default::default()
            }),
            ..Rule::default()
        },
    );
    let h = Harness::start(c).await;
    assert!(
        h.sms("+16660000000", "r", "x")
            .await
            .status()
            .is_server_error()
    );
    assert_eq!(h.sms(N, "r", "x").await.status(), StatusCode::ACCEPTED);
    assert!(h.inbox("+16660000000").await.is_empty());
    // Latency from the global faults applies to every request.
    h.put("/control/faults", json!({"latency_ms": 120})).await;
    let start = Instant::now();
    assert_eq!(h.sms(N, "r2", "x").await.status(), StatusCode::ACCEPTED);
    assert!(start.elapsed() >= Duration::from_millis(120));
}
