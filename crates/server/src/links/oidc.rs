//! OIDC sign-in for secure links: verification of an ID token against the tenant's JSON Web
//! Key Set, so a recipient who signed in with the tenant's identity provider can open a link
//! without (or, when the tenant requires it, instead of) the one-time code.
//!
//! Only what the gateway can check is checked here: the signature (RS256 or ES256, with
//! aws-lc-rs), `iss`, `aud` (and `azp` when there are several audiences), `exp`/`nbf` with a
//! small leeway, and the binding claim (`phone_number`, equal to the link's recipient). The
//! `nonce` and `state` of the implicit flow are checked by the viewer page, which made them.
//!
//! Key sets are fetched over HTTP with a short timeout, without redirects, size-bounded, and
//! cached per URL for [`JWKS_TTL`]; a token whose `kid` is unknown triggers one refetch (at most
//! every [`REFETCH_GAP`] per URL, so bad tokens cannot make the gateway hammer the provider).
//! Nothing here logs a token, a claim value or a phone number.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sealgate_proto::policy::LinkOidc;
use serde::Deserialize;

/// How long a fetched key set is trusted.
pub const JWKS_TTL: Duration = Duration::from_secs(300);
/// Least time between two fetches of one key set forced by an unknown `kid`.
pub const REFETCH_GAP: Duration = Duration::from_secs(2);
/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: i64 = 60;
/// Largest key set accepted.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Largest ID token accepted.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused. The `Display` text is safe to show (no claim values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not accepted (RS256 or ES256)")]
    Algorithm,
    #[error("no key of the identity provider matches the token")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token was issued by another issuer")]
    Issuer,
    #[error("the token was issued for another client")]
    Audience,
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the signed-in identity is not this link's recipient")]
    Recipient,
    #[error("the identity provider's keys could not be fetched")]
    Jwks,
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// One key of a JWKS (only the members used here).
#[derive(Debug, Clone, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    Es256,
}

impl Jwk {
    /// Does this key fit a token signed with `alg` under `kid`?
    fn fits(&self, alg: Alg, kid: Option<&str>) -> bool {
        let (kty, name) = match alg {
            Alg::Rs256 => ("RSA", "RS256"),
            Alg::Es256 => ("EC", "ES256"),
        };
        self.kty == kty
            && self.alg.as_deref().is_none_or(|a| a == name)
            && self.use_.as_deref().is_none_or(|u| u == "sig")
            && (alg != Alg::Es256 || self.crv.as_deref() == Some("P-256"))
            && match kid {
                Some(k) => self.kid.as_deref() == Some(k),
                None => true,
            }
    }

    fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> bool {
        let b = |v: &Option<String>| v.as_deref().and_then(|s| URL_SAFE_NO_PAD.decode(s).ok());
        match alg {
            Alg::Rs256 => {
                let (Some(n), Some(e)) = (b(&self.n), b(&self.e)) else {
                    return false;
                };
                RsaPublicKeyComponents { n: &n, e: &e }
                    .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                    .is_ok()
            }
            Alg::Es256 => {
                let (Some(x), Some(y)) = (b(&self.x), b(&self.y)) else {
                    return false;
                };
                if x.len() != 32 || y.len() != 32 {
                    return false;
                }
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
                    .verify(message, sig)
                    .is_ok()
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    phone_number: Option<String>,
    #[serde(default)]
    phone_number_verified: Option<bool>,
}

struct Cached {
    keys: Arc<Vec<Jwk>>,
    fetched: Instant,
}

/// Verifies ID tokens; holds the key-set cache. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    http: reqwest::Client,
    cache: Arc<Mutex<HashMap<String, Cached>>>,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

/// `+1 (555) 123-4567` → `+15551234567`: providers format numbers loosely.
fn normalize_phone(p: &str) -> String {
    p.chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect()
}

impl Verifier {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            http,
            cache: Arc::default(),
        }
    }

    async fn fetch(&self, url: &str) -> Result<Arc<Vec<Jwk>>, TokenError> {
        let fail = |what: &str| {
            tracing::warn!(what, "OIDC key set fetch failed");
            TokenError::Jwks
        };
        let resp = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|_| fail("request"))?;
        if !resp.status().is_success() {
            return Err(fail("status"));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(fail("too large"));
        }
        let body = resp.bytes().await.map_err(|_| fail("body"))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err(fail("too large"));
        }
        let jwks: Jwks = serde_json::from_slice(&body).map_err(|_| fail("not a JWKS"))?;
        let keys = Arc::new(jwks.keys);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() > 1000 {
            cache.clear();
        }
        cache.insert(
            url.to_owned(),
            Cached {
                keys: keys.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(keys)
    }

    /// The cached keys of `url` and whether a forced refetch is allowed now.
    fn cached(&self, url: &str) -> (Option<Arc<Vec<Jwk>>>, bool) {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.get(url) {
            Some(c) if c.fetched.elapsed() < JWKS_TTL => {
                (Some(c.keys.clone()), c.fetched.elapsed() >= REFETCH_GAP)
            }
            _ => (None, true),
        }
    }

    /// Verify `token` under `cfg` for a link whose recipient is `recipient` (E.164), at
    /// `now_secs` (Unix seconds).
    pub async fn verify(
        &self,
        cfg: &LinkOidc,
        token: &str,
        recipient: &str,
        now_secs: i64,
    ) -> Result<(), TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed);
        let header: Header =
            serde_json::from_slice(&decode(h64)?).map_err(|_| TokenError::Malformed)?;
        let alg = match header.alg.as_str() {
            "RS256" => Alg::Rs256,
            "ES256" => Alg::Es256,
            _ => return Err(TokenError::Algorithm),
        };
        let sig = decode(s64)?;
        let payload = decode(p64)?;
        let message = &token.as_bytes()[..h64.len() + 1 + p64.len()];
        let kid = header.kid.as_deref();

        let (cached, may_refetch) = self.cached(&cfg.jwks_url);
        let (keys, fresh) = match cached {
            Some(k) => (k, false),
            None => (self.fetch(&cfg.jwks_url).await?, true),
        };
        let mut verdict = check_keys(&keys, alg, kid, message, &sig);
        if verdict == Err(TokenError::UnknownKey) && !fresh && may_refetch {
            let keys = self.fetch(&cfg.jwks_url).await?;
            verdict = check_keys(&keys, alg, kid, message, &sig);
        }
        verdict?;

        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if claims.iss.as_deref() != Some(cfg.issuer.as_str()) {
            return Err(TokenError::Issuer);
        }
        let auds: Vec<&str> = match &claims.aud {
            Some(serde_json::Value::String(a)) => vec![a.as_str()],
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            _ => Vec::new(),
        };
        if !auds.contains(&cfg.audience.as_str()) {
            return Err(TokenError::Audience);
        }
        if auds.len() > 1 && claims.azp.as_deref() != Some(cfg.audience.as_str()) {
            return Err(TokenError::Audience);
        }
        let now = now_secs as f64;
        let leeway = LEEWAY_SECS as f64;
        match claims.exp {
            Some(exp) if now <= exp + leeway => {}
            _ => return Err(TokenError::Expired),
        }
        if claims.nbf.is_some_and(|nbf| now + leeway < nbf) {
            return Err(TokenError::NotYetValid);
        }
        let bound = claims.phone_number_verified != Some(false)
            && claims
                .phone_number
                .as_deref()
                .is_some_and(|p| normalize_phone(p) == recipient);
        if !bound {
            return Err(TokenError::Recipient);
        }
        Ok(())
    }
}

fn check_keys(
    keys: &[Jwk],
    alg: Alg,
    kid: Option<&str>,
    message: &[u8],
    sig: &[u8],
) -> Result<(), TokenError> {
    let mut candidates = keys.iter().filter(|k| k.fits(alg, kid)).peekable();
    if candidates.peek().is_none() {
        return Err(TokenError::UnknownKey);
    }
    if candidates.any(|k| k.verify(alg, message, sig)) {
        Ok(())
    } else {
        Err(TokenError::Signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_normalized_and_malformed_tokens_refused() {
        assert_eq!(normalize_phone("+1 (555) 123-4567"), "+15551234567");
        let v = Verifier::new();
        let cfg = LinkOidc {
            issuer: "https://idp.example".into(),
            jwks_url: "http://127.0.0.1:9/jwks".into(),
            audience: "viewer".into(),
            claim: "phone_number".into(),
            required: false,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        for bad in ["", "a.b", "a.b.c.d", "!!.e30.AA"] {
            assert_eq!(
                rt.block_on(v.verify(&cfg, bad, "+15551234567", 0)),
                Err(TokenError::Malformed)
            );
        }
        let none_alg = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(b"{}")
        );
        assert_eq!(
            rt.block_on(v.verify(&cfg, &none_alg, "+15551234567", 0)),
            Err(TokenError::Algorithm)
        );
    }
}
