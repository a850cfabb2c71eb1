#![no_main]
use libfuzzer_sys::fuzz_target;
use sealgate_proto::DeviceIdentity;
use sealgate_server::directory::keypackage;

fuzz_target!(|data: &[u8]| {
    if let Ok(device) = DeviceIdentity::new("tn1", "alice", "dv1") {
        let _ = keypackage::validate(data, &device, &[0u8; 32]);
    }
});
