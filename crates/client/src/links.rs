//! Secure links, client side: encrypt a message under a fresh AES-256-GCM key for the
//! gateway's browser viewer, and put the key where only the recipient sees it — the URL
//! fragment (`…/l/{id}#k=<base64url key>`), which browsers never send to a server.
//!
//! Format (what the viewer's WebCrypto code decrypts): `0x01 || nonce(12) ||
//! AES-256-GCM(plaintext) || tag(16)`, additional data `sealgate secure link v1`; the
//! plaintext is the same JSON [`Payload`] as inside MLS messages. No I/O here; the key never
//! leaves this module except inside the URL it builds.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sealgate_proto::policy::{LINK_AAD, LINK_FORMAT_V1, LINK_KEY_PARAM};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::payload::Payload;

/// A sealed secure-link message: the ciphertext to upload and the key for the fragment.
pub struct SealedLink {
    pub ciphertext: Vec<u8>,
    pub key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SealedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedLink")
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

fn crypto(what: &str) -> Error {
    Error::Crypto(format!("secure link: {what}"))
}

/// Encrypt `text` (as a text [`Payload`]) under a fresh key.
pub fn seal(text: &str, sent_at: i64) -> Result<SealedLink> {
    let rng = SystemRandom::new();
    let mut key = Zeroizing::new([0u8; 32]);
    rng.fill(key.as_mut()).map_err(|_| crypto("random"))?;
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| crypto("random"))?;
    let aead =
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_ref()).map_err(|_| crypto("key"))?);
    let mut body = Payload::text(text, sent_at).encode();
    aead.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(LINK_AAD),
        &mut body,
    )
    .map_err(|_| crypto("encrypt"))?;
    let mut ciphertext = Vec::with_capacity(1 + NONCE_LEN + body.len());
    ciphertext.push(LINK_FORMAT_V1);
    ciphertext.extend_from_slice(&nonce);
    ciphertext.extend_from_slice(&body);
    Ok(SealedLink { ciphertext, key })
}

/// Decrypt a secure-link ciphertext (what the viewer does; used by tests and tools).
pub fn open(ciphertext: &[u8], key: &[u8; 32]) -> Result<Payload> {
    if ciphertext.len() < 1 + NONCE_LEN + 16 || ciphertext[0] != LINK_FORMAT_V1 {
        return Err(crypto("unknown format"));
    }
    let nonce = Nonce::try_assume_unique_for_key(&ciphertext[1..1 + NONCE_LEN])
        .map_err(|_| crypto("nonce"))?;
    let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).map_err(|_| crypto("key"))?);
    let mut body = ciphertext[1 + NONCE_LEN..].to_vec();
    let plain = aead
        .open_in_place(nonce, Aad::from(LINK_AAD), &mut body)
        .map_err(|_| crypto("does not decrypt (wrong key or damaged)"))?;
    Payload::decode(plain).map_err(|e| crypto(&e.to_string()))
}

/// `{base}{path}#k=<base64url key>`.
pub fn link_url(base: &str, path: &str, key: &[u8; 32]) -> String {
    format!(
        "{}{path}#{LINK_KEY_PARAM}={}",
        base.trim_end_matches('/'),
        URL_SAFE_NO_PAD.encode(key)
    )
}

/// The key in a link's fragment.
pub fn key_from_url(url: &str) -> Option<[u8; 32]> {
    let (_, fragment) = url.split_once('#')?;
    let value = fragment
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{LINK_KEY_PARAM}=")))?;
    URL_SAFE_NO_PAD.decode(value).ok()?.try_into().ok()
}

/// The text sent to the recipient: no content, only the link.
pub fn notification_text(url: &str) -> String {
    format!(
        "You have a secure message. Open it here (a one-time code will be sent to this number): {url}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let sealed = seal("balance: 1,234.56", 7).unwrap();
        assert_eq!(sealed.ciphertext[0], 1);
        let url = link_url("https://gw.example/", "/l/lkabc", &sealed.key);
        assert!(url.starts_with("https://gw.example/l/lkabc#k="));
        let key = key_from_url(&url).unwrap();
        assert_eq!(&key, sealed.key.as_ref());
        match open(&sealed.ciphertext, &key).unwrap() {
            Payload::Text { text, sent_at } => {
                assert_eq!(text, "balance: 1,234.56");
                assert_eq!(sent_at, 7);
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut bad = sealed.ciphertext.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(open(&bad, &key).is_err());
        assert!(open(&sealed.ciphertext, &[0u8; 32]).is_err());
        assert!(key_from_url("https://x/l/y").is_none());
        assert!(!notification_text(&url).contains("1,234"));
    }
}
