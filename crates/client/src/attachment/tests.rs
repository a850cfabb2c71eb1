//! Unit tests of the chunked attachment format: round trips at every size boundary and every
//! tampering case the format claims to detect, through every way of encrypting and decrypting
//! (streaming on one thread and on two, with batches of a few chunks, and incremental).

use std::io::Read;

use super::AttachmentRef;
use super::format::*;

const CHUNK: u32 = 1024;
const SEALED: usize = CHUNK as usize + TAG_LEN;
/// Chunks per batch in the tests' streaming runs, so a few chunks cross batch boundaries.
const BATCH_CHUNKS: usize = 3;

fn config(threads: Threads, batch_chunks: usize, chunk: u32) -> StreamConfig {
    StreamConfig {
        threads,
        batch_bytes: batch_chunks * chunk as usize,
    }
}

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

/// Encrypt with a fresh key, then again with the same key every other way: the ciphertext
/// and key must be byte-identical whichever way (and however many threads) produced them.
fn encrypt(plain: &[u8], chunk: u32) -> (AttachmentKey, Vec<u8>) {
    let mut out = Vec::new();
    let key = encrypt_stream_with(&mut &plain[..], &mut out, chunk).unwrap();
    for threads in [Threads::One, Threads::Two] {
        let mut again = Vec::new();
        let enc = Encryptor::with_key(key.cek, key.nonce_prefix, chunk).unwrap();
        let k = enc
            .seal_stream_batched(
                &mut &plain[..],
                &mut again,
                config(threads, BATCH_CHUNKS, chunk),
            )
            .unwrap();
        assert_eq!((&k, &again), (&key, &out), "{threads:?}");
    }
    let mut enc = Encryptor::with_key(key.cek, key.nonce_prefix, chunk).unwrap();
    let mut again = Vec::new();
    for piece in plain.chunks(333) {
        enc.update(piece, &mut again).unwrap();
    }
    assert_eq!(enc.finish(&mut again).unwrap(), key, "incremental");
    assert_eq!(again, out, "incremental");
    (key, out)
}

/// Decrypt every way (streaming on one and two threads with small batches, the default
/// streaming function, incremental in odd pieces); all must agree, success or error.
fn decrypt(key: &AttachmentKey, ct: &[u8]) -> Result<Vec<u8>, AttachmentError> {
    let stream = |threads: Threads, batch_chunks: usize| {
        let mut out = Vec::new();
        let cfg = config(threads, batch_chunks, key.chunk_size);
        decrypt_stream_batched(key, &mut &ct[..], &mut out, cfg).map(|v| {
            assert_eq!(v.size, out.len() as u64);
            assert_eq!(&v.plaintext_digest, blake3::hash(&out).as_bytes());
            out
        })
    };
    let incremental = || {
        let mut dec = Decryptor::new(key)?;
        let mut out = Vec::new();
        for piece in ct.chunks(517) {
            dec.update(piece, &mut out)?;
        }
        dec.finish().map(|_| out)
    };
    let mut default_out = Vec::new();
    let default = decrypt_stream(key, &mut &ct[..], &mut default_out).map(|_| default_out);
    let shown = |r: &Result<Vec<u8>, AttachmentError>| format!("{r:?}");
    let expected = shown(&default);
    for (what, other) in [
        ("one thread", stream(Threads::One, BATCH_CHUNKS)),
        ("two threads", stream(Threads::Two, BATCH_CHUNKS)),
        ("two threads, one chunk a batch", stream(Threads::Two, 1)),
        ("incremental", incremental()),
    ] {
        assert_eq!(shown(&other), expected, "{what}");
    }
    default
}

/// A key that claims the file has `chunks` chunks, all full (to test the AEAD flags on their
/// own, as if the length in the message were wrong too).
fn key_claiming(key: &AttachmentKey, ciphertext_len: u64) -> AttachmentKey {
    let mut k = key.clone();
    let chunks = (ciphertext_len as usize).div_ceil(SEALED) as u64;
    k.size = ciphertext_len - chunks * TAG_LEN as u64;
    k.ciphertext_len = ciphertext_len;
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
        assert_eq!(&key.plaintext_digest, blake3::hash(&plain).as_bytes());
        assert_eq!(decrypt(&key, &ct).unwrap(), plain, "len {len}");
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
    // Same key and prefix, fed in odd pieces: byte-identical ciphertext (what resuming needs).
    let mut enc = Encryptor::with_key(key.cek, key.nonce_prefix, CHUNK).unwrap();
    let mut out = Vec::new();
    for piece in plain.chunks(333) {
        enc.update(piece, &mut out).unwrap();
    }
    let again = enc.finish(&mut out).unwrap();
    assert_eq!(out, ct);
    assert_eq!(
        (again.cek, again.plaintext_digest, again.size),
        (key.cek, key.plaintext_digest, key.size)
    );
    // The zero-copy chunk API, as uploads use it, gives the same bytes too.
    let mut enc = Encryptor::with_key(key.cek, key.nonce_prefix, CHUNK).unwrap();
    let mut out = Vec::new();
    let pieces: Vec<&[u8]> = plain.chunks(CHUNK as usize).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let mut buf = piece.to_vec();
        enc.seal_chunk(&mut buf, i + 1 == pieces.len()).unwrap();
        out.extend_from_slice(&buf);
    }
    assert_eq!(out, ct);
    assert_eq!(enc.key().unwrap(), key);
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
    wrong.plaintext_digest[0] ^= 1;
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

/// Encrypt with `config`, decrypt with `config`; check both against a one-shot BLAKE3.
fn round_trip_with(plain: &[u8], chunk: u32, cfg: StreamConfig) -> (AttachmentKey, Vec<u8>) {
    let enc = Encryptor::new(chunk).unwrap();
    let mut ct = Vec::new();
    let key = enc
        .seal_stream_batched(&mut &plain[..], &mut ct, cfg)
        .unwrap();
    let expected = blake3::hash(plain);
    assert_eq!(
        &key.plaintext_digest,
        expected.as_bytes(),
        "len {}",
        plain.len()
    );
    assert_eq!(key.size, plain.len() as u64);
    assert_eq!(key.ciphertext_len, ct.len() as u64);
    let mut out = Vec::new();
    let verified = decrypt_stream_batched(&key, &mut &ct[..], &mut out, cfg).unwrap();
    assert_eq!(verified.plaintext_digest, key.plaintext_digest);
    assert!(out == plain, "len {}", plain.len());
    (key, ct)
}

#[test]
fn parallel_path_matches_one_shot_blake3_and_single_thread_across_batches() {
    let c = CHUNK as usize;
    let batch = 4;
    let b = batch * c;
    for len in [
        0,
        1,
        c - 1,
        c,
        c + 1,
        b - 1,
        b,
        b + 1,
        2 * b - 1,
        2 * b,
        2 * b + 1,
        3 * b + c + 7,
        7 * b,
    ] {
        let plain = data(len, 12);
        let (key, ct) = round_trip_with(&plain, CHUNK, config(Threads::Two, batch, CHUNK));
        // The same key on one thread: byte-identical ciphertext and the same key.
        let mut single = Vec::new();
        let k1 = Encryptor::with_key(key.cek, key.nonce_prefix, CHUNK)
            .unwrap()
            .seal_stream_batched(
                &mut &plain[..],
                &mut single,
                config(Threads::One, batch, CHUNK),
            )
            .unwrap();
        assert_eq!(k1, key, "len {len}");
        assert!(single == ct, "len {len}");
        round_trip_with(&plain, CHUNK, config(Threads::One, batch, CHUNK));
    }
}

#[test]
fn parallel_path_with_the_default_batch_and_chunk_size() {
    let c = DEFAULT_CHUNK_SIZE as usize;
    for len in [
        BATCH_BYTES - 1,
        BATCH_BYTES,
        BATCH_BYTES + 1,
        BATCH_BYTES + c,
        3 * BATCH_BYTES + 5,
    ] {
        let plain = data(len, 13);
        let mut ct = Vec::new();
        let key = encrypt_stream(&mut &plain[..], &mut ct).unwrap();
        assert_eq!(&key.plaintext_digest, blake3::hash(&plain).as_bytes());
        let mut single = Vec::new();
        let k1 = Encryptor::with_key(key.cek, key.nonce_prefix, DEFAULT_CHUNK_SIZE)
            .unwrap()
            .seal_stream(&mut &plain[..], &mut single, Threads::One)
            .unwrap();
        assert_eq!(k1, key);
        assert!(single == ct);
        for threads in [Threads::Two, Threads::One] {
            let mut out = Vec::new();
            let v = decrypt_stream_with(&key, &mut &ct[..], &mut out, threads).unwrap();
            assert_eq!(v.plaintext_digest, key.plaintext_digest);
            assert!(out == plain);
        }
    }
}

/// A reader that hands out a few bytes at a time, is interrupted now and then, and panics if
/// it is read again after it said the input ended.
struct Dribble<'a> {
    data: &'a [u8],
    calls: usize,
    ended: bool,
}

impl Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        assert!(!self.ended, "read again after the end of the input");
        self.calls += 1;
        if self.calls.is_multiple_of(5) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(self.data.len()).min(1 + self.calls % 700);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.ended = n == 0 && !buf.is_empty();
        Ok(n)
    }
}

#[test]
fn short_reads_and_interruptions_through_both_paths() {
    let c = CHUNK as usize;
    for len in [0, 5, 4 * c, 9 * c + 3] {
        let plain = data(len, 14);
        let (key, ct) = encrypt(&plain, CHUNK);
        for threads in [Threads::One, Threads::Two] {
            let cfg = config(threads, 2, CHUNK);
            let mut again = Vec::new();
            let k = Encryptor::with_key(key.cek, key.nonce_prefix, CHUNK)
                .unwrap()
                .seal_stream_batched(&mut Dribble::new(&plain), &mut again, cfg)
                .unwrap();
            assert_eq!(k, key);
            assert!(again == ct);
            let mut out = Vec::new();
            decrypt_stream_batched(&key, &mut Dribble::new(&ct), &mut out, cfg).unwrap();
            assert!(out == plain);
        }
    }
}

impl<'a> Dribble<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            calls: 0,
            ended: false,
        }
    }
}

#[test]
fn tampering_in_a_later_batch_is_detected_on_two_threads() {
    let c = CHUNK as usize;
    let plain = data(10 * c + 50, 15);
    let (key, ct) = encrypt(&plain, CHUNK);
    let two = config(Threads::Two, 2, CHUNK);
    let run = |key: &AttachmentKey, ct: &[u8]| {
        decrypt_stream_batched(key, &mut &ct[..], &mut std::io::sink(), two)
    };
    let mut bad = ct.clone();
    bad[7 * SEALED + 9] ^= 0x80;
    assert!(matches!(
        run(&key, &bad),
        Err(AttachmentError::ChunkCorrupted { index: 7 })
    ));
    let mut wrong = key.clone();
    wrong.plaintext_digest[31] ^= 1;
    assert!(matches!(
        run(&wrong, &ct),
        Err(AttachmentError::DigestMismatch)
    ));
    assert!(matches!(
        run(&key, &ct[..6 * SEALED]),
        Err(AttachmentError::Truncated { received, .. }) if received == 6 * SEALED as u64
    ));
    let mut longer = ct.clone();
    longer.extend_from_slice(b"x");
    assert!(matches!(
        run(&key, &longer),
        Err(AttachmentError::TrailingData)
    ));
    run(&key, &ct).unwrap();
}

#[test]
fn digest_strings_name_their_algorithm() {
    let digest = *blake3::hash(b"abc").as_bytes();
    let text = format_digest(&digest);
    assert_eq!(text, format!("blake3:{}", hex::encode(digest)));
    assert_eq!(text.len(), "blake3:".len() + 64);
    assert_eq!(parse_digest(&text).unwrap(), digest);
    let hex = hex::encode(digest);
    for bad in [
        hex.clone(),                      // version 1: bare hex (it was SHA-256)
        format!("sha256:{hex}"),          // another algorithm
        format!("BLAKE3:{hex}"),          // the prefix is exact
        format!("blake3:{}", &hex[..62]), // too short
        format!("blake3:{hex}00"),        // too long
        format!("blake3:{}zz", &hex[..62]),
        format!("blake3: {}", &hex[1..]),
        "blake3:".to_owned(),
        String::new(),
    ] {
        assert!(
            matches!(
                parse_digest(&bad),
                Err(AttachmentError::InvalidParameters(_))
            ),
            "{bad:?} accepted"
        );
    }
    let Err(AttachmentError::InvalidParameters(why)) = parse_digest(&format!("sha256:{hex}"))
    else {
        panic!("sha256 accepted");
    };
    assert!(
        why.contains("\"sha256\"") && why.contains("blake3:"),
        "{why}"
    );
}

#[test]
fn attachment_ref_carries_and_checks_the_digest_algorithm() {
    let plain = data(3 * CHUNK as usize + 1, 16);
    let (key, ct) = encrypt(&plain, CHUNK);
    let r = AttachmentRef::new("att_1".into(), "a.bin".into(), "x/y".into(), &key);
    assert_eq!(
        r.digest,
        format!("blake3:{}", blake3::hash(&plain).to_hex())
    );
    let back = r.key().unwrap();
    assert_eq!(back, key);
    assert_eq!(decrypt(&back, &ct).unwrap(), plain);
    let hex = hex::encode(key.plaintext_digest);
    for bad in [
        hex.clone(),
        format!("sha256:{hex}"),
        format!("blake3:{}", &hex[..63]),
    ] {
        let mut wrong = r.clone();
        wrong.digest = bad.clone();
        assert!(
            matches!(wrong.key(), Err(AttachmentError::InvalidParameters(_))),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn stream_encryption_needs_an_unused_encryptor() {
    let mut enc = Encryptor::new(CHUNK).unwrap();
    let mut buf = Vec::new();
    enc.update(b"already", &mut buf).unwrap();
    assert!(matches!(
        enc.seal_stream(&mut &b"more"[..], &mut buf, Threads::One),
        Err(AttachmentError::Misuse(_))
    ));
}
