//! Bad input anywhere gets a problem+json with the right status and code, and stores nothing.

use anyhow::{Result, ensure};
use reqwest::Method;
use sealgate_proto::api::{KeyPackageStock, TenantList, UserList};
use sealgate_proto::b64;

use crate::support::{TestGateway, problem};

/// Who a request authenticates as.
#[derive(Clone, Copy, Debug)]
enum As {
    Nobody,
    Operator,
    ApiKey,
    Device,
    Raw(&'static str),
}

struct Case {
    name: &'static str,
    method: Method,
    path: &'static str,
    auth: As,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
}

fn case(
    name: &'static str,
    method: Method,
    path: &'static str,
    auth: As,
    body: Option<&str>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method,
        path,
        auth,
        content_type: body.map(|_| "application/json"),
        body: body.map(|b| b.as_bytes().to_vec()),
        status,
        code,
    }
}

#[tokio::test]
async fn bad_input_table() -> Result<()> {
    let gw = TestGateway::start().await?;
    let acme = gw.create_tenant("acme").await?;
    let alice = gw.device(&acme.api_key, "alice").await?;
    let garbage_mls = format!(
        r#"{{"key_packages":["{}"]}}"#,
        b64::encode(b"\x00\x01garbage")
    );
    let welcome_not_kp = format!(r#"{{"key_packages":["{}"]}}"#, b64::encode(&[0, 1, 0, 3]));
    let oversized = format!(
        r#"{{"key_packages":["{}"]}}"#,
        b64::encode(&vec![0u8; 1024 * 1024])
    );
    let short_key = format!(
        r#"{{"enrollment_token":"sge_x","signature_key":"{}"}}"#,
        b64::encode(&[7u8; 31])
    );
    use As::*;
    let post = Method::POST;
    let get = Method::GET;
    let mut cases = vec![
        case(
            "malformed json",
            post.clone(),
            "/v1/admin/tenants",
            Operator,
            Some(r#"{"name":"#),
            400,
            "malformed_body",
        ),
        case(
            "unknown field",
            post.clone(),
            "/v1/admin/tenants",
            Operator,
            Some(r#"{"name":"x","admin":true}"#),
            400,
            "malformed_body",
        ),
        case(
            "wrong type",
            post.clone(),
            "/v1/admin/tenants",
            Operator,
            Some(r#"{"name":5}"#),
            400,
            "malformed_body",
        ),
        case(
            "missing field",
            post.clone(),
            "/v1/keypackages/claim",
            ApiKey,
            Some("{}"),
            400,
            "malformed_body",
        ),
        case(
            "invalid tenant name",
            post.clone(),
            "/v1/admin/tenants",
            Operator,
            Some(r#"{"name":"Bad Name"}"#),
            422,
            "invalid_field",
        ),
        case(
            "invalid user id",
            post.clone(),
            "/v1/enrollments",
            ApiKey,
            Some(r#"{"user":"Al/ice"}"#),
            422,
            "invalid_field",
        ),
        case(
            "invalid phone",
            post.clone(),
            "/v1/enrollments",
            ApiKey,
            Some(r#"{"user":"bob","phone":"555-1234"}"#),
            422,
            "invalid_field",
        ),
        case(
            "bad base64",
            post.clone(),
            "/v1/keypackages",
            Device,
            Some(r#"{"key_packages":["%%%"]}"#),
            422,
            "invalid_field",
        ),
        case(
            "garbage mls",
            post.clone(),
            "/v1/keypackages",
            Device,
            Some(&garbage_mls),
            422,
            "malformed_mls",
        ),
        case(
            "mls but not a key package",
            post.clone(),
            "/v1/keypackages",
            Device,
            Some(&welcome_not_kp),
            422,
            "malformed_mls",
        ),
        case(
            "empty publish",
            post.clone(),
            "/v1/keypackages",
            Device,
            Some("{}"),
            422,
            "invalid_field",
        ),
        case(
            "short signature key",
            post.clone(),
            "/v1/devices",
            Nobody,
            Some(&short_key),
            422,
            "invalid_field",
        ),
        case(
            "oversized body",
            post.clone(),
            "/v1/keypackages",
            Device,
            Some(&oversized),
            413,
            "payload_too_large",
        ),
        case(
            "no auth",
            get.clone(),
            "/v1/users",
            Nobody,
            None,
            401,
            "unauthenticated",
        ),
        case(
            "unknown api key",
            get.clone(),
            "/v1/users",
            Raw("Bearer sgk_0000"),
            None,
            401,
            "unauthenticated",
        ),
        case(
            "device token on tenant route",
            get.clone(),
            "/v1/users",
            Device,
            None,
            401,
            "unauthenticated",
        ),
        case(
            "api key on device route",
            get.clone(),
            "/v1/keypackages/stock",
            ApiKey,
            None,
            401,
            "unauthenticated",
        ),
        case(
            "not bearer",
            get.clone(),
            "/v1/keypackages/stock",
            Raw("Basic YWxpY2U6eA=="),
            None,
            401,
            "unauthenticated",
        ),
        case(
            "api key on operator route",
            post.clone(),
            "/v1/admin/tenants",
            ApiKey,
            Some(r#"{"name":"evil"}"#),
            401,
            "unauthenticated",
        ),
        case(
            "unknown route",
            get.clone(),
            "/v1/nope",
            Operator,
            None,
            404,
            "not_found",
        ),
        case(
            "wrong method",
            Method::DELETE,
            "/v1/admin/tenants",
            Operator,
            None,
            405,
            "method_not_allowed",
        ),
        case(
            "wrong method on device route",
            Method::PUT,
            "/v1/devices/me",
            Device,
            None,
            405,
            "method_not_allowed",
        ),
    ];
    cases.push(Case {
        name: "wrong content type",
        method: post.clone(),
        path: "/v1/admin/tenants",
        auth: Operator,
        content_type: Some("text/plain"),
        body: Some(br#"{"name":"plain"}"#.to_vec()),
        status: 415,
        code: "unsupported_media_type",
    });
    cases.push(Case {
        name: "no content type",
        method: post.clone(),
        path: "/v1/keypackages/claim",
        auth: ApiKey,
        content_type: None,
        body: Some(br#"{"user":"alice"}"#.to_vec()),
        status: 415,
        code: "unsupported_media_type",
    });

    let mut failures = Vec::new();
    for c in &cases {
        let mut req = gw.http.request(c.method.clone(), gw.url(c.path));
        req = match c.auth {
            Nobody => req,
            Operator => req.bearer_auth(&gw.operator_token),
            ApiKey => req.bearer_auth(&acme.api_key),
            Device => req.header("authorization", alice.auth()),
            Raw(v) => req.header("authorization", v),
        };
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(body) = &c.body {
            req = req.body(body.clone());
        }
        let resp = req.send().await?;
        match problem(resp).await {
            Ok((status, p)) if status.as_u16() == c.status && p.code == c.code => {}
            Ok((status, p)) => failures.push(format!("{}: got {status} {}", c.name, p.code)),
            Err(e) => failures.push(format!("{}: {e}", c.name)),
        }
    }
    ensure!(failures.is_empty(), "failures:\n{}", failures.join("\n"));

    // Nothing was stored by any of them.
    let tenants: TenantList = gw
        .http
        .get(gw.url("/v1/admin/tenants"))
        .bearer_auth(&gw.operator_token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(tenants.tenants.len(), 1);
    let users: UserList = gw
        .http
        .get(gw.url("/v1/users"))
        .bearer_auth(&acme.api_key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(users.users.len(), 1, "only alice");
    assert_eq!(users.users[0].devices.len(), 1);
    let stock: KeyPackageStock = gw
        .http
        .get(gw.url("/v1/keypackages/stock"))
        .header("authorization", alice.auth())
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        stock,
        KeyPackageStock {
            one_time: 0,
            last_resort: false
        }
    );
    Ok(())
}
