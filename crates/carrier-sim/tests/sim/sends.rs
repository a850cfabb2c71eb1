//! Sends: RCS, SMS and push land once, duplicates are counted and not re-added, capability
//! and reachability rejections, authentication and malformed input.

use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::StatusCode;
use sealgate_carrier_sim::{Rule, SimConfig, config::UnreachableMode};
use serde_json::{Value, json};

use crate::common::{Harness, TOKEN, config, error_status};

const RCS: &str = "+15550000001";
const E2EE: &str = "+15550000002";
const SMS_ONLY: &str = "+15550000003";
const RCS_NO_SMS: &str = "+15550000004";

fn numbers() -> SimConfig {
    let mut c = config();
    let set = |rcs, e2ee, sms| Rule {
        rcs: Some(rcs),
        e2ee: Some(e2ee),
        sms: Some(sms),
        ..Rule::default()
    };
    c.numbers.insert(RCS.into(), set(true, false, true));
    c.numbers.insert(E2EE.into(), set(true, true, true));
    c.numbers.insert(RCS_NO_SMS.into(), set(true, false, false));
    c
}

#[tokio::test]
async fn rcs_send_lands_once_and_duplicates_are_counted() {
    let h = Harness::start(numbers()).await;
    let first = h.rcs_text(RCS, "m-1", "hello").await;
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["name"], format!("phones/{RCS}/agentMessages/m-1"));
    assert!(first["sendTime"].as_str().unwrap().ends_with('Z'));

    let again = h.rcs_text(RCS, "m-1", "hello").await;
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        again, first,
        "a repeated messageId answers like the first send"
    );
    h.rcs_text(RCS, "m-2", "second").await;

    let inbox = h.inbox(RCS).await;
    assert_eq!(inbox.len(), 2);
    assert_eq!(inbox[0]["message_id"], "m-1");
    assert_eq!(inbox[0]["channel"], "rcs");
    assert_eq!(inbox[0]["text"], "hello");
    assert!(inbox[0].get("e2ee_payload").is_none());
    assert_eq!(inbox[1]["message_id"], "m-2");

    let stats = h.stats().await;
    assert_eq!(stats["accepted"]["rcs"], 2);
    assert_eq!(stats["duplicates"]["rcs"], 1);
    // The same id to another number is another message.
    assert_eq!(h.rcs_text(E2EE, "m-1", "x").await.status(), StatusCode::OK);
    assert_eq!(h.inbox(E2EE).await.len(), 1);
}

#[tokio::test]
async fn sms_send_lands_once_and_duplicates_are_counted() {
    let h = Harness::start(numbers()).await;
    let r = h.sms(SMS_ONLY, "ref-1", "code 1234").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["status"], "accepted");
    assert!(first["id"].as_str().unwrap().starts_with("sms-"));
    let again: Value = h
        .sms(SMS_ONLY, "ref-1", "code 1234")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["id"], first["id"]);

    let inbox = h.inbox(SMS_ONLY).await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0]["channel"], "sms");
    assert_eq!(inbox[0]["message_id"], "ref-1");
    assert_eq!(inbox[0]["text"], "code 1234");
    let stats = h.stats().await;
    assert_eq!(stats["accepted"]["sms"], 1);
    assert_eq!(stats["duplicates"]["sms"], 1);

    // Not SMS reachable: 400 INVALID_ARGUMENT "unreachable", nothing stored.
    let r = h.sms(RCS_NO_SMS, "ref-2", "x").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "unreachable"}})
    );
    assert!(h.inbox(RCS_NO_SMS).await.is_empty());
}

#[tokio::test]
async fn rcs_needs_capability_and_e2ee_flag() {
    let h = Harness::start(numbers()).await;
    let r = h.rcs_text(SMS_ONLY, "m-1", "x").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_status(r).await, "NOT_FOUND");

    let payload = base64::engine::general_purpose::STANDARD.encode(b"\x00mls-ciphertext");
    let body = json!({"contentMessage": {"e2eePayload": payload}, "ttl": "3600s"});
    let r = h.rcs(RCS, "m-2", body.clone()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_status(r).await, "FAILED_PRECONDITION");
    assert!(h.inbox(RCS).await.is_empty());

    assert_eq!(h.rcs(E2EE, "m-3", body).await.status(), StatusCode::OK);
    let inbox = h.inbox(E2EE).await;
    assert_eq!(inbox[0]["e2ee_payload"], payload.as_str());
    assert!(inbox[0].get("text").is_none());
    let stats = h.stats().await;
    assert_eq!(stats["rejected"]["not_rcs"], 1);
    assert_eq!(stats["rejected"]["no_e2ee"], 1);
}

#[tokio::test]
async fn unreachable_numbers_fail_permanently_or_time_out() {
    let mut c = numbers();
    c.numbers.insert(
        "+15559990001".into(),
        Rule {
            rcs: Some(true),
            reachable: Some(false),
            ..Rule::default()
        },
    );
    c.numbers.insert(
        "+15559990002".into(),
        Rule {
            reachable: Some(false),
            unreachable_mode: Some(UnreachableMode::Timeout),
            ..Rule::default()
        },
    );
    c.faults.timeout_ms = 150;
    let h = Harness::start(c).await;
    assert_eq!(
        h.rcs_text("+15559990001", "m", "x").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.sms("+15559990001", "r", "x").await.status(),
        StatusCode::BAD_REQUEST
    );
    let start = Instant::now();
    let r = h.sms("+15559990002", "r", "x").await;
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(start.elapsed() >= Duration::from_millis(150));
    assert!(h.inbox("+15559990001").await.is_empty());
    assert!(h.inbox("+15559990002").await.is_empty());
    assert_eq!(h.stats().await["rejected"]["unreachable"], 3);
}

#[tokio::test]
async fn aggregator_needs_the_agent_token() {
    let h = Harness::start(numbers()).await;
    let url = h.url(&format!("/v1/phones/{RCS}/agentMessages?messageId=m"));
    let body = json!({"contentMessage": {"text": "x"}});
    for auth in [None, Some("Bearer wrong"), Some(TOKEN)] {
        let mut req = h.http.post(&url).json(&body);
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(error_status(r).await, "UNAUTHENTICATED");
    }
    for path in ["/sms/v1/messages", "/push/v1/send"] {
        let r = h.http.post(h.url(path)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let r = h
        .http
        .get(h.url(&format!("/v1/phones/{RCS}/capabilities")))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(h.inbox(RCS).await.is_empty());
    assert_eq!(h.stats().await["accepted"]["rcs"], 0);
}

#[tokio::test]
async fn malformed_requests_are_400_in_google_shape() {
    let h = Harness::start(numbers()).await;
    let send = |path: String, body: &'static str| {
        h.http
            .post(h.url(&path))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let rcs = format!("/v1/phones/{RCS}/agentMessages?messageId=m");
    for (path, body) in [
        (rcs.clone(), "{not json"),
        (rcs.clone(), r#"{"contentMessage":{}}"#),
        (
            rcs.clone(),
            r#"{"contentMessage":{"text":"a","e2eePayload":"AA=="}}"#,
        ),
        (
            rcs.clone(),
            r#"{"contentMessage":{"e2eePayload":"not base64!"}}"#,
        ),
        (rcs.clone(), r#"{"contentMessage":{"text":"a"},"ttl":"1h"}"#),
        (
            format!("/v1/phones/{RCS}/agentMessages"),
            r#"{"contentMessage":{"text":"a"}}"#,
        ),
        (
            "/v1/phones/12345/agentMessages?messageId=m".into(),
            r#"{"contentMessage":{"text":"a"}}"#,
        ),
        ("/sms/v1/messages".into(), r#"{"to":"12","text":"a"}"#),
        (
            "/sms/v1/messages".into(),
            r#"{"to":"+15550000003","text":""}"#,
        ),
        ("/push/v1/send".into(), r#"{"token":"t","data":[1]}"#),
        ("/push/v1/send".into(), r#"{"token":"","data":{}}"#),
    ] {
        let r = send(path.clone(), body).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path} {body}");
        assert_eq!(error_status(r).await, "INVALID_ARGUMENT", "{path} {body}");
    }
    let long = "x".repeat(3073);
    assert_eq!(
        h.rcs_text(RCS, "m", &long).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert!(h.inbox(RCS).await.is_empty());
    assert!(h.inbox("+15550000003").await.is_empty());
    let r = h.http.get(h.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_status(r).await, "NOT_FOUND");
}

#[tokio::test]
async fn push_keeps_a_list_per_token() {
    let h = Harness::start(numbers()).await;
    let mut ids = Vec::new();
    for n in 0..2 {
        let r = h
            .http
            .post(h.url("/push/v1/send"))
            .bearer_auth(TOKEN)
            .json(&json!({"token": "dev-a", "data": {"wake": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    assert_ne!(ids[0], ids[1]);
    let list = h.get("/control/push/dev-a").await;
    let list = list["messages"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], ids[0].as_str());
    assert_eq!(list[1]["data"], json!({"wake": 1}));
    assert!(
        h.get("/control/push/dev-b").await["messages"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(h.stats().await["accepted"]["push"], 2);

    h.post("/control/reset").await;
    assert!(
        h.get("/control/push/dev-a").await["messages"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}
