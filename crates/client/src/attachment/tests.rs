//! Unit tests of the chunked attachment format: round trips at every size boundary and every
//! tampering case the format claims to detect.

use super::format::*;

const CHUNK: u32 = 1024;
const SEALED: usize = CHUNK as usize + TAG_LEN;

fn data(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed) | 0x9e37_0000;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn encrypt(plain: &[u8], chunk: u32) -> (AttachmentKey, Vec<u8>) {
    let mut out = Vec::new();
    let key = encrypt_stream_with(&mut &plain[..], &mut out, chunk).unwrap();
    (key, out)
}

fn decrypt(key: &AttachmentKey, ct: &[u8]) -> Result<Vec<u8>, AttachmentError> {
    let mut out = Vec::new();
    decrypt_stream(key, &mut &ct[..], &mut out).map(|_| out)
}

/// A key that claims the file has `chunks` chunks, all full (to test the AEAD flags on their
/// own, as if the length in the message were wrong too).
fn key_claiming(key: &AttachmentKey, ciphertext_len: u64) -> AttachmentKey {
    let mut k = key.clone();
    let chunks = (ciphertext_len as usize).div_ceil(SEALED) as u64;
    k.size = ciphertext_len - chunks * TAG_LEN as u64;
    k.ciphertext_len = ciphertext_len;
    k.ciphertext_sha256 = None;
    k
}

#[test]
fn round_trips_at_every_boundary() {
    let c = CHUNK as usize;
    for len in [0, 1, c - 1, c, c + 1, 2 * c, 3 * c + 7, 10 * c] {
        let plain = data(len, 1);
        let (key, ct) = encrypt(&plain, CHUNK);
        assert_eq!(key.size, len as u64);
        assert_eq!(key.ciphertext_len, ct.len() as u64, "len {len}");
        assert_eq!(ciphertext_len(len as u64, CHUNK), Some(ct.len() as u64));
        let chunks = len.div_ceil(c).max(1);
        assert_eq!(ct.len(), len + chunks * TAG_LEN, "len {len}");
        assert_eq!(
            key.plaintext_sha256.as_slice(),
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &plain).as_ref()
        );
        assert_eq!(decrypt(&key, &ct).unwrap(), plain, "len {len}");
        // The key from a message has no ciphertext digest; it still verifies.
        let mut from_message = key.clone();
        from_message.ciphertext_sha256 = None;
        assert_eq!(decrypt(&from_message, &ct).unwrap(), plain);
    }
}

#[test]
fn default_chunk_size_round_trip_and_fresh_keys() {
    let c = DEFAULT_CHUNK_SIZE as usize;
    for len in [0, 1, c - 1, c, c + 1] {
        let plain = data(len, 2);
        let mut ct = Vec::new();
        let key = encrypt_stream(&mut &plain[..], &mut ct).unwrap();
        assert_eq!(decrypt(&key, &ct).unwrap(), plain);
    }
    let (a, ct_a) = encrypt(b"same", CHUNK);
    let (b, ct_b) = encrypt(b"same", CHUNK);
    assert_ne!(a.cek, b.cek, "every attachment gets a fresh key");
    assert_ne!(a.nonce_prefix, b.nonce_prefix);
    assert_ne!(ct_a, ct_b);
}

#[test]
fn incremental_encryptor_matches_the_stream_and_is_deterministic() {
    let plain = data(5 * CHUNK as usize + 3, 3);
    let (key, ct) = encrypt(&plain, CHUNK);
    assert_eq!(key.ciphertext_sha256, None, "not computed unless asked for");
    // Same key and prefix, fed in odd pieces: byte-identical ciphertext (what resuming needs).
    let mut enc = Encryptor::with_key(key.cek, key.nonce_prefix, CHUNK)
        .unwrap()
        .with_ciphertext_digest();
    let mut out = Vec::new();
    for piece in plain.chunks(333) {
        enc.update(piece, &mut out).unwrap();
    }
    let again = enc.finish(&mut out).unwrap();
    assert_eq!(out, ct);
    let ct_digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &ct);
    assert_eq!(
        again.ciphertext_sha256.map(|d| d.to_vec()),
        Some(ct_digest.as_ref().to_vec())
    );
    assert_eq!(
        (again.cek, again.plaintext_sha256, again.size),
        (key.cek, key.plaintext_sha256, key.size)
    );
    // A key that knows the ciphertext digest checks it too.
    let mut wrong = again.clone();
    if let Some(d) = wrong.ciphertext_sha256.as_mut() {
        d[0] ^= 1;
    }
    assert!(matches!(
        decrypt(&wrong, &ct),
        Err(AttachmentError::DigestMismatch)
    ));
    assert_eq!(decrypt(&again, &ct).unwrap(), plain);
    // Incremental decryption in odd pieces.
    let mut dec = Decryptor::new(&key).unwrap();
    let mut plain_out = Vec::new();
    for piece in ct.chunks(517) {
        dec.update(piece, &mut plain_out).unwrap();
    }
    assert_eq!(dec.finish().unwrap().size, plain.len() as u64);
    assert_eq!(plain_out, plain);
}

#[test]
fn encryptor_refuses_misuse() {
    let mut enc = Encryptor::new(CHUNK).unwrap();
    let mut short = vec![0u8; 10];
    assert!(matches!(
        enc.seal_chunk(&mut short, false),
        Err(AttachmentError::Misuse(_))
    ));
    assert!(matches!(enc.key(), Err(AttachmentError::Misuse(_))));
    enc.seal_chunk(&mut short, true).unwrap();
    let mut more = vec![0u8; 1];
    assert!(matches!(
        enc.seal_chunk(&mut more, true),
        Err(AttachmentError::Misuse(_))
    ));
    assert!(matches!(
        Encryptor::new(MIN_CHUNK_SIZE - 1),
        Err(AttachmentError::InvalidParameters(_))
    ));
    assert!(Encryptor::new(MAX_CHUNK_SIZE + 1).is_err());
}

#[test]
fn truncation_is_detected() {
    let plain = data(3 * CHUNK as usize + 100, 4);
    let (key, ct) = encrypt(&plain, CHUNK);
    let without_last = &ct[..3 * SEALED];
    assert!(matches!(
        decrypt(&key, without_last),
        Err(AttachmentError::Truncated { .. })
    ));
    assert!(matches!(
        decrypt(&key, &ct[..ct.len() - 1]),
        Err(AttachmentError::Truncated { .. })
    ));
    assert!(matches!(
        decrypt(&key, &[]),
        Err(AttachmentError::Truncated { .. })
    ));
    // Even if the length in the message were cut down too, the last remaining chunk was not
    // sealed as final and fails.
    let lying = key_claiming(&key, without_last.len() as u64);
    assert!(matches!(
        decrypt(&lying, without_last),
        Err(AttachmentError::ChunkCorrupted { index: 2 })
    ));
}

#[test]
fn extension_is_detected() {
    let plain = data(2 * CHUNK as usize + 5, 5);
    let (key, ct) = encrypt(&plain, CHUNK);
    let mut longer = ct.clone();
    longer.push(0);
    assert!(matches!(
        decrypt(&key, &longer),
        Err(AttachmentError::TrailingData)
    ));
    // A whole extra chunk sealed under the same key cannot be produced without the key; one
    // from the file itself (a copy of chunk 0) is refused, also with a length claiming it.
    let mut extended = ct[..2 * SEALED].to_vec();
    extended.extend_from_slice(&ct[..SEALED]);
    extended.extend_from_slice(&ct[2 * SEALED..]);
    assert!(matches!(
        decrypt(&key, &extended),
        Err(AttachmentError::TrailingData)
    ));
    let lying = key_claiming(&key, extended.len() as u64);
    assert!(matches!(
        decrypt(&lying, &extended),
        Err(AttachmentError::ChunkCorrupted { index: 2 })
    ));
    // A file ending on a full final chunk, followed by any bytes, with a length that claims
    // them: the real final chunk is opened as non-final and fails.
    let exact = data(2 * CHUNK as usize, 6);
    let (k2, ct2) = encrypt(&exact, CHUNK);
    let mut ext2 = ct2.clone();
    ext2.extend_from_slice(&[0u8; TAG_LEN + 1]);
    let lying = key_claiming(&k2, ext2.len() as u64);
    assert!(matches!(
        decrypt(&lying, &ext2),
        Err(AttachmentError::ChunkCorrupted { index: 1 })
    ));
}

#[test]
fn reordering_is_detected() {
    let plain = data(4 * CHUNK as usize, 7);
    let (key, ct) = encrypt(&plain, CHUNK);
    let mut swapped = ct.clone();
    let (a, b) = swapped.split_at_mut(2 * SEALED);
    a[SEALED..].swap_with_slice(&mut b[..SEALED]);
    assert!(matches!(
        decrypt(&key, &swapped),
        Err(AttachmentError::ChunkCorrupted { index: 1 })
    ));
}

#[test]
fn chunks_from_another_file_are_detected() {
    let (key, ct) = encrypt(&data(3 * CHUNK as usize, 8), CHUNK);
    let (_, other) = encrypt(&data(3 * CHUNK as usize, 9), CHUNK);
    let mut spliced = ct.clone();
    spliced[SEALED..2 * SEALED].copy_from_slice(&other[SEALED..2 * SEALED]);
    assert!(matches!(
        decrypt(&key, &spliced),
        Err(AttachmentError::ChunkCorrupted { index: 1 })
    ));
    // The whole other file under this key: refused at its first chunk.
    assert!(matches!(
        decrypt(&key, &other),
        Err(AttachmentError::ChunkCorrupted { index: 0 })
    ));
}

#[test]
fn flipped_bits_and_wrong_keys_are_detected() {
    let plain = data(2 * CHUNK as usize + 9, 10);
    let (key, ct) = encrypt(&plain, CHUNK);
    for pos in [0, SEALED - 1, SEALED + 3, ct.len() - 1] {
        let mut bad = ct.clone();
        bad[pos] ^= 0x01;
        assert!(
            matches!(
                decrypt(&key, &bad),
                Err(AttachmentError::ChunkCorrupted { .. })
            ),
            "flip at {pos}"
        );
    }
    let mut wrong = key.clone();
    wrong.cek[0] ^= 1;
    assert!(matches!(
        decrypt(&wrong, &ct),
        Err(AttachmentError::ChunkCorrupted { index: 0 })
    ));
    let mut wrong = key.clone();
    wrong.nonce_prefix[6] ^= 1;
    assert!(matches!(
        decrypt(&wrong, &ct),
        Err(AttachmentError::ChunkCorrupted { index: 0 })
    ));
    // The chunk size is bound into every chunk: a key claiming another size fails.
    let mut wrong = key.clone();
    wrong.chunk_size = CHUNK / 2;
    wrong.ciphertext_len = ciphertext_len(wrong.size, wrong.chunk_size).unwrap();
    assert!(decrypt(&wrong, &ct).is_err());
}

#[test]
fn digest_and_size_claims_are_checked() {
    let plain = data(CHUNK as usize + 1, 11);
    let (key, ct) = encrypt(&plain, CHUNK);
    let mut wrong = key.clone();
    wrong.plaintext_sha256[0] ^= 1;
    assert!(matches!(
        decrypt(&wrong, &ct),
        Err(AttachmentError::DigestMismatch)
    ));
    let mut wrong = key.clone();
    wrong.size += 1;
    assert!(matches!(
        decrypt(&wrong, &ct),
        Err(AttachmentError::InvalidParameters(_))
    ));
    let shown = format!("{key:?}");
    assert!(!shown.contains("cek") && !shown.contains(&format!("{:?}", key.cek)));
}
