//! The real binary: ready line on stdout, a send, SIGTERM, exit status 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[tokio::test]
async fn binary_prints_ready_line_serves_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("carrier-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sim.toml");
    std::fs::write(&config, "[prefixes.\"+1555\"]\nrcs = true\n").unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_sealgate-carrier-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--agent-token",
            "bin-token",
            "--seed",
            "3",
        ])
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning the simulator");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let base = line
        .trim_end()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let http = reqwest::Client::new();
    let r = http
        .post(format!(
            "{base}/v1/phones/+15550003000/agentMessages?messageId=b-1"
        ))
        .bearer_auth("bin-token")
        .json(&json!({"contentMessage": {"text": "from the binary"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let inbox: Value = http
        .get(format!("{base}/control/inbox/+15550003000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(inbox["messages"][0]["message_id"], "b-1");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "simulator did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "stdout holds only the ready line, got {rest:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
