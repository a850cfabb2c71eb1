//! Attachment format throughput next to the raw AEAD ceiling, and peak memory while
//! encrypting a 1 GiB stream (SYSTEM.md §7: ≥ 80 % of aws-lc-rs AES-256-GCM; ≤ 64 MiB).
//!
//! `cargo bench -p sealgate-client --bench attachment` (release). Every figure is measured in
//! this run on this machine: raw AES-256-GCM (in place, 1 MiB and 64 KiB buffers), SHA-256
//! alone (the format keeps a plaintext digest), and the format's `encrypt_stream` / `decrypt_stream`
//! from memory to a sink. The memory figure is measured first, before the large buffers of the
//! throughput runs exist, from `VmHWM` in `/proc/self/status`.

use std::io::Read;
use std::time::Instant;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::digest;
use sealgate_client::attachment::format::{decrypt_stream, encrypt_stream};

const MIB: usize = 1024 * 1024;
const DATA: usize = 512 * MIB;
const RSS_STREAM: u64 = 1024 * MIB as u64;
const RUNS: usize = 3;

/// An endless pseudo-random stream of `left` bytes that owns no large buffer.
struct Pattern {
    left: u64,
    x: u64,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for word in buf[..n].chunks_mut(8) {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            let bytes = self.x.to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Best of `RUNS` in GB/s (10^9 bytes per second) for `bytes` processed by `f`.
fn best(bytes: usize, mut f: impl FnMut()) -> f64 {
    (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            bytes as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn raw_gcm(data: &mut [u8], piece: usize) -> f64 {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).expect("key"));
    let len = data.len();
    best(len, || {
        for (i, chunk) in data.chunks_mut(piece).enumerate() {
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&(i as u64).to_be_bytes());
            let tag = key
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::empty(), chunk)
                .expect("seal");
            let _ = std::hint::black_box(tag);
        }
    })
}

fn main() {
    // 1. Peak memory while encrypting a 1 GiB stream to a sink (before anything big exists).
    let _ = std::fs::write("/proc/self/clear_refs", "5"); // reset VmHWM where allowed
    let before = status_kib("VmHWM:").unwrap_or(0);
    let t = Instant::now();
    let key = encrypt_stream(
        &mut Pattern {
            left: RSS_STREAM,
            x: 0x9e37_79b9_7f4a_7c15,
        },
        &mut std::io::sink(),
    )
    .expect("encrypt 1 GiB");
    let secs = t.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:").unwrap_or(0);
    assert_eq!(key.size, RSS_STREAM);
    println!(
        "1 GiB stream -> sink: {:.2} s, peak RSS (VmHWM) {:.1} MiB (before: {:.1} MiB); target <= 64 MiB",
        secs,
        peak as f64 / 1024.0,
        before as f64 / 1024.0
    );

    // 2. Throughput over the same bytes.
    let mut data = vec![0u8; DATA];
    Pattern {
        left: DATA as u64,
        x: 1,
    }
    .read_exact(&mut data)
    .expect("fill");
    let mut scratch = data.clone();
    let raw_1m = raw_gcm(&mut scratch, MIB);
    let raw_64k = raw_gcm(&mut scratch, 64 * 1024);
    drop(scratch);
    let sha = best(DATA, || {
        std::hint::black_box(digest::digest(&digest::SHA256, &data));
    });

    // Encrypt to a sink, as decryption does, so neither side pays for a 512 MiB output copy.
    let enc = best(DATA, || {
        encrypt_stream(&mut &data[..], &mut std::io::sink()).expect("encrypt");
    });
    let mut ciphertext = Vec::with_capacity(DATA + DATA / 4096 + 64);
    let key = encrypt_stream(&mut &data[..], &mut ciphertext).expect("encrypt");
    let dec = best(DATA, || {
        let v = decrypt_stream(&key, &mut &ciphertext[..], &mut std::io::sink()).expect("decrypt");
        assert_eq!(v.size, DATA as u64);
    });
    let ceiling = raw_1m.max(raw_64k);
    println!("raw AES-256-GCM, 1 MiB buffers:   {raw_1m:6.2} GB/s");
    println!("raw AES-256-GCM, 64 KiB buffers:  {raw_64k:6.2} GB/s");
    println!("SHA-256 alone:                    {sha:6.2} GB/s");
    println!(
        "format encrypt (chunks + SHA-256):   {enc:6.2} GB/s = {:5.1} % of raw (target >= 80 %)",
        100.0 * enc / ceiling
    );
    println!(
        "format decrypt (chunks + SHA-256):   {dec:6.2} GB/s = {:5.1} % of raw",
        100.0 * dec / ceiling
    );
    // The plaintext digest is one SHA-256 pass; its time, measured above, subtracted.
    let layer = |t: f64| (1.0 / (1.0 / t - 1.0 / sha)).min(ceiling);
    println!(
        "chunked AEAD layer alone (derived: format time - SHA-256 time): encrypt {:5.1} %, decrypt {:5.1} % of raw",
        100.0 * layer(enc) / ceiling,
        100.0 * layer(dec) / ceiling
    );
}
