//! The checked-in `docs/openapi.json` must be exactly what the gateway serves, so the API
//! reference cannot drift from the code. Regenerate with
//! `cargo run -p sealgate -- openapi > docs/openapi.json`.

use std::process::Command;

#[test]
fn checked_in_spec_matches_the_code() {
    let out = Command::new(env!("CARGO_BIN_EXE_sealgate"))
        .arg("openapi")
        .output()
        .expect("running sealgate openapi");
    assert!(out.status.success());
    let generated: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("sealgate openapi prints JSON");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let checked_in: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("docs/openapi.json exists"))
            .expect("docs/openapi.json is JSON");
    assert!(
        generated == checked_in,
        "docs/openapi.json is stale: run `cargo run -p sealgate -- openapi > docs/openapi.json`"
    );

    // Every route of the API is documented, with its problem responses.
    let paths = generated["paths"].as_object().expect("paths");
    for route in [
        "/v1/admin/tenants",
        "/v1/enrollments",
        "/v1/devices",
        "/v1/keypackages",
        "/v1/keypackages/claim",
        "/v1/groups",
        "/v1/groups/{group_id}/commits",
        "/v1/groups/{group_id}/messages",
        "/v1/mailbox",
        "/v1/mailbox/ack",
        "/v1/attachments",
        "/v1/attachments/{attachment_id}",
        "/v1/attachments/{attachment_id}/download-url",
        "/v1/blobs/{attachment_id}",
        "/v1/policy",
        "/v1/policy/history",
        "/v1/capabilities/{recipient}",
        "/v1/holds",
        "/v1/holds/{hold_id}",
        "/v1/links",
        "/l/{link_id}",
        "/l/{link_id}/otp",
        "/l/{link_id}/open",
    ] {
        assert!(paths.contains_key(route), "{route} missing from the spec");
    }
}
