//! The HTTP transports against a tiny axum stub: request shape (path, dedup id, bearer
//! token, correlation id, body) and the mapping of provider answers to ack / transient /
//! permanent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use sealgate_proto::send::{Channel, MessageClass, MessageStatus};
use serde_json::{Value, json};

use super::*;
use crate::delivery::transport::ErrorClass;

#[derive(Clone, Default)]
struct Stub {
    seen: Arc<Mutex<Vec<(String, HeaderMap, Value)>>>,
}

/// The stub answers by the phone number: each one is a scripted provider behaviour.
async fn rcs(
    State(stub): State<Stub>,
    Path(msisdn): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> axum::response::Response {
    let id = q.get("messageId").cloned().unwrap_or_default();
    stub.seen
        .lock()
        .expect("lock")
        .push((format!("{msisdn}?{id}"), headers, body));
    let err = |code: u16, status: &str| {
        (
            StatusCode::from_u16(code).expect("status"),
            axum::Json(json!({"error": {"code": code, "status": status, "message": "x"}})),
        )
            .into_response()
    };
    match msisdn.as_str() {
        "+15550000404" => err(404, "NOT_FOUND"),
        "+15550000400" => err(400, "FAILED_PRECONDITION"),
        "+15550000401" => err(400, "INVALID_ARGUMENT"),
        "+15550000429" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7")],
            "slow down",
        )
            .into_response(),
        "+15550000503" => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        "+15550000504" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        _ => axum::Json(json!({"name": format!("phones/{msisdn}/agentMessages/{id}")}))
            .into_response(),
    }
}

async fn sms(axum::Json(body): axum::Json<Value>) -> axum::response::Response {
    if body["to"] == "+15550000400" {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "number unreachable"}})),
        )
            .into_response();
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"id": "sms-1", "status": "accepted"})),
    )
        .into_response()
}

async fn start() -> (String, Stub) {
    let stub = Stub::default();
    let app = axum::Router::new()
        .route("/v1/phones/{msisdn}/agentMessages", post(rcs))
        .route("/sms/v1/messages", post(sms))
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, stub)
}

fn message(to: &str, kind: PayloadKind) -> TransportRequest {
    TransportRequest::Message(Box::new(OutboundMessage {
        message_id: "msg_1".into(),
        tenant_id: "t".into(),
        recipient: to.into(),
        class: MessageClass::Transactional,
        channel: Channel::Rcs,
        kind,
        group_id: None,
        epoch: None,
        payload: b"hello".to_vec(),
        status: MessageStatus::Queued,
        reason: None,
        attempts: 0,
        correlation_id: Some("rq-42".into()),
        accepted_at: 0,
        expires_at: None,
    }))
}

fn rcs_transport(base: &str) -> RcsTransport {
    RcsTransport::new(&RcsConfig {
        base_url: format!("{base}/"),
        agent_token: "agent-token".into(),
        webhook_secret: "s".into(),
        timeout_ms: 300,
        concurrency: 4,
    })
    .expect("transport")
}

#[tokio::test]
async fn rcs_request_carries_id_token_correlation_and_payload() {
    let (base, stub) = start().await;
    let t = rcs_transport(&base);
    let ack = t
        .send(&message("+15551234567", PayloadKind::RcsPayload))
        .await
        .expect("ack");
    assert_eq!(
        ack.provider_id.as_deref(),
        Some("phones/+15551234567/agentMessages/msg_1")
    );
    let seen = stub.seen.lock().expect("lock").clone();
    let (target, headers, body) = &seen[0];
    assert_eq!(target, "+15551234567?msg_1");
    assert_eq!(headers["authorization"], "Bearer agent-token");
    assert_eq!(headers["x-correlation-id"], "rq-42");
    assert_eq!(body["contentMessage"]["e2eePayload"], "aGVsbG8=");
    assert!(body.get("ttl").is_none());
    t.send(&message("+15551234567", PayloadKind::Text))
        .await
        .expect("ack");
    let seen = stub.seen.lock().expect("lock").clone();
    assert_eq!(seen[1].2["contentMessage"]["text"], "hello");
}

#[tokio::test]
async fn rcs_answers_map_to_outcomes() {
    let (base, _stub) = start().await;
    let t = rcs_transport(&base);
    let send = |to: &'static str| {
        let t = &t;
        async move { t.send(&message(to, PayloadKind::Text)).await }
    };
    assert_eq!(
        send("+15550000404").await,
        Err(TransportError::permanent("rcs_not_capable"))
    );
    assert_eq!(
        send("+15550000400").await,
        Err(TransportError::permanent("e2ee_not_supported"))
    );
    assert_eq!(
        send("+15550000401").await,
        Err(TransportError::permanent("rcs_invalid_argument"))
    );
    match send("+15550000429").await {
        Err(TransportError::Transient {
            class: ErrorClass::Throttled,
            retry_after: Some(d),
            ..
        }) => assert_eq!(d, Duration::from_secs(7)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        send("+15550000503").await,
        Err(TransportError::Transient {
            class: ErrorClass::Server,
            ..
        })
    ));
    assert!(matches!(
        send("+15550000504").await,
        Err(TransportError::Transient {
            class: ErrorClass::Timeout,
            ..
        })
    ));
    // Nobody listening: a connection error, transient.
    let dead = rcs_transport("http://127.0.0.1:9");
    assert!(matches!(
        dead.send(&message("+15551234567", PayloadKind::Text)).await,
        Err(TransportError::Transient {
            class: ErrorClass::Connect,
            ..
        })
    ));
}

#[tokio::test]
async fn sms_answers_map_to_outcomes() {
    let (base, _stub) = start().await;
    let t = SmsTransport::new(&SmsConfig {
        base_url: base,
        token: "tok".into(),
        from: "Bank".into(),
        timeout_ms: 300,
        concurrency: 4,
    })
    .expect("transport");
    let ack = t
        .send(&message("+15551234567", PayloadKind::Text))
        .await
        .expect("ack");
    assert_eq!(ack.provider_id.as_deref(), Some("sms-1"));
    assert_eq!(
        t.send(&message("+15550000400", PayloadKind::Text)).await,
        Err(TransportError::permanent("sms_unreachable"))
    );
    assert_eq!(
        t.send(&message("+15551234567", PayloadKind::RcsPayload))
            .await,
        Err(TransportError::permanent("unsupported_request"))
    );
}
