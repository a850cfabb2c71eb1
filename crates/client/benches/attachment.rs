//! Attachment format throughput next to the raw AEAD ceiling, and peak memory while
//! encrypting and decrypting a 1 GiB stream (SYSTEM.md §7: ≥ 80 % of aws-lc-rs AES-256-GCM;
//! ≤ 64 MiB).
//!
//! `cargo bench -p sealgate-client --bench attachment` (release). Every figure is measured in
//! this run on this machine: raw AES-256-GCM on one core (in place, 1 MiB and 64 KiB buffers;
//! the higher is the ceiling), BLAKE3 alone on one core (the format keeps a plaintext digest),
//! and the format's `encrypt_stream` / `decrypt_stream` from memory to a sink, as shipped (two
//! threads: the calling one reads, seals or opens and writes; a second one hashes) and forced
//! onto one thread. So the shipped figure uses up to two cores against a one-core ceiling; the
//! CPU time it used is printed next to it. The memory figures are measured first, before the
//! large buffers of the throughput runs exist, from `VmHWM` in `/proc/self/status`.

use std::io::Read;
use std::time::Instant;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sealgate_client::attachment::format::{
    AttachmentKey, DEFAULT_CHUNK_SIZE, Encryptor, Threads, decrypt_stream_with,
};

const MIB: usize = 1024 * 1024;
const DATA: usize = 512 * MIB;
const RSS_STREAM: u64 = 1024 * MIB as u64;
const RUNS: usize = 3;
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

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

/// The ciphertext of a [`Pattern`] under a given key, produced while it is read (so the
/// decryption run needs no 1 GiB buffer either).
struct Sealing {
    plain: Pattern,
    enc: Option<Encryptor>,
    piece: Vec<u8>,
    out: Vec<u8>,
    pos: usize,
}

impl Read for Sealing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.out.len() {
            let Some(enc) = self.enc.as_mut() else {
                return Ok(0);
            };
            self.out.clear();
            self.pos = 0;
            let n = self.plain.read(&mut self.piece)?;
            if n == 0 {
                if let Some(enc) = self.enc.take() {
                    enc.finish(&mut self.out).map_err(std::io::Error::other)?;
                }
            } else {
                enc.update(&self.piece[..n], &mut self.out)
                    .map_err(std::io::Error::other)?;
            }
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
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

/// CPU seconds (user + system, all threads) this process used so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name; 100 ticks/s.
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => 0.0,
    }
}

/// Best of `RUNS` in GB/s (10^9 bytes per second) for `bytes` processed by `f`, and the CPU
/// time over wall time of all runs (how many cores it kept busy on average).
fn best(bytes: usize, mut f: impl FnMut()) -> (f64, f64) {
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let best = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            bytes as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max);
    let cores = (cpu_seconds() - cpu0) / wall0.elapsed().as_secs_f64();
    (best, cores)
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
    .0
}

fn encrypt(data: &[u8], threads: Threads) -> AttachmentKey {
    Encryptor::new(DEFAULT_CHUNK_SIZE)
        .expect("encryptor")
        .seal_stream(&mut &data[..], &mut std::io::sink(), threads)
        .expect("encrypt")
}

/// Peak RSS in MiB (reset first where the kernel allows) and seconds for `f`.
fn peak_rss(f: impl FnOnce()) -> (f64, f64, f64) {
    let _ = std::fs::write("/proc/self/clear_refs", "5"); // reset VmHWM where allowed
    let before = status_kib("VmHWM:").unwrap_or(0);
    let t = Instant::now();
    f();
    let secs = t.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:").unwrap_or(0);
    (peak as f64 / 1024.0, before as f64 / 1024.0, secs)
}

fn main() {
    // 1. Peak memory while encrypting and decrypting a 1 GiB stream (before anything big
    //    exists), as shipped (two threads).
    let pattern = || Pattern {
        left: RSS_STREAM,
        x: SEED,
    };
    let mut key = None;
    let (peak, before, secs) = peak_rss(|| {
        let k = Encryptor::new(DEFAULT_CHUNK_SIZE)
            .expect("encryptor")
            .seal_stream(&mut pattern(), &mut std::io::sink(), Threads::Two)
            .expect("encrypt 1 GiB");
        key = Some(k);
    });
    let key = key.expect("key");
    assert_eq!(key.size, RSS_STREAM);
    println!(
        "1 GiB stream -> sink, encrypt: {secs:.2} s, peak RSS (VmHWM) {peak:.1} MiB (before: {before:.1} MiB); target <= 64 MiB"
    );
    let (peak, before, secs) = peak_rss(|| {
        let mut sealed = Sealing {
            plain: pattern(),
            enc: Some(Encryptor::with_key(key.cek, key.nonce_prefix, key.chunk_size).expect("enc")),
            piece: vec![0u8; 256 * 1024],
            out: Vec::new(),
            pos: 0,
        };
        let v = decrypt_stream_with(&key, &mut sealed, &mut std::io::sink(), Threads::Two)
            .expect("decrypt 1 GiB");
        assert_eq!(v.size, RSS_STREAM);
    });
    println!(
        "1 GiB stream -> sink, decrypt (its reader seals the ciphertext on the fly): {secs:.2} s, peak RSS {peak:.1} MiB (before: {before:.1} MiB)"
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
    let ceiling = raw_1m.max(raw_64k);
    // BLAKE3 over the 512 MiB in memory, as the raw AEAD runs.
    let (b3, _) = best(DATA, || {
        std::hint::black_box(blake3::hash(&data));
    });
    let (b3_pieces, _) = best(DATA, || {
        let mut h = blake3::Hasher::new();
        for piece in data.chunks(DEFAULT_CHUNK_SIZE as usize) {
            h.update(piece);
        }
        std::hint::black_box(h.finalize());
    });
    // What the hashing thread sees: a batch (1 MiB) the other core just wrote, in cache.
    let (b3_cached, _) = best(DATA, || {
        let mut h = blake3::Hasher::new();
        for _ in 0..DATA / MIB {
            h.update(&data[..MIB]);
        }
        std::hint::black_box(h.finalize());
    });
    let mut copy = vec![0u8; MIB];
    let (memcpy, _) = best(DATA, || {
        for piece in data.chunks(DEFAULT_CHUNK_SIZE as usize) {
            copy[..piece.len()].copy_from_slice(piece);
            std::hint::black_box(&copy);
        }
    });

    // Encrypt to a sink, as decryption does, so neither side pays for a 512 MiB output copy.
    let (enc2, enc2_cores) = best(DATA, || {
        encrypt(&data, Threads::Two);
    });
    let (enc1, enc1_cores) = best(DATA, || {
        encrypt(&data, Threads::One);
    });
    let mut ciphertext = Vec::with_capacity(DATA + DATA / 4096 + 64);
    let key = Encryptor::new(DEFAULT_CHUNK_SIZE)
        .expect("encryptor")
        .seal_stream(&mut &data[..], &mut ciphertext, Threads::Two)
        .expect("encrypt");
    assert_eq!(&key.plaintext_digest, blake3::hash(&data).as_bytes());
    let decrypt = |threads| {
        best(DATA, || {
            let v = decrypt_stream_with(&key, &mut &ciphertext[..], &mut std::io::sink(), threads)
                .expect("decrypt");
            assert_eq!(v.size, DATA as u64);
        })
    };
    let (dec2, dec2_cores) = decrypt(Threads::Two);
    let (dec1, dec1_cores) = decrypt(Threads::One);

    let pct = |x: f64| 100.0 * x / ceiling;
    println!("raw AES-256-GCM, 1 MiB buffers, one core:   {raw_1m:6.2} GB/s");
    println!(
        "raw AES-256-GCM, 64 KiB buffers, one core:  {raw_64k:6.2} GB/s  (ceiling: the higher)"
    );
    println!(
        "BLAKE3 alone, one core, one call:           {b3:6.2} GB/s = {:5.1} % of raw",
        pct(b3)
    );
    println!(
        "BLAKE3 alone, one core, 64 KiB updates:     {b3_pieces:6.2} GB/s = {:5.1} % of raw",
        pct(b3_pieces)
    );
    println!(
        "BLAKE3 alone, one core, 1 MiB in cache:     {b3_cached:6.2} GB/s = {:5.1} % of raw",
        pct(b3_cached)
    );
    println!(
        "memcpy 64 KiB pieces out of the data:       {memcpy:6.2} GB/s  (the copy out of the reader)"
    );
    println!(
        "format encrypt, as shipped (2 threads):     {enc2:6.2} GB/s = {:5.1} % of raw (target >= 80 %), {enc2_cores:.2} cores busy",
        pct(enc2)
    );
    println!(
        "format decrypt, as shipped (2 threads):     {dec2:6.2} GB/s = {:5.1} % of raw (target >= 80 %), {dec2_cores:.2} cores busy",
        pct(dec2)
    );
    println!(
        "format encrypt, forced onto one thread:     {enc1:6.2} GB/s = {:5.1} % of raw, {enc1_cores:.2} cores busy",
        pct(enc1)
    );
    println!(
        "format decrypt, forced onto one thread:     {dec1:6.2} GB/s = {:5.1} % of raw, {dec1_cores:.2} cores busy",
        pct(dec1)
    );
    println!(
        "note: the raw AES-256-GCM ceiling is one core; the shipped format hashes on a second \
         thread (for inputs over one batch), so it may use two cores to reach its figure."
    );
}
