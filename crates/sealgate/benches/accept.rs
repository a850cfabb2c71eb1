//! Durable accepts per second and accept → carrier-ack latency on the embedded default
//! (SQLite queue and store, workers in the same process), next to the raw insert ceiling of
//! the same SQLite engine measured in the same run.
//!
//! `cargo bench -p sealgate --bench accept`. Phase 1 sends as fast as 64 concurrent HTTP
//! clients can (1 KiB bodies); phase 2 sends at 1,000 msg/s and reads the gateway's
//! acceptance → transport-ack histogram. The load generator shares the 2 cores with the
//! gateway and the carrier simulator, so every figure here is a floor.

use std::time::Duration;

use anyhow::{Context, Result};
use sealgate::load::{LoadConfig, histogram_quantile, raw_insert_ceiling, run, scrape_histogram};
use sealgate_carrier_sim::{Sim, SimConfig};
use sealgate_server::{Config, Gateway};

const MESSAGES: usize = 40_000;
const PACED: usize = 5_000;
const BODY: usize = 1024;

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench())
}

async fn bench() -> Result<()> {
    let dir = tempfile::tempdir()?;

    // The ceiling first, on an idle machine, with the accept path's batch size.
    let ceiling = raw_insert_ceiling(dir.path(), MESSAGES, 256, BODY).await?;

    let gw_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gw_url = format!("http://{}", gw_listener.local_addr()?);
    let sim = Sim::new(SimConfig::from_toml_str(&format!(
        "webhook_url = \"{gw_url}/v1/webhooks/carrier\"\nwebhook_secret = \"bench\"\n\
         seed = 1\n[default]\nsms = true\n[receipts]\ndelivered_after_ms = 5\n"
    ))?)?;
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_url = format!("http://{}", sim_listener.local_addr()?);
    let (stop_sim, sim_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sealgate_carrier_sim::serve(
        sim.clone(),
        sim_listener,
        async {
            let _ = sim_stopped.await;
        },
    ));

    let config_path = dir.path().join("sealgate.toml");
    std::fs::write(
        &config_path,
        format!(
            "[transports.sms]\nbase_url = \"{sim_url}\"\ntoken = \"sim-agent-token\"\n\
             from = \"BENCH\"\n[transports.rcs]\nbase_url = \"{sim_url}\"\n\
             agent_token = \"sim-agent-token\"\nwebhook_secret = \"bench\"\n"
        ),
    )?;
    let mut config = Config::load(Some(&config_path))?;
    config.data_dir = dir.path().join("data");
    let gateway = Gateway::open(config).await?;
    let tenant = gateway.create_tenant("bench").await?;
    let (stop_gw, gw_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = gateway.clone();
    let serving = tokio::spawn(async move {
        server
            .serve(gw_listener, async {
                let _ = gw_stopped.await;
            })
            .await
    });

    let recipients: Vec<String> = (0..100).map(|i| format!("+1555600{i:04}")).collect();
    let load = |count, rate, prefix: &str| LoadConfig {
        url: gw_url.clone(),
        api_key: tenant.api_key.clone(),
        count,
        concurrency: 64,
        body_size: BODY,
        recipients: recipients.clone(),
        channel: "sms".into(),
        class: "transactional".into(),
        rate,
        key_prefix: prefix.into(),
    };

    let burst = run(load(MESSAGES, None, "burst")).await?;
    let http = reqwest::Client::new();
    wait_drained(&http, &gw_url, MESSAGES).await?;

    let before = metrics(&http, &gw_url).await?;
    let paced = run(load(PACED, Some(1000.0), "paced")).await?;
    wait_drained(&http, &gw_url, MESSAGES + PACED).await?;
    let after = metrics(&http, &gw_url).await?;
    let series = ("sealgate_delivery_latency_seconds", "transport=\"sms\"");
    let (b0, b1) = (
        scrape_histogram(&before, series.0, series.1),
        scrape_histogram(&after, series.0, series.1),
    );
    let delta: Vec<(f64, f64)> = b1
        .iter()
        .map(|&(le, c)| {
            let prev = b0.iter().find(|(l, _)| *l == le).map_or(0.0, |p| p.1);
            (le, c - prev)
        })
        .collect();
    let p50 = histogram_quantile(0.5, &delta).context("no latency samples")?;
    let p99 = histogram_quantile(0.99, &delta).context("no latency samples")?;

    println!(
        "accept: {:.0} durable accepts/s ({} accepted, {} errors), accept latency p50 {:.1} ms p99 {:.1} ms",
        burst.accepts_per_sec,
        burst.accepted,
        burst.errors,
        burst.latency_p50_ms,
        burst.latency_p99_ms
    );
    println!(
        "ceiling: {:.0} raw SQLite inserts/s (1 KiB rows, 256 per transaction); accepts are {:.1} % of it",
        ceiling,
        100.0 * burst.accepts_per_sec / ceiling
    );
    println!(
        "paced {:.0} msg/s: accept p50 {:.1} ms p99 {:.1} ms; accept -> carrier ack p50 {:.1} ms p99 {:.1} ms",
        paced.accepts_per_sec,
        paced.latency_p50_ms,
        paced.latency_p99_ms,
        p50 * 1000.0,
        p99 * 1000.0
    );
    let _ = stop_gw.send(());
    serving.await??;
    let _ = stop_sim.send(());
    Ok(())
}

async fn metrics(http: &reqwest::Client, url: &str) -> Result<String> {
    Ok(http
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// Wait until the carrier has acknowledged `total` messages (from the delivery counter).
async fn wait_drained(http: &reqwest::Client, url: &str, total: usize) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let text = metrics(http, url).await?;
        let done: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("sealgate_delivery_total{") && l.contains("outcome=\"success\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if done as usize >= total {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "drain stalled at {done}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
