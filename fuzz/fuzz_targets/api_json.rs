#![no_main]
use libfuzzer_sys::fuzz_target;
use sealgate_proto::api::*;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<CreateTenantRequest>(data);
    let _ = serde_json::from_slice::<CreateEnrollmentRequest>(data);
    let _ = serde_json::from_slice::<RegisterDeviceRequest>(data);
    let _ = serde_json::from_slice::<PublishKeyPackagesRequest>(data);
    let _ = serde_json::from_slice::<ClaimKeyPackagesRequest>(data);
    let _ = serde_json::from_slice::<CreateGroupRequest>(data);
    let _ = serde_json::from_slice::<SubmitCommitRequest>(data);
    let _ = serde_json::from_slice::<SendMessageRequest>(data);
    let _ = serde_json::from_slice::<AckRequest>(data);
});
