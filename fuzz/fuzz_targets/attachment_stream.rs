#![no_main]
use libfuzzer_sys::fuzz_target;
use sealgate_client::attachment::format::{AttachmentKey, Decryptor, ciphertext_len};

// Downloaded attachment ciphertext is untrusted: the gateway (or anyone who can tamper with the
// blob store) chooses every byte. Decryption must fail cleanly, never panic or over-allocate.
fuzz_target!(|data: &[u8]| {
    let chunk_size = 1024;
    let size = data.len() as u64;
    let Some(ciphertext_len) = ciphertext_len(size / 2, chunk_size) else {
        return;
    };
    let key = AttachmentKey {
        cek: [7; 32],
        nonce_prefix: [1; 7],
        chunk_size,
        ciphertext_len,
        plaintext_digest: [0; 32],
        size: size / 2,
    };
    if let Ok(mut dec) = Decryptor::new(&key) {
        let mut out = Vec::new();
        for piece in data.chunks(333) {
            if dec.update(piece, &mut out).is_err() {
                return;
            }
        }
        let _ = dec.finish();
    }
});
