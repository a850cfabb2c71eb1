//! Integration tests of policy, capability discovery, secure links and held messages: a real
//! `Gateway` on a loopback port with the carrier simulator in-process.
//!
//! Policy validation errors and the audit trail, enforcement of forbidden submissions (and
//! the route metric), capability answers from the directory and the aggregator with cache
//! invalidation on device registration and revocation, the secure-link lifecycle (one open,
//! wrong codes, expiry), and holds turning ready when a device registers.

#[path = "delivery/harness.rs"]
#[allow(dead_code)]
mod harness;

use anyhow::{Context, Result};
use harness::{RCS_E2EE, RCS_PLAIN, Rig, SMS_ONLY, sim_config};
use sealgate_carrier_sim::FaultConfig;
use serde_json::{Value, json};

async fn rig() -> Result<Rig> {
    Rig::start(Some(sim_config(FaultConfig::default())), |c| {
        c.capabilities.ttl_secs = 600;
    })
    .await
}

async fn json_of(resp: reqwest::Response) -> Result<(u16, Value)> {
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.context("json body")?))
}

async fn put_policy(rig: &Rig, content_type: &str, body: &str) -> Result<(u16, Value)> {
    json_of(
        rig.http
            .put(rig.url("/v1/policy"))
            .bearer_auth(&rig.api_key)
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .await?,
    )
    .await
}

async fn get(rig: &Rig, path: &str, token: &str) -> Result<(u16, Value)> {
    json_of(
        rig.http
            .get(rig.url(path))
            .bearer_auth(token)
            .send()
            .await?,
    )
    .await
}

/// Enroll `user` with `phone` and register a device (raw key; no MLS needed here).
async fn register(rig: &Rig, user: &str, phone: Option<&str>) -> Result<String> {
    let (s, e) = json_of(
        rig.http
            .post(rig.url("/v1/enrollments"))
            .bearer_auth(&rig.api_key)
            .json(&json!({"user": user, "phone": phone}))
            .send()
            .await?,
    )
    .await?;
    anyhow::ensure!(s == 201 || s == 200, "enrollment: {s} {e}");
    let (s, d) = json_of(
        rig.http
            .post(rig.url("/v1/devices"))
            .json(&json!({"enrollment_token": e["token"], "signature_key": sealgate_proto::b64::encode(&[7u8; 32])}))
            .send()
            .await?,
    )
    .await?;
    anyhow::ensure!(s == 201, "device: {s} {d}");
    Ok(d["device_token"].as_str().context("token")?.to_owned())
}

#[tokio::test]
async fn policy_validation_lists_every_problem_and_changes_are_audited() -> Result<()> {
    let rig = rig().await?;
    let (s, v) = get(&rig, "/v1/policy", &rig.api_key).await?;
    assert_eq!(s, 200);
    assert_eq!(v["version"], 0);
    assert_eq!(v["source"], "default");
    assert_eq!(v["classes"]["sensitive"][2], json!({"step": "block"}));

    let bad = r#"{"classes": {"sensitive": ["plain_sms", "e2ee"], "vip": ["e2ee"],
        "marketing": [{"step": "secure_link", "over": "pigeon"}, "teleport"]}}"#;
    let (s, p) = put_policy(&rig, "application/json", bad).await?;
    assert_eq!(s, 422);
    assert_eq!(p["code"], "invalid_policy");
    let errors: Vec<String> = serde_json::from_value(p["errors"].clone())?;
    assert_eq!(errors.len(), 4, "{errors:?}");
    for needle in [
        "classes.sensitive[1]: `e2ee` can only be the first step",
        "classes.vip: unknown message class",
        "classes.marketing[0].over",
        "classes.marketing[1]: unknown step",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "{needle} not in {errors:?}"
        );
    }
    let (s, p) = put_policy(&rig, "text/plain", "{}").await?;
    assert_eq!(
        (s, p["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (_, v) = get(&rig, "/v1/policy", &rig.api_key).await?;
    assert_eq!(v["version"], 0, "a refused policy changes nothing");

    let (s, v1) = put_policy(
        &rig,
        "application/toml",
        "[classes]\nmarketing = [\"e2ee\", \"redacted_text\", \"plain_sms\"]\n",
    )
    .await?;
    assert_eq!(s, 200, "{v1}");
    assert_eq!(v1["version"], 1);
    let (_, v2) = put_policy(
        &rig,
        "application/json",
        r#"{"classes": {"marketing": ["e2ee", "block"]}}"#,
    )
    .await?;
    assert_eq!(v2["version"], 2);
    let (_, h) = get(&rig, "/v1/policy/history", &rig.api_key).await?;
    let changes = h["changes"].as_array().context("changes")?;
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0]["version"], 2);
    assert_eq!(changes[0]["previous_version"], 1);
    assert_eq!(changes[0]["previous_digest"], v1["digest"]);
    assert_eq!(changes[0]["digest"], v2["digest"]);
    assert_eq!(changes[1]["previous_version"], 0);
    let actor = changes[0]["actor"].as_str().context("actor")?;
    assert!(actor.starts_with("api_key:") && !actor.contains(&rig.api_key[4..]));

    // Another tenant is unaffected and cannot read this history.
    let other = rig.gateway.create_tenant("other").await?;
    let (_, v) = get(&rig, "/v1/policy", &other.api_key).await?;
    assert_eq!(v["version"], 0);
    let (_, h) = get(&rig, "/v1/policy/history", &other.api_key).await?;
    assert_eq!(h["changes"], json!([]));
    Ok(())
}

#[tokio::test]
async fn forbidden_submissions_are_refused_and_routes_counted() -> Result<()> {
    let rig = rig().await?;
    let send = |key: &'static str, body: Value, reason: Option<&'static str>| {
        let mut req = rig
            .http
            .post(rig.url("/v1/messages"))
            .bearer_auth(&rig.api_key)
            .header("Idempotency-Key", key)
            .json(&body);
        if let Some(r) = reason {
            req = req.header("sealgate-fallback-reason", r);
        }
        req.send()
    };
    // Default policy: sensitive may not go plain SMS, plain RCS or redacted.
    for (n, body) in [
        json!({"text": "CANARY", "channel": "sms"}),
        json!({"text": "CANARY", "channel": "rcs"}),
        json!({"redacted": {"text": "x", "channel": "sms"}}),
    ]
    .into_iter()
    .enumerate()
    {
        let resp = send(
            ["f1", "f2", "f3"][n],
            json!({"to": SMS_ONLY, "class": "sensitive", "body": body}),
            None,
        )
        .await?;
        let (s, p) = json_of(resp).await?;
        assert_eq!(
            (s, p["code"].as_str()),
            (403, Some("policy_forbids_route")),
            "{p}"
        );
        assert!(!p.to_string().contains("CANARY"));
    }
    // A secure-link notification needs a real link of this tenant, for this recipient.
    let resp = send(
        "f4",
        json!({"to": SMS_ONLY, "class": "sensitive",
               "body": {"secure_link": {"link_id": "lk00", "channel": "sms", "text": "x/l/lk00#k=y"}}}),
        None,
    )
    .await?;
    assert_eq!(json_of(resp).await?.1["code"], "unknown_link");
    // Marketing may go plain SMS; the reason header labels the metric.
    let resp = send(
        "ok1",
        json!({"to": SMS_ONLY, "class": "marketing", "body": {"text": "sale"}}),
        Some("no_e2ee_device"),
    )
    .await?;
    assert_eq!(resp.status(), 202);
    let metrics = rig.metrics().await?;
    for series in [
        r#"sealgate_route_refused_total{class="sensitive",route="plain_sms"} 1"#,
        r#"sealgate_route_refused_total{class="sensitive",route="redacted_text"} 1"#,
        r#"sealgate_route_total{class="marketing",reason="no_e2ee_device",route="plain_sms"} 1"#,
        r#"code="policy_forbids_route""#,
    ] {
        assert!(metrics.contains(series), "missing {series}");
    }
    // In a batch the reason header labels every fallback message that is stored; a refused
    // one (sensitive plain SMS) is counted as refused, not as a route.
    let resp = rig
        .http
        .post(rig.url("/v1/messages/batch"))
        .bearer_auth(&rig.api_key)
        .header("sealgate-fallback-reason", "no_e2ee_device")
        .json(&json!({"messages": [
            {"idempotency_key": "b1", "to": SMS_ONLY, "class": "marketing", "body": {"text": "a"}},
            {"idempotency_key": "b2", "to": SMS_ONLY, "class": "marketing", "body": {"text": "b"}},
            {"idempotency_key": "b3", "to": SMS_ONLY, "class": "sensitive",
             "body": {"text": "c", "channel": "sms"}},
        ]}))
        .send()
        .await?;
    let (s, r) = json_of(resp).await?;
    assert_eq!(
        (s, &r["accepted"], &r["refused"]),
        (200, &json!(2), &json!(1)),
        "{r}"
    );
    let metrics = rig.metrics().await?;
    for series in [
        r#"sealgate_route_total{class="marketing",reason="no_e2ee_device",route="plain_sms"} 3"#,
        r#"sealgate_route_refused_total{class="sensitive",route="plain_sms"} 2"#,
    ] {
        assert!(metrics.contains(series), "missing {series}");
    }
    // A policy that blocks marketing fallbacks refuses what was allowed a moment ago.
    let (s, _) = put_policy(
        &rig,
        "application/json",
        r#"{"classes": {"marketing": ["e2ee", "block"]}}"#,
    )
    .await?;
    assert_eq!(s, 200);
    let resp = send(
        "ok2",
        json!({"to": SMS_ONLY, "class": "marketing", "body": {"text": "sale"}}),
        None,
    )
    .await?;
    assert_eq!(resp.status(), 403);
    Ok(())
}

#[tokio::test]
async fn capabilities_come_from_directory_and_carrier_and_refresh_on_device_changes() -> Result<()>
{
    let rig = rig().await?;
    let (s, c) = get(&rig, &format!("/v1/capabilities/{RCS_E2EE}"), &rig.api_key).await?;
    assert_eq!(s, 200, "{c}");
    assert_eq!(
        (
            c["rcs"].as_bool(),
            c["carrier_e2ee"].as_bool(),
            c["sms"].as_bool()
        ),
        (Some(true), Some(true), Some(true))
    );
    assert_eq!(
        (c["e2ee_devices"].as_u64(), c["cached"].as_bool()),
        (Some(0), Some(false))
    );
    let (_, c) = get(&rig, &format!("/v1/capabilities/{RCS_PLAIN}"), &rig.api_key).await?;
    assert_eq!(
        (c["rcs"].as_bool(), c["carrier_e2ee"].as_bool()),
        (Some(true), Some(false))
    );
    let (_, c) = get(&rig, &format!("/v1/capabilities/{SMS_ONLY}"), &rig.api_key).await?;
    assert_eq!(
        (c["rcs"].as_bool(), c["sms"].as_bool()),
        (Some(false), Some(true))
    );
    let (_, again) = get(&rig, &format!("/v1/capabilities/{SMS_ONLY}"), &rig.api_key).await?;
    assert_eq!(again["cached"], true);
    assert_eq!(again["learned_at"], c["learned_at"]);
    let (s, p) = get(&rig, "/v1/capabilities/not%20a%20number", &rig.api_key).await?;
    assert_eq!((s, p["code"].as_str()), (422, Some("invalid_field")));

    // Registering a device is seen at once, despite the 10-minute TTL.
    let token = register(&rig, "dana", Some(SMS_ONLY)).await?;
    let (_, c) = get(&rig, &format!("/v1/capabilities/{SMS_ONLY}"), &rig.api_key).await?;
    assert_eq!(
        (c["e2ee_devices"].as_u64(), c["cached"].as_bool()),
        (Some(1), Some(false))
    );
    assert_eq!(c["user"], "dana");
    // A device token may ask too (same tenant), by user id.
    let (s, c) = get(&rig, "/v1/capabilities/dana", &token).await?;
    assert_eq!((s, c["e2ee_devices"].as_u64()), (200, Some(1)));
    assert_eq!(c["sms"], true, "the user's number gives an SMS route");
    // Revoking it too.
    let resp = rig
        .http
        .delete(rig.url("/v1/devices/me"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(resp.status(), 204);
    let (_, c) = get(&rig, &format!("/v1/capabilities/{SMS_ONLY}"), &rig.api_key).await?;
    assert_eq!(
        (c["e2ee_devices"].as_u64(), c["cached"].as_bool()),
        (Some(0), Some(false))
    );
    Ok(())
}

async fn create_link(rig: &Rig, to: &str) -> Result<String> {
    let mut ct = vec![1u8];
    ct.extend([9u8; 40]);
    let (s, v) = json_of(
        rig.http
            .post(rig.url("/v1/links"))
            .bearer_auth(&rig.api_key)
            .json(&json!({"recipient": to, "ciphertext": sealgate_proto::b64::encode(&ct)}))
            .send()
            .await?,
    )
    .await?;
    anyhow::ensure!(s == 201, "create link: {s} {v}");
    assert_eq!(
        v["path"],
        format!("/l/{}", v["link_id"].as_str().unwrap_or_default())
    );
    Ok(v["link_id"].as_str().context("id")?.to_owned())
}

async fn post_link(rig: &Rig, id: &str, what: &str, body: Value) -> Result<(u16, Value)> {
    json_of(
        rig.http
            .post(rig.url(&format!("/l/{id}/{what}")))
            .json(&body)
            .send()
            .await?,
    )
    .await
}

async fn wait_for_code(rig: &Rig, phone: &str, n: usize) -> Result<String> {
    for _ in 0..200 {
        let codes: Vec<String> = rig
            .sim()
            .inbox(phone)
            .iter()
            .filter_map(|m| m.text.as_deref())
            .filter_map(|t| t.split("message: ").nth(1))
            .map(|t| t.chars().take(6).collect())
            .collect();
        if codes.len() >= n {
            return Ok(codes[n - 1].clone());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    anyhow::bail!("no code arrived")
}

#[tokio::test]
async fn secure_links_open_once_lock_after_wrong_codes_and_expire() -> Result<()> {
    let rig = Rig::start(Some(sim_config(FaultConfig::default())), |c| {
        c.links.otp_resend_secs = 0;
        c.links.max_attempts = 3;
    })
    .await?;
    let phone = "+15552000777";
    let id = create_link(&rig, phone).await?;
    let page = rig.http.get(rig.url(&format!("/l/{id}"))).send().await?;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()?
        .to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    let html = page.text().await?;
    assert!(html.contains(r#"data-state="active""#) && !html.contains("http"));

    let (s, p) = post_link(&rig, &id, "open", json!({"code": "123456"})).await?;
    assert_eq!(
        (s, p["code"].as_str()),
        (403, Some("invalid_code")),
        "no code requested yet"
    );
    let (s, sent) = post_link(&rig, &id, "otp", json!({})).await?;
    assert_eq!(s, 200, "{sent}");
    assert!(
        sent["to"]
            .as_str()
            .is_some_and(|t| t.ends_with("0777") && !t.contains("2000"))
    );
    let code = wait_for_code(&rig, phone, 1).await?;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (s, p) = post_link(&rig, &id, "open", json!({"code": wrong})).await?;
    assert_eq!((s, p["code"].as_str()), (403, Some("invalid_code")));
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("2 attempt"))
    );
    let (s, v) = post_link(&rig, &id, "open", json!({"code": code})).await?;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["ciphertext"]
            .as_str()
            .is_some_and(|c| c.starts_with("AQk")),
        "{v}"
    );
    let (s, p) = post_link(&rig, &id, "open", json!({"code": code})).await?;
    assert_eq!((s, p["code"].as_str()), (410, Some("link_used")));
    let page = rig.http.get(rig.url(&format!("/l/{id}"))).send().await?;
    assert_eq!(page.status(), 410);
    assert!(page.text().await?.contains(r#"data-state="used""#));
    let (s, _) = post_link(&rig, &id, "otp", json!({})).await?;
    assert_eq!(s, 410);

    // Wrong codes lock the link and wipe it.
    let id2 = create_link(&rig, phone).await?;
    post_link(&rig, &id2, "otp", json!({})).await?;
    let code = wait_for_code(&rig, phone, 2).await?;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..2 {
        let (s, _) = post_link(&rig, &id2, "open", json!({"code": wrong})).await?;
        assert_eq!(s, 403);
    }
    let (s, p) = post_link(&rig, &id2, "open", json!({"code": wrong})).await?;
    assert_eq!((s, p["code"].as_str()), (429, Some("too_many_attempts")));
    let (s, _) = post_link(&rig, &id2, "open", json!({"code": code})).await?;
    assert_eq!(s, 429, "the right code no longer helps");

    // Expiry: the ciphertext is deleted, the page and the API say so.
    let id3 = create_link(&rig, phone).await?;
    let db = rig.db().await?;
    sqlx::query("UPDATE secure_links SET expires_at = 1 WHERE link_id = ?")
        .bind(&id3)
        .execute(&db)
        .await?;
    let (s, p) = post_link(&rig, &id3, "open", json!({"code": "123456"})).await?;
    assert_eq!((s, p["code"].as_str()), (410, Some("link_expired")));
    let wiped: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM secure_links WHERE ciphertext IS NOT NULL AND link_id != ?",
    )
    .bind("none")
    .fetch_one(&db)
    .await?;
    assert_eq!(
        wiped.0, 0,
        "used, locked and expired links keep no ciphertext"
    );
    let (s, p) = post_link(&rig, "lk0123", "open", json!({"code": "1"})).await?;
    assert_eq!((s, p["code"].as_str()), (404, Some("unknown_link")));
    Ok(())
}

#[tokio::test]
async fn holds_turn_ready_when_the_recipient_registers_a_device() -> Result<()> {
    let rig = rig().await?;
    let hold = json!({"to": "+15552000888", "class": "transactional", "ttl_secs": 60});
    let post = || {
        rig.http
            .post(rig.url("/v1/holds"))
            .bearer_auth(&rig.api_key)
            .json(&hold)
            .send()
    };
    let (s, p) = json_of(post().await?).await?;
    assert_eq!(
        (s, p["code"].as_str()),
        (403, Some("policy_forbids_route")),
        "not in the default chain"
    );
    let (s, _) = put_policy(
        &rig,
        "application/json",
        r#"{"classes": {"transactional": ["e2ee", {"step": "queue_until_e2ee", "ttl_secs": 60}, "plain_sms"]}}"#,
    )
    .await?;
    assert_eq!(s, 200);
    let (s, h) = json_of(post().await?).await?;
    assert_eq!((s, h["status"].as_str()), (201, Some("waiting")), "{h}");
    let id = h["hold_id"].as_str().context("id")?.to_owned();
    register(&rig, "erin", Some("+15552000888")).await?;
    let (_, h) = get(&rig, &format!("/v1/holds/{id}"), &rig.api_key).await?;
    assert_eq!(h["status"], "ready");
    let (_, list) = get(&rig, "/v1/holds", &rig.api_key).await?;
    assert_eq!(list["holds"].as_array().map(Vec::len), Some(1));
    let resp = rig
        .http
        .delete(rig.url(&format!("/v1/holds/{id}")))
        .bearer_auth(&rig.api_key)
        .send()
        .await?;
    assert_eq!(resp.status(), 204);
    let (_, list) = get(&rig, "/v1/holds", &rig.api_key).await?;
    assert_eq!(list["holds"], json!([]));
    Ok(())
}
