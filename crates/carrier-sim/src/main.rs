//! `sealgate-carrier-sim`: the simulated phone network as a process.
//!
//! It exists so demos and out-of-process tests can run the simulator like any other service:
//! parse flags, load the config, bind, print exactly one `listening on http://ADDR` line on
//! stdout, and stop cleanly on SIGTERM or Ctrl-C. It must never print anything else on stdout
//! and never log message text (logs go to stderr).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use sealgate_carrier_sim::SimConfig;

/// A simulated RCS aggregator, SMS gateway and push service for Sealgate tests and demos.
#[derive(Debug, Parser)]
#[command(name = "sealgate-carrier-sim", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// TOML config file (profiles, rules, faults, receipts).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where signed receipts are POSTed (overrides the config file).
    #[arg(long, env = "SEALGATE_SIM_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// HMAC-SHA512 key for X-Goog-Signature (overrides the config file).
    #[arg(long, env = "SEALGATE_SIM_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Bearer token the aggregator endpoints require (overrides the config file).
    #[arg(long, env = "SEALGATE_SIM_AGENT_TOKEN", hide_env_values = true)]
    agent_token: Option<String>,
    /// Seed of the fault and read-share draws (overrides the config file).
    #[arg(long)]
    seed: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEALGATE_SIM_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => SimConfig::load(path)?,
        None => SimConfig::default(),
    };
    if let Some(url) = args.webhook_url {
        config.webhook_url = Some(url);
    }
    if let Some(secret) = args.webhook_secret {
        config.webhook_secret = Some(secret);
    }
    if let Some(token) = args.agent_token {
        config.agent_token = token;
    }
    if args.seed.is_some() {
        config.seed = args.seed;
    }
    config.validate()?;

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    sealgate_carrier_sim::run(config, listener, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}
