//! Integration tests of OIDC sign-in for secure links: a real `Gateway` on a loopback port, a
//! tiny JWKS server (axum) serving an RSA and an EC P-256 key generated here, and ID tokens
//! minted with aws-lc-rs.
//!
//! A valid token bound to the recipient's number opens a link once; tokens with the wrong
//! audience, issuer, lifetime, signature, key id or phone number are refused with
//! `401 invalid_id_token`, release nothing and count toward the attempt limit; `required`
//! refuses the one-time code; without configuration the token path is refused.

#[path = "delivery/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use harness::Rig;
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.example.test";
const AUDIENCE: &str = "sealgate-viewer";
const PHONE: &str = "+15550001111";

struct Idp {
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    jwks_url: String,
    fetches: Arc<AtomicUsize>,
    /// Once set, the key set also publishes the RSA key as `r2` (a rotation).
    rotated: Arc<AtomicBool>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
    )
    .unwrap_or_default()
}

impl Idp {
    async fn start() -> Result<Self> {
        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow::anyhow!("rsa"))?;
        let ec = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| anyhow::anyhow!("ec"))?;
        let point = ec.public_key().as_ref().to_vec();
        anyhow::ensure!(
            point.len() == 65 && point[0] == 4,
            "uncompressed P-256 point"
        );
        let jwks = json!({"keys": [
            {
                "kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig",
                "n": B64.encode(rsa.public_key().modulus().big_endian_without_leading_zero()),
                "e": B64.encode(rsa.public_key().exponent().big_endian_without_leading_zero()),
            },
            {
                "kty": "EC", "kid": "e1", "crv": "P-256", "use": "sig",
                "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..]),
            },
        ]});
        let fetches = Arc::new(AtomicUsize::new(0));
        let rotated = Arc::new(AtomicBool::new(false));
        let counter = fetches.clone();
        let flag = rotated.clone();
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let mut jwks = jwks.clone();
                let counter = counter.clone();
                let flag = flag.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    if flag.load(Ordering::SeqCst) {
                        let mut r2 = jwks["keys"][0].clone();
                        r2["kid"] = json!("r2");
                        if let Some(keys) = jwks["keys"].as_array_mut() {
                            keys.push(r2);
                        }
                    }
                    axum::Json(jwks)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let jwks_url = format!("http://{}/jwks", listener.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Self {
            rsa,
            ec,
            jwks_url,
            fetches,
            rotated,
            _stop: tx,
        })
    }

    fn claims(&self, phone: &str) -> Value {
        json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "phone_number": phone,
            "phone_number_verified": true, "nonce": "n", "iat": now(), "exp": now() + 300,
        })
    }

    /// RS256 with the published key unless `kid` says otherwise.
    fn rs256(&self, kid: &str, claims: &Value) -> Result<String> {
        let input = signing_input("RS256", kid, claims);
        let mut sig = vec![0u8; self.rsa.public_modulus_len()];
        self.rsa
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| anyhow::anyhow!("sign"))?;
        Ok(format!("{input}.{}", B64.encode(sig)))
    }

    fn es256(&self, claims: &Value) -> Result<String> {
        let input = signing_input("ES256", "e1", claims);
        let sig = self
            .ec
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| anyhow::anyhow!("sign"))?;
        Ok(format!("{input}.{}", B64.encode(sig.as_ref())))
    }
}

fn signing_input(alg: &str, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": alg, "typ": "JWT", "kid": kid});
    format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

async fn json_of(resp: reqwest::Response) -> Result<(u16, Value)> {
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.context("json body")?))
}

async fn set_oidc(rig: &Rig, idp: &Idp, required: bool) -> Result<(u16, Value)> {
    json_of(
        rig.http
            .put(rig.url("/v1/policy"))
            .bearer_auth(&rig.api_key)
            .json(&json!({
                "classes": {"sensitive": ["e2ee", {"step": "secure_link", "over": "sms"}, "block"]},
                "secure_link": {"oidc": {
                    "issuer": ISSUER, "jwks_url": idp.jwks_url, "audience": AUDIENCE,
                    "required": required,
                }},
            }))
            .send()
            .await?,
    )
    .await
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

async fn ciphertext_kept(rig: &Rig, id: &str) -> Result<bool> {
    let db = rig.db().await?;
    let row: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM secure_links WHERE link_id = ? AND ciphertext IS NOT NULL",
    )
    .bind(id)
    .fetch_one(&db)
    .await?;
    Ok(row.0 == 1)
}

#[tokio::test]
async fn a_bound_token_opens_once_and_bad_tokens_release_nothing() -> Result<()> {
    let rig = Rig::start(None, |c| c.links.max_attempts = 20).await?;
    let idp = Idp::start().await?;
    let (s, v) = set_oidc(&rig, &idp, false).await?;
    assert_eq!(s, 200, "{v}");
    let (s, v) = json_of(
        rig.http
            .get(rig.url("/v1/policy"))
            .bearer_auth(&rig.api_key)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(s, 200);
    assert_eq!(v["secure_link"]["oidc"]["audience"], AUDIENCE);
    assert_eq!(v["secure_link"]["oidc"]["claim"], "phone_number");

    let id = create_link(&rig, PHONE).await?;
    // The viewer offers sign-in, pointing at the provider.
    let page = rig.http.get(rig.url(&format!("/l/{id}"))).send().await?;
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await?;
    assert!(html.contains(&format!("data-oidc-authorize=\"{ISSUER}/authorize\"")));
    assert!(html.contains(&format!("data-oidc-client=\"{AUDIENCE}\"")));
    assert!(html.contains("data-oidc-required=\"false\""));

    let good = idp.claims(PHONE);
    let mut bad: Vec<(&str, String)> = Vec::new();
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    bad.push((
        "wrong audience",
        idp.rs256("r1", &with("aud", json!("someone-else")))?,
    ));
    bad.push((
        "wrong issuer",
        idp.rs256("r1", &with("iss", json!("https://evil.test")))?,
    ));
    bad.push((
        "expired",
        idp.rs256("r1", &with("exp", json!(now() - 3600)))?,
    ));
    bad.push((
        "not yet valid",
        idp.rs256("r1", &with("nbf", json!(now() + 3600)))?,
    ));
    bad.push((
        "other phone",
        idp.rs256("r1", &with("phone_number", json!("+15559999999")))?,
    ));
    bad.push((
        "unverified phone",
        idp.rs256("r1", &with("phone_number_verified", json!(false)))?,
    ));
    bad.push(("unknown kid", idp.rs256("nope", &good)?));
    // Signed by a key the provider never published, under the published kid.
    let other = Idp::start().await?;
    bad.push(("bad signature", other.rs256("r1", &good)?));
    let valid = idp.rs256("r1", &good)?;
    let (head, rest) = valid.split_once('.').context("jwt")?;
    let (_, sig) = rest.split_once('.').context("jwt")?;
    let forged_payload = B64.encode(with("phone_number", json!("+15559999999")).to_string());
    bad.push(("altered payload", format!("{head}.{forged_payload}.{sig}")));
    let hs = format!(
        "{}.{}.{}",
        B64.encode(json!({"alg": "HS256", "kid": "r1"}).to_string()),
        B64.encode(good.to_string()),
        B64.encode([0u8; 32])
    );
    bad.push(("HS256", hs));
    bad.push(("not a JWT", "abc".into()));

    let fetches_before = idp.fetches.load(Ordering::SeqCst);
    for (what, token) in &bad {
        let (s, p) = post_link(&rig, &id, "open", json!({"id_token": token})).await?;
        assert_eq!(
            (s, p["code"].as_str()),
            (401, Some("invalid_id_token")),
            "{what}: {p}"
        );
        assert!(p.get("ciphertext").is_none(), "{what}");
    }
    assert!(
        idp.fetches.load(Ordering::SeqCst) <= fetches_before + 2,
        "the key set is cached (one fetch, one refetch for the unknown kid)"
    );
    assert!(ciphertext_kept(&rig, &id).await?, "nothing released");
    let attempts: (i64,) = sqlx::query_as("SELECT attempts FROM secure_links WHERE link_id = ?")
        .bind(&id)
        .fetch_one(&rig.db().await?)
        .await?;
    assert_eq!(attempts.0, i64::try_from(bad.len())?, "each counted");

    // Both code and token, or neither: refused.
    let (s, p) = post_link(
        &rig,
        &id,
        "open",
        json!({"code": "123456", "id_token": valid}),
    )
    .await?;
    assert_eq!((s, p["code"].as_str()), (422, Some("invalid_field")));

    let (s, v) = post_link(&rig, &id, "open", json!({"id_token": valid})).await?;
    assert_eq!(s, 200, "{v}");
    let ct = sealgate_proto::b64::decode(v["ciphertext"].as_str().context("ct")?).context("b64")?;
    assert_eq!(ct[0], 1);
    assert!(!ciphertext_kept(&rig, &id).await?);
    let (s, p) = post_link(&rig, &id, "open", json!({"id_token": valid})).await?;
    assert_eq!((s, p["code"].as_str()), (410, Some("link_used")));

    // ES256, and a loosely formatted number.
    let id2 = create_link(&rig, PHONE).await?;
    let token = idp.es256(&with("phone_number", json!("+1 555-000-1111")))?;
    let (s, v) = post_link(&rig, &id2, "open", json!({"id_token": token})).await?;
    assert_eq!(s, 200, "{v}");

    // Not required: the one-time code path stays open (no code was requested yet).
    let id3 = create_link(&rig, PHONE).await?;
    let (s, p) = post_link(&rig, &id3, "open", json!({"code": "123456"})).await?;
    assert_eq!((s, p["code"].as_str()), (403, Some("invalid_code")));
    Ok(())
}

#[tokio::test]
async fn bad_tokens_lock_the_link_at_the_attempt_limit() -> Result<()> {
    let rig = Rig::start(None, |c| c.links.max_attempts = 2).await?;
    let idp = Idp::start().await?;
    let (s, v) = set_oidc(&rig, &idp, false).await?;
    assert_eq!(s, 200, "{v}");
    let id = create_link(&rig, PHONE).await?;
    let wrong = idp.rs256("r1", &idp.claims("+15559999999"))?;
    let (s, p) = post_link(&rig, &id, "open", json!({"id_token": wrong})).await?;
    assert_eq!((s, p["code"].as_str()), (401, Some("invalid_id_token")));
    let (s, p) = post_link(&rig, &id, "open", json!({"id_token": wrong})).await?;
    assert_eq!((s, p["code"].as_str()), (429, Some("too_many_attempts")));
    let good = idp.rs256("r1", &idp.claims(PHONE))?;
    let (s, _) = post_link(&rig, &id, "open", json!({"id_token": good})).await?;
    assert_eq!(s, 429, "a valid token no longer helps");
    assert!(!ciphertext_kept(&rig, &id).await?);
    Ok(())
}

#[tokio::test]
async fn required_oidc_refuses_the_code_path() -> Result<()> {
    let rig = Rig::start(None, |_| {}).await?;
    let idp = Idp::start().await?;
    let (s, v) = set_oidc(&rig, &idp, true).await?;
    assert_eq!(s, 200, "{v}");
    let id = create_link(&rig, PHONE).await?;
    let html = rig
        .http
        .get(rig.url(&format!("/l/{id}")))
        .send()
        .await?
        .text()
        .await?;
    assert!(html.contains("data-oidc-required=\"true\""));
    let (s, p) = post_link(&rig, &id, "otp", json!({})).await?;
    assert_eq!((s, p["code"].as_str()), (403, Some("oidc_required")));
    let (s, p) = post_link(&rig, &id, "open", json!({"code": "123456"})).await?;
    assert_eq!((s, p["code"].as_str()), (403, Some("oidc_required")));
    assert!(ciphertext_kept(&rig, &id).await?);
    let token = idp.rs256("r1", &idp.claims(PHONE))?;
    let (s, v) = post_link(&rig, &id, "open", json!({"id_token": token})).await?;
    assert_eq!(s, 200, "{v}");
    Ok(())
}

#[tokio::test]
async fn without_oidc_the_token_path_is_refused_and_bad_settings_are_invalid() -> Result<()> {
    let rig = Rig::start(None, |_| {}).await?;
    let idp = Idp::start().await?;
    let id = create_link(&rig, PHONE).await?;
    let html = rig
        .http
        .get(rig.url(&format!("/l/{id}")))
        .send()
        .await?
        .text()
        .await?;
    assert!(html.contains("data-oidc-authorize=\"\""));
    let token = idp.rs256("r1", &idp.claims(PHONE))?;
    let (s, p) = post_link(&rig, &id, "open", json!({"id_token": token})).await?;
    assert_eq!((s, p["code"].as_str()), (409, Some("oidc_not_configured")));
    assert!(ciphertext_kept(&rig, &id).await?);

    let (s, p) = json_of(
        rig.http
            .put(rig.url("/v1/policy"))
            .bearer_auth(&rig.api_key)
            .json(&json!({
                "classes": {},
                "secure_link": {"oidc": {
                    "issuer": "ftp://idp", "jwks_url": "nope", "audience": "",
                    "claim": "email",
                }},
            }))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(
        (s, p["code"].as_str()),
        (422, Some("invalid_policy")),
        "{p}"
    );
    let errors = p["errors"].to_string();
    for needle in [
        "secure_link.oidc.issuer",
        "secure_link.oidc.jwks_url",
        "secure_link.oidc.audience",
        "secure_link.oidc.claim",
    ] {
        assert!(errors.contains(needle), "missing {needle} in {errors}");
    }
    let (s, p) = json_of(
        rig.http
            .put(rig.url("/v1/policy"))
            .bearer_auth(&rig.api_key)
            .json(&json!({"classes": {}, "secure_link": {"oidc": {"issuer": ISSUER}, "x": 1}}))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(
        (s, p["code"].as_str()),
        (422, Some("invalid_policy")),
        "{p}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_key_set_once() -> Result<()> {
    let rig = Rig::start(None, |c| c.links.max_attempts = 20).await?;
    let idp = Idp::start().await?;
    let (s, v) = set_oidc(&rig, &idp, false).await?;
    assert_eq!(s, 200, "{v}");
    let id = create_link(&rig, PHONE).await?;
    // First use fetches the key set; a token under a kid not (yet) published is refused.
    let rotated = idp.rs256("r2", &idp.claims(PHONE))?;
    let (s, p) = post_link(&rig, &id, "open", json!({"id_token": rotated})).await?;
    assert_eq!((s, p["code"].as_str()), (401, Some("invalid_id_token")));
    let after_first = idp.fetches.load(Ordering::SeqCst);
    assert_eq!(after_first, 1);
    // The provider rotates; once the refetch gap has passed, the unknown kid refetches once.
    idp.rotated.store(true, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (s, v) = post_link(&rig, &id, "open", json!({"id_token": rotated})).await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(idp.fetches.load(Ordering::SeqCst), after_first + 1);
    Ok(())
}
