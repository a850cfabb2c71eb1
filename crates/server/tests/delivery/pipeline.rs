//! Workers against the carrier simulator: injected 5xx / 429 + Retry-After / timeouts end
//! delivered with no duplicate in any inbox; permanent failures end failed with the
//! transport's reason after one attempt; an unconfigured route fails; metrics tell it all.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use sealgate_carrier_sim::FaultConfig;
use sealgate_proto::send::MessageStatus;
use serde_json::json;

use super::harness::{RCS_E2EE, RCS_PLAIN, Rig, SMS_ONLY, UNREACHABLE, problem, sim_config, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_end_delivered_with_no_duplicates() -> Result<()> {
    let faults = FaultConfig {
        error_5xx: 0.2,
        rate_429: 0.1,
        retry_after_secs: 1,
        timeout: 0.05,
        timeout_ms: 1000,
        timeout_after_accept: 0.05,
        ..FaultConfig::default()
    };
    let rig = Rig::start(Some(sim_config(faults)), |_| {}).await?;
    let mut sent = Vec::new();
    for i in 0..30 {
        let (to, body) = match i % 3 {
            0 => (
                RCS_E2EE,
                json!({"to": RCS_E2EE, "class": "transactional",
                "body": {"rcs_payload": sealgate_proto::b64::encode(format!("ct-{i}").as_bytes())}}),
            ),
            1 => (RCS_PLAIN, text(RCS_PLAIN, &format!("rcs {i}"), "rcs")),
            _ => (SMS_ONLY, text(SMS_ONLY, &format!("sms {i}"), "sms")),
        };
        sent.push((to, rig.send_ok(&format!("k{i}"), &body).await?));
    }
    for (_, id) in &sent {
        // SMS gets DELIVERED only; RCS also READ.
        let v = rig
            .wait_for(
                id,
                &[MessageStatus::Delivered, MessageStatus::Read],
                Duration::from_secs(30),
            )
            .await?;
        assert!(v.history.iter().any(|h| h.status == MessageStatus::Sent));
        assert!(v.attempts >= 1);
    }
    for number in [RCS_E2EE, RCS_PLAIN, SMS_ONLY] {
        let inbox = rig.sim().inbox(number);
        let ids: Vec<_> = inbox.iter().map(|e| e.message_id.clone()).collect();
        let unique: HashSet<_> = ids.iter().collect();
        assert_eq!(ids.len(), unique.len(), "duplicate in {number}'s inbox");
        let want: HashSet<_> = sent
            .iter()
            .filter(|(to, _)| *to == number)
            .map(|(_, id)| id)
            .collect();
        assert_eq!(unique, want, "{number}'s inbox holds exactly our messages");
    }
    // The E2EE payload travelled opaque.
    assert!(
        rig.sim()
            .inbox(RCS_E2EE)
            .iter()
            .all(|e| e.e2ee_payload.is_some() && e.text.is_none())
    );
    let stats = rig.sim().stats();
    let faults_seen = stats["faults"]["5xx"].as_u64().unwrap_or(0)
        + stats["faults"]["429"].as_u64().unwrap_or(0)
        + stats["faults"]["timeout"].as_u64().unwrap_or(0);
    assert!(faults_seen > 0, "the run saw faults: {stats}");
    let total: u64 = sent.len() as u64;
    let metrics = rig.metrics().await?;
    let successes: u64 = ["rcs", "sms"]
        .iter()
        .map(|t| {
            series(
                &metrics,
                &format!("sealgate_delivery_total{{outcome=\"success\",transport=\"{t}\"}}"),
            )
        })
        .sum();
    assert_eq!(successes, total, "{metrics}");
    assert!(
        metrics.contains("sealgate_delivery_retries_total{"),
        "{metrics}"
    );
    assert!(metrics.contains("sealgate_delivery_latency_seconds_bucket{transport=\"rcs\""));
    assert!(metrics.contains(&format!(
        "sealgate_messages_accepted_total{{tenant=\"{}\"}} {total}",
        rig.tenant_id
    )));
    for number in [RCS_E2EE, RCS_PLAIN, SMS_ONLY] {
        assert!(!metrics.contains(number), "no phone number in metrics");
    }
    // Payloads of sent messages are wiped.
    assert_eq!(
        rig.count("SELECT COUNT(*) FROM send_messages WHERE length(payload) > 0")
            .await?,
        0
    );
    Ok(())
}

fn series(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn permanent_failures_end_at_once_with_the_transports_reason() -> Result<()> {
    let rig = Rig::start(Some(sim_config(FaultConfig::default())), |_| {}).await?;
    let payload = sealgate_proto::b64::encode(b"ciphertext");
    let cases = [
        (
            text(SMS_ONLY, "rcs to an sms-only phone", "rcs"),
            "rcs_not_capable",
        ),
        (
            json!({"to": RCS_PLAIN, "class": "sensitive", "body": {"rcs_payload": payload}}),
            "e2ee_not_supported",
        ),
        (
            text(UNREACHABLE, "sms to nowhere", "sms"),
            "sms_unreachable",
        ),
    ];
    for (i, (body, reason)) in cases.iter().enumerate() {
        let id = rig.send_ok(&format!("p{i}"), body).await?;
        let v = rig
            .wait_for(&id, &[MessageStatus::Failed], Duration::from_secs(10))
            .await?;
        assert_eq!(v.reason.as_deref(), Some(*reason));
        assert_eq!(v.attempts, 1, "no retry of a permanent failure");
        assert_eq!(
            v.history.last().map(|h| h.reason.as_deref()),
            Some(Some(*reason))
        );
    }
    let metrics = rig.metrics().await?;
    assert!(metrics.contains("sealgate_delivery_total{outcome=\"permanent\",transport=\"rcs\"} 2"));
    assert!(metrics.contains("sealgate_delivery_total{outcome=\"permanent\",transport=\"sms\"} 1"));
    let (status, p) = problem(
        rig.http
            .get(rig.url("/v1/admin/dead-letters"))
            .send()
            .await?,
    )
    .await?;
    assert_eq!((status, p.code.as_str()), (401, "unauthenticated"));
    let dead: serde_json::Value = rig
        .http
        .get(rig.url("/v1/admin/dead-letters"))
        .bearer_auth(&rig.operator_token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(dead["dead_letters"].as_array().map(Vec::len), Some(0));
    Ok(())
}

#[tokio::test]
async fn an_unconfigured_route_fails_with_transport_not_configured() -> Result<()> {
    // No simulator: no RCS, SMS or push transport (what `sealgate serve` starts with).
    let rig = Rig::start(None, |_| {}).await?;
    let id = rig.send_ok("u1", &text(SMS_ONLY, "hello", "sms")).await?;
    let v = rig
        .wait_for(&id, &[MessageStatus::Failed], Duration::from_secs(10))
        .await?;
    assert_eq!(v.reason.as_deref(), Some("transport_not_configured"));
    // Never the body in the status view.
    let raw = rig
        .http
        .get(rig.url(&format!("/v1/messages/{id}")))
        .bearer_auth(&rig.api_key)
        .send()
        .await?
        .text()
        .await?;
    assert!(!raw.contains("hello"));
    Ok(())
}

#[tokio::test]
async fn exhausted_retries_dead_letter_and_replay_delivers() -> Result<()> {
    let faults = FaultConfig {
        error_5xx: 1.0,
        ..FaultConfig::default()
    };
    let rig = Rig::start(Some(sim_config(faults)), |c| {
        c.delivery.retry_window_transactional_secs = 1;
    })
    .await?;
    let id = rig.send_ok("x1", &text(SMS_ONLY, "doomed", "sms")).await?;
    let v = rig
        .wait_for(&id, &[MessageStatus::Failed], Duration::from_secs(10))
        .await?;
    assert_eq!(v.reason.as_deref(), Some("retry_window_exhausted"));
    assert!(v.attempts >= 2, "retried inside the window: {}", v.attempts);
    let dead: sealgate_proto::send::DeadLetterList = rig
        .http
        .get(rig.url("/v1/admin/dead-letters"))
        .bearer_auth(&rig.operator_token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(dead.dead_letters.len(), 1);
    let d = &dead.dead_letters[0];
    assert_eq!(d.message_id.as_deref(), Some(id.as_str()));
    assert!(d.last_error.as_deref().is_some_and(|e| e.contains("50")));
    assert!(
        rig.metrics()
            .await?
            .contains("sealgate_dead_letters_total{kind=\"send\"} 1")
    );

    // The carrier recovers; the operator replays.
    let resp = rig
        .http
        .put(format!("{}/control/faults", sim_base(&rig)))
        .json(&FaultConfig::default())
        .send()
        .await?;
    assert!(
        resp.status().is_success(),
        "reset faults: {}",
        resp.status()
    );
    let resp = rig
        .http
        .post(rig.url(&format!(
            "/v1/admin/dead-letters/{}/replay",
            d.dead_letter_id
        )))
        .bearer_auth(&rig.operator_token)
        .send()
        .await?;
    assert_eq!(resp.status(), 202);
    let v = rig
        .wait_for(&id, &[MessageStatus::Delivered], Duration::from_secs(10))
        .await?;
    assert!(
        v.history
            .iter()
            .any(|h| h.reason.as_deref() == Some("replayed"))
    );
    let resp = rig
        .http
        .post(rig.url("/v1/admin/dead-letters/999999/replay"))
        .bearer_auth(&rig.operator_token)
        .send()
        .await?;
    let (status, p) = problem(resp).await?;
    assert_eq!((status, p.code.as_str()), (404, "unknown_dead_letter"));
    Ok(())
}

/// The simulator's base URL, from the gateway's RCS config.
fn sim_base(rig: &Rig) -> String {
    rig.gateway
        .state()
        .config()
        .transports
        .rcs
        .as_ref()
        .map(|r| r.base_url.trim_end_matches('/').to_owned())
        .unwrap_or_default()
}
