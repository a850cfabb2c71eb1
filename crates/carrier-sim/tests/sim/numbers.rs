//! Per-number profiles: capability answers, longest-prefix rules, exact rules, the control API.

use reqwest::StatusCode;
use sealgate_carrier_sim::{Profile, Rule, SimConfig};
use serde_json::json;

use crate::common::{Harness, config, error_status};

fn rule(rcs: bool, e2ee: bool) -> Rule {
    Rule {
        rcs: Some(rcs),
        e2ee: Some(e2ee),
        ..Rule::default()
    }
}

fn prefixed() -> SimConfig {
    let mut c = config();
    c.prefixes.insert("+1555".into(), rule(true, false));
    c.prefixes.insert("+15557".into(), rule(true, true));
    c.prefixes.insert("+155579".into(), rule(false, false));
    c
}

#[tokio::test]
async fn capabilities_follow_default_and_longest_prefix() {
    let h = Harness::start(prefixed()).await;

    // Default profile: SMS only, so no RCS capability.
    let r = h.capabilities("+447700900123").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_status(r).await, "NOT_FOUND");

    let r = h.capabilities("+15551230000").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["e2ee"], false);
    assert!(
        body["features"]
            .as_array()
            .unwrap()
            .contains(&json!("RICHCARD_STANDALONE"))
    );

    // "+15557" is longer than "+1555": E2EE.
    let body: serde_json::Value = h.capabilities("+15557000000").await.json().await.unwrap();
    assert_eq!(body["e2ee"], true);
    // "+155579" is longer still and turns RCS off.
    assert_eq!(
        h.capabilities("+15557900000").await.status(),
        StatusCode::NOT_FOUND
    );

    let effective = h.get("/control/numbers/+15557000000").await;
    assert_eq!(effective["matched"], "prefix");
    assert_eq!(effective["key"], "+15557");
    assert_eq!(effective["rcs"], true);
    assert_eq!(effective["sms"], true, "unset fields come from the default");
}

#[tokio::test]
async fn exact_number_rule_set_over_control_api_wins() {
    let h = Harness::start(prefixed()).await;
    let n = "+15557000001";
    let r = h
        .put(&format!("/control/numbers/{n}"), json!({"e2ee": false}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let effective: serde_json::Value = r.json().await.unwrap();
    assert_eq!(effective["matched"], "number");
    // The exact rule lays over the default profile (rcs=false), not over the prefix rule.
    assert_eq!(effective["rcs"], false);
    assert_eq!(h.capabilities(n).await.status(), StatusCode::NOT_FOUND);

    h.put(
        &format!("/control/numbers/{n}"),
        json!({"rcs": true, "e2ee": true}),
    )
    .await;
    let body: serde_json::Value = h.capabilities(n).await.json().await.unwrap();
    assert_eq!(body["e2ee"], true);

    // Deleting the rule brings the prefix back.
    let r = h
        .http
        .delete(h.url(&format!("/control/numbers/{n}")))
        .send()
        .await
        .unwrap();
    let effective: serde_json::Value = r.json().await.unwrap();
    assert_eq!(effective["matched"], "prefix");
    assert_eq!(effective["key"], "+15557");

    // Reset keeps rules.
    h.put(&format!("/control/numbers/{n}"), json!({"rcs": false}))
        .await;
    h.post("/control/reset").await;
    assert_eq!(
        h.get(&format!("/control/numbers/{n}")).await["matched"],
        "number"
    );
}

#[tokio::test]
async fn control_api_refuses_bad_rules_and_numbers() {
    let h = Harness::start(config()).await;
    let r = h
        .put("/control/numbers/+1555000", json!({"rcs": "yes"}))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = h
        .put("/control/numbers/+1555000", json!({"bogus": true}))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = h
        .put("/control/numbers/1555000", json!({"rcs": true}))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = h
        .put(
            "/control/numbers/+1555000",
            json!({"faults": {"error_5xx": 0.7, "timeout": 0.7}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_status(r).await, "INVALID_ARGUMENT");
    // Nothing was stored by the refused requests.
    assert_eq!(
        h.get("/control/numbers/+1555000").await["matched"],
        "default"
    );

    let r = h.put("/control/prefixes/+44", json!({"rcs": true})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let rules: serde_json::Value = r.json().await.unwrap();
    assert_eq!(rules["prefixes"]["+44"]["rcs"], true);
    assert_eq!(
        h.capabilities("+447700900000").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn default_profile_can_be_replaced() {
    let h = Harness::start(config()).await;
    assert_eq!(
        h.capabilities("+33612345678").await.status(),
        StatusCode::NOT_FOUND
    );
    let profile = Profile {
        rcs: true,
        ..Profile::default()
    };
    let r = h
        .put("/control/default", serde_json::to_value(profile).unwrap())
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        h.capabilities("+33612345678").await.status(),
        StatusCode::OK
    );
}
