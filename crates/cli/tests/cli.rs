//! The `seal` binary end to end against an in-process gateway: the documented JSON lines on
//! stdout, one-line errors with the problem code on stderr, exit codes.

use std::path::Path;

use anyhow::{Result, ensure};
use sealgate_proto::api::CreateEnrollmentRequest;
use sealgate_server::{Config, Gateway};
use serde_json::Value;

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn seal(home: &Path, args: &[&str]) -> Result<Out> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_seal"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("SEAL_PASSPHRASE")
        .env_remove("RUST_LOG")
        .output()
        .await?;
    Ok(Out {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout)?,
        stderr: String::from_utf8(out.stderr)?,
    })
}

fn lines(out: &Out) -> Result<Vec<Value>> {
    out.stdout
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_cli_end_to_end() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::open(Config::for_data_dir(&dir.path().join("server"))).await?;
    let tenant = gateway.create_tenant("acme").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gateway.clone().serve(listener, async move {
        let _ = stopped.await;
    }));

    let mut homes = Vec::new();
    for user in ["alice", "bob"] {
        let token = gateway
            .create_enrollment(
                &tenant.tenant_id,
                CreateEnrollmentRequest {
                    user: user.into(),
                    phone: None,
                    ttl_secs: None,
                },
            )
            .await?
            .token;
        let home = dir.path().join(user);
        let out = seal(
            &home,
            &[
                "init", "--server", &url, "--token", &token, "--name", "laptop",
            ],
        )
        .await?;
        ensure!(out.ok, "init failed: {}", out.stderr);
        let v = &lines(&out)?[0];
        assert_eq!(v["user"], user);
        assert_eq!(v["tenant_id"], tenant.tenant_id.as_str());
        assert!(v["device_id"].is_string());
        homes.push(home);
    }
    let (alice, bob) = (&homes[0], &homes[1]);

    let out = seal(alice, &["send", "--to", "bob", "canary-plaintext"]).await?;
    ensure!(out.ok, "send failed: {}", out.stderr);
    let sent = &lines(&out)?[0];
    let conversation = sent["conversation"].as_str().unwrap_or_default().to_owned();
    assert_eq!(conversation.len(), 32);
    assert!(sent["message_id"].is_string());
    assert!(!out.stderr.contains("canary"));

    let out = seal(bob, &["recv", "--wait", "2"]).await?;
    ensure!(out.ok, "recv failed: {}", out.stderr);
    let events = lines(&out)?;
    assert_eq!(events.len(), 2, "{}", out.stdout);
    assert_eq!(events[0]["event"], "joined");
    assert_eq!(events[0]["by"], "alice");
    assert_eq!(events[1]["conversation"], conversation.as_str());
    assert_eq!(events[1]["from"], "alice");
    assert_eq!(events[1]["text"], "canary-plaintext");
    assert!(events[1]["sent_at"].is_i64());

    // Nothing new: --wait returns after the timeout, prints nothing, exits 0.
    let out = seal(bob, &["recv", "--wait", "1"]).await?;
    assert!(
        out.ok && out.stdout.is_empty(),
        "{}{}",
        out.stdout,
        out.stderr
    );

    let out = seal(bob, &["conversations"]).await?;
    let convs = lines(&out)?;
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0]["kind"], "direct");
    assert_eq!(convs[0]["peer"], "alice");
    assert_eq!(convs[0]["members"], serde_json::json!(["alice", "bob"]));
    assert_eq!(convs[0]["epoch"], 1);

    let out = seal(alice, &["group", "create", "--members", "bob"]).await?;
    ensure!(out.ok, "group create failed: {}", out.stderr);
    let group = lines(&out)?[0]["conversation"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let out = seal(
        alice,
        &[
            "group",
            "remove",
            "--conversation",
            &group,
            "--member",
            "bob",
        ],
    )
    .await?;
    ensure!(out.ok, "group remove failed: {}", out.stderr);
    assert_eq!(lines(&out)?[0]["epoch"], 2);
    let out = seal(bob, &["recv"]).await?;
    let kinds: Vec<Value> = lines(&out)?.iter().map(|e| e["event"].clone()).collect();
    assert_eq!(kinds, vec![Value::from("joined"), Value::from("removed")]);

    // Errors: one line on stderr with the server's code, non-zero exit, nothing on stdout.
    let out = seal(alice, &["send", "--to", "nobody", "x"]).await?;
    assert!(!out.ok);
    assert!(out.stdout.is_empty());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("[unknown_user]"), "{}", out.stderr);

    let out = seal(&dir.path().join("nobody-home"), &["conversations"]).await?;
    assert!(!out.ok);
    assert!(out.stderr.contains("seal init"), "{}", out.stderr);

    let _ = stop.send(());
    Ok(())
}
