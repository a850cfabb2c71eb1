#![no_main]
use libfuzzer_sys::fuzz_target;
use sealgate_proto::DeviceIdentity;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = DeviceIdentity::parse(data) {
        // Parsing is strict: what parses must print back to the same bytes.
        assert_eq!(id.to_credential_bytes(), data);
    }
});
