#![no_main]
use libfuzzer_sys::fuzz_target;
use sealgate_client::Payload;

fuzz_target!(|data: &[u8]| {
    let _ = Payload::decode(data);
});
