//! `sealgate-load`: send a batch of messages through `POST /v1/messages` (or, with `--batch
//! N`, N per `POST /v1/messages/batch`) from the shell and print what it achieved as one JSON
//! line (accepts per second, request latency p50/p99).

use anyhow::Result;
use clap::Parser;
use sealgate::load::{LoadConfig, run};

#[derive(Parser)]
#[command(
    name = "sealgate-load",
    version,
    about = "Send a batch of messages to a Sealgate gateway"
)]
struct Args {
    /// Gateway URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Tenant API key.
    #[arg(long, env = "SEALGATE_API_KEY")]
    api_key: String,
    /// Recipients (E.164 numbers or user ids), comma-separated, used round robin.
    #[arg(long, value_delimiter = ',', required = true)]
    to: Vec<String>,
    /// Number of messages.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Concurrent requests.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Text body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// `sms` or `rcs`.
    #[arg(long, default_value = "sms")]
    channel: String,
    /// `transactional`, `sensitive` or `marketing`.
    #[arg(long, default_value = "transactional")]
    class: String,
    /// Target rate (messages per second); unpaced when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Prefix of the idempotency keys (default: a fresh one per run).
    #[arg(long)]
    key_prefix: Option<String>,
    /// Messages per request: 1 uses `POST /v1/messages`; 2 to 500 use
    /// `POST /v1/messages/batch` (latencies are then per request).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=500))]
    batch: u16,
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let key_prefix = a.key_prefix.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("load-{t}")
    });
    let report = run(LoadConfig {
        url: a.url,
        api_key: a.api_key,
        count: a.count,
        concurrency: a.concurrency,
        body_size: a.size,
        recipients: a.to,
        channel: a.channel,
        class: a.class,
        rate: a.rate,
        key_prefix,
        batch: usize::from(a.batch),
    })
    .await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
