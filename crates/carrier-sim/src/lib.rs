#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

//! Crate root: the entry points [`run`], [`serve`] and [`router`].
//!
//! It exists so the binary, the gateway's integration tests and demos start the simulator the
//! same way. It must never print to stdout (the binary owns its one ready line) and never
//! returns from [`serve`] with receipt tasks still running.

pub mod config;
pub mod faults;
pub mod http;
mod receipts;
mod state;
mod time;

use std::future::Future;
use std::time::Duration;

pub use config::{ConfigError, FaultConfig, Profile, ReceiptConfig, Rule, SimConfig};
pub use http::router;
pub use receipts::{SIGNATURE_HEADER, sign};
pub use state::{Channel, InboxEntry, PushEntry, Sim};

/// Validates `config`, then serves the simulator on `listener` until `shutdown` completes.
pub async fn run(
    config: SimConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sim = Sim::new(config)?;
    serve(sim, listener, shutdown).await
}

/// Serves an existing simulator (so a test can keep a handle on it) until `shutdown`
/// completes. In-flight requests finish; scheduled receipts get `drain_ms` to go out and are
/// then cancelled.
pub async fn serve(
    sim: Sim,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(seed = sim.seed(), "carrier simulator serving");
    axum::serve(listener, router(sim.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    let drain = Duration::from_millis(sim.inner.drain_ms);
    if !sim.flush_receipts(drain).await {
        tracing::warn!(
            pending = sim.inner.receipts.pending(),
            "receipts still pending at shutdown; cancelling"
        );
    }
    sim.inner.receipts.cancel_all();
    // Cancelled tasks finish at their next poll; this only waits for them to notice.
    sim.flush_receipts(Duration::from_secs(1)).await;
    Ok(())
}
