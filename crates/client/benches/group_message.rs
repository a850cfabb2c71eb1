//! Cost of one group message, send → receive, through the SDK and a real in-process gateway
//! over HTTP, at 3 and at 100 members; next to the ceiling of the same work done by raw mls-rs
//! (encrypt + decrypt at the same group size, no I/O), measured in the same run.
//!
//! Run: `cargo bench -p sealgate-client --bench group_message` (release). Prints one line per
//! figure; `docs/performance.md` records the numbers.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mls_rs::crypto::SignatureSecretKey;
use mls_rs::identity::SigningIdentity;
use mls_rs::identity::basic::{BasicCredential, BasicIdentityProvider};
use mls_rs::{CipherSuite, CipherSuiteProvider, Client, CryptoProvider, ExtensionList, MlsMessage};
use mls_rs_crypto_awslc::AwsLcCryptoProvider;
use sealgate_client::{ClientOptions, Event, SealClient};
use sealgate_proto::api::CreateEnrollmentRequest;
use sealgate_server::{Config, Gateway};

const ROUNDS: usize = 60;
const WARMUP: usize = 5;

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for members in [3usize, 100] {
        let raw = raw_mls(members)?;
        let sdk = rt.block_on(through_sdk(members))?;
        println!(
            "group_message members={members} send_p50={:?} recv_p50={:?} total_p50={:?} total_p99={:?} \
             raw_mls_encrypt+decrypt_p50={:?} raw_share_of_total={:.1}%",
            sdk.send.p(50),
            sdk.recv.p(50),
            sdk.total.p(50),
            sdk.total.p(99),
            raw.p(50),
            100.0 * raw.p(50).as_secs_f64() / sdk.total.p(50).as_secs_f64()
        );
    }
    Ok(())
}

struct Samples(Vec<Duration>);

impl Samples {
    fn p(&self, pct: usize) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v[((v.len() - 1) * pct) / 100]
    }
}

struct SdkFigures {
    send: Samples,
    recv: Samples,
    total: Samples,
}

async fn through_sdk(members: usize) -> Result<SdkFigures> {
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::open(Config::for_data_dir(&dir.path().join("server"))).await?;
    let tenant = gateway.create_tenant("bench").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = gateway.clone();
    let serving = tokio::spawn(async move {
        server
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
    });

    let mut clients = Vec::new();
    for i in 0..members {
        let user = format!("u{i}");
        let token = gateway
            .create_enrollment(
                &tenant.tenant_id,
                CreateEnrollmentRequest {
                    user: user.clone(),
                    phone: None,
                    ttl_secs: None,
                },
            )
            .await?
            .token;
        let home = dir.path().join(&user);
        clients.push(SealClient::init(&home, &url, &token, ClientOptions::default()).await?);
    }
    let names: Vec<String> = (1..members).map(|i| format!("u{i}")).collect();
    let conversation = clients[0].create_group(&names).await?;
    let (sender, rest) = clients.split_first_mut().context("no clients")?;
    let receiver = &mut rest[0];
    receiver.receive(Some(Duration::from_secs(5))).await?;

    let text = "x".repeat(1024);
    let (mut send, mut recv, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..WARMUP + ROUNDS {
        let t0 = Instant::now();
        sender.send(&conversation, &text).await?;
        let t1 = Instant::now();
        let events = receiver.receive(Some(Duration::from_secs(5))).await?;
        let t2 = Instant::now();
        if !events
            .iter()
            .any(|e| matches!(e, Event::Message(m) if m.text == text))
        {
            bail!("round {round}: the message did not arrive: {events:?}");
        }
        if round >= WARMUP {
            send.push(t1 - t0);
            recv.push(t2 - t1);
            total.push(t2 - t0);
        }
    }
    let _ = stop.send(());
    serving.await??;
    Ok(SdkFigures {
        send: Samples(send),
        recv: Samples(recv),
        total: Samples(total),
    })
}

/// The same message encrypted by one member and decrypted by another with raw mls-rs, in a
/// group of the same size: the floor under any SDK.
fn raw_mls(members: usize) -> Result<Samples> {
    let cs = CipherSuite::CURVE25519_AES128;
    let provider = AwsLcCryptoProvider::default();
    let make = |i: usize| -> Result<_> {
        let csp = provider.cipher_suite_provider(cs).context("cipher suite")?;
        let (sk, pk): (SignatureSecretKey, _) = csp.signature_key_generate()?;
        let id = SigningIdentity::new(
            BasicCredential::new(format!("raw-{i}").into_bytes()).into_credential(),
            pk,
        );
        Ok(Client::builder()
            .crypto_provider(AwsLcCryptoProvider::default())
            .identity_provider(BasicIdentityProvider::new())
            .signing_identity(id, sk, cs)
            .build())
    };
    let clients = (0..members).map(make).collect::<Result<Vec<_>>>()?;
    let mut alice = clients[0].create_group(ExtensionList::new(), ExtensionList::new(), None)?;
    let mut commit = alice.commit_builder();
    for c in &clients[1..] {
        let kp =
            c.generate_key_package_message(ExtensionList::new(), ExtensionList::new(), None)?;
        commit = commit.add_member(kp)?;
    }
    let out = commit.build()?;
    alice.apply_pending_commit()?;
    let welcome = out.welcome_messages.first().context("welcome")?.clone();
    let (mut bob, _) = clients[1].join_group(None, &welcome, None)?;

    let text = vec![b'x'; 1024];
    let mut samples = Vec::new();
    for round in 0..WARMUP + ROUNDS {
        let t0 = Instant::now();
        let msg = alice.encrypt_application_message(&text, vec![])?;
        let bytes = msg.to_bytes()?;
        let _ = bob.process_incoming_message(MlsMessage::from_bytes(&bytes)?)?;
        if round >= WARMUP {
            samples.push(t0.elapsed());
        }
    }
    Ok(Samples(samples))
}
