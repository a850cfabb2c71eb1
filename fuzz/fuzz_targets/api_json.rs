#![no_main]
use libfuzzer_sys::fuzz_target;
use sealgate_proto::api::*;
use sealgate_proto::send::{
    BatchSendRequest, CallbackConfig, CarrierEvent, PushTokenRequest, SendRequest,
};
use sealgate_server::delivery::accept::{request_hash, valid_idempotency_key};

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
    // The business send API: what a tenant backend and the aggregator may post.
    let _ = serde_json::from_slice::<CallbackConfig>(data);
    let _ = serde_json::from_slice::<CarrierEvent>(data);
    let _ = serde_json::from_slice::<PushTokenRequest>(data);
    // Any decodable send request can be hashed for idempotency (canonical re-serialisation).
    if let Ok(req) = serde_json::from_slice::<SendRequest>(data) {
        let _ = request_hash(&req);
    }
    if let Ok(batch) = serde_json::from_slice::<BatchSendRequest>(data) {
        for m in batch.messages {
            let (key, req) = m.into_parts();
            let _ = valid_idempotency_key(&key);
            let _ = request_hash(&req);
        }
    }
});
