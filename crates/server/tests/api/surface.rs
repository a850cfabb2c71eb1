//! Health, readiness, request ids, and the OpenAPI document.

use anyhow::Result;
use reqwest::StatusCode;
use sealgate_proto::api::Health;

use crate::support::TestGateway;

#[tokio::test]
async fn health_and_readiness() -> Result<()> {
    let gw = TestGateway::start().await?;
    let h: Health = gw.http.get(gw.url("/healthz")).send().await?.json().await?;
    assert_eq!(h.status, "ok");
    let r: Health = gw.http.get(gw.url("/readyz")).send().await?.json().await?;
    assert_eq!(r.status, "ready");
    Ok(())
}

#[tokio::test]
async fn request_ids_are_generated_or_echoed() -> Result<()> {
    let gw = TestGateway::start().await?;
    let resp = gw.http.get(gw.url("/healthz")).send().await?;
    let generated = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        generated.starts_with("rq") && generated.len() > 10,
        "{generated:?}"
    );

    let resp = gw
        .http
        .get(gw.url("/v1/nope"))
        .header("x-request-id", "client-abc-123")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.headers()["x-request-id"], "client-abc-123");

    // An unusable one (too long) is replaced, not echoed.
    let long = "x".repeat(200);
    let resp = gw
        .http
        .get(gw.url("/healthz"))
        .header("x-request-id", &long)
        .send()
        .await?;
    let id = resp.headers()["x-request-id"].to_str()?.to_owned();
    assert_ne!(id, long);
    assert!(id.starts_with("rq"));
    Ok(())
}

#[tokio::test]
async fn openapi_lists_every_route_with_security() -> Result<()> {
    let gw = TestGateway::start().await?;
    let spec: serde_json::Value = gw
        .http
        .get(gw.url("/openapi.json"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let paths = spec["paths"].as_object().cloned().unwrap_or_default();
    for (path, method) in [
        ("/v1/admin/tenants", "post"),
        ("/v1/admin/tenants", "get"),
        ("/v1/admin/tenants/{tenant_id}/enrollments", "post"),
        ("/v1/enrollments", "post"),
        ("/v1/users", "get"),
        ("/v1/users/{user}", "get"),
        ("/v1/devices", "post"),
        ("/v1/devices/me", "get"),
        ("/v1/devices/me", "delete"),
        ("/v1/keypackages", "post"),
        ("/v1/keypackages/stock", "get"),
        ("/v1/keypackages/claim", "post"),
        ("/v1/groups", "post"),
        ("/v1/mailbox", "get"),
        ("/v1/mailbox/ack", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the spec"
        );
    }
    let schemes = &spec["components"]["securitySchemes"];
    for name in ["operator_token", "api_key", "device_token"] {
        assert_eq!(schemes[name]["scheme"], "bearer", "{name}");
    }
    assert!(spec["components"]["schemas"]["Problem"].is_object());
    // The library function and the served document agree.
    let lib = serde_json::to_value(sealgate_server::openapi())?;
    assert_eq!(lib, spec);
    Ok(())
}
