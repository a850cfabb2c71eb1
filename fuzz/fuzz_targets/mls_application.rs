#![no_main]
use libfuzzer_sys::fuzz_target;
use sealgate_server::ds::engine;

fuzz_target!(|data: &[u8]| {
    let _ = engine::check_application(data, b"0123456789abcdef");
});
