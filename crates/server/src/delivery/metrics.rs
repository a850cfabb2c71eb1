//! Prometheus metrics of the send pipeline, in a registry owned by the gateway (not a
//! process-global one), rendered at `GET /metrics`.
//!
//! Labels are bounded, non-personal values: tenant ids, transport names, outcomes, error
//! classes, job kinds. A label must never carry a message body, a phone number or a user id.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every series the pipeline exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `sealgate_messages_accepted_total{tenant}`: 202s for new messages.
    pub accepted: IntCounterVec,
    /// `sealgate_messages_rejected_total{tenant,code}`: refused sends (rate limit, quota, ...).
    pub rejected: IntCounterVec,
    /// `sealgate_delivery_total{transport,outcome}`: outcome = success | permanent |
    /// expired | exhausted.
    pub delivery: IntCounterVec,
    /// `sealgate_delivery_latency_seconds{transport}`: acceptance → transport ack.
    pub latency: HistogramVec,
    /// `sealgate_queue_depth`: jobs waiting or in flight.
    pub queue_depth: IntGauge,
    /// `sealgate_idempotency_keys_in_memory`: keys this process holds in memory (embedded
    /// store; 0 where keys live on disk only).
    pub keys_in_memory: IntGauge,
    /// `sealgate_delivery_retries_total{transport,error_class}`.
    pub retries: IntCounterVec,
    /// `sealgate_dead_letters_total{kind}`.
    pub dead_letters: IntCounterVec,
    /// `sealgate_webhook_verification_failures_total`: forged or unsigned carrier receipts.
    pub webhook_failures: IntCounter,
    /// `sealgate_carrier_receipts_total{outcome}`: applied | ignored | duplicate | unknown.
    pub receipts: IntCounterVec,
    /// `sealgate_accept_batch_size`: messages per group commit.
    pub accept_batch: Histogram,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let accepted = counter_vec(
            "sealgate_messages_accepted_total",
            "Messages accepted by POST /v1/messages, per tenant.",
            &["tenant"],
        )?;
        let rejected = counter_vec(
            "sealgate_messages_rejected_total",
            "Sends refused before storage, per tenant and problem code.",
            &["tenant", "code"],
        )?;
        let delivery = counter_vec(
            "sealgate_delivery_total",
            "Final delivery outcomes per transport (success, permanent, expired, exhausted).",
            &["transport", "outcome"],
        )?;
        let retries = counter_vec(
            "sealgate_delivery_retries_total",
            "Transient transport failures that were scheduled for retry.",
            &["transport", "error_class"],
        )?;
        let dead_letters = counter_vec(
            "sealgate_dead_letters_total",
            "Jobs moved to the dead-letter list, per job kind.",
            &["kind"],
        )?;
        let receipts = counter_vec(
            "sealgate_carrier_receipts_total",
            "Carrier receipt webhooks by outcome (applied, ignored, duplicate, unknown).",
            &["outcome"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "sealgate_delivery_latency_seconds",
                "Time from acceptance to the transport's ack.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
            ]),
            &["transport"],
        )?;
        registry.register(Box::new(latency.clone()))?;
        let queue_depth = IntGauge::new("sealgate_queue_depth", "Jobs waiting or in flight.")?;
        registry.register(Box::new(queue_depth.clone()))?;
        let keys_in_memory = IntGauge::new(
            "sealgate_idempotency_keys_in_memory",
            "Idempotency keys held in this process's memory (embedded store; 0 elsewhere).",
        )?;
        registry.register(Box::new(keys_in_memory.clone()))?;
        let webhook_failures = IntCounter::new(
            "sealgate_webhook_verification_failures_total",
            "Carrier webhooks refused for a missing or wrong signature.",
        )?;
        registry.register(Box::new(webhook_failures.clone()))?;
        let accept_batch = Histogram::with_opts(
            HistogramOpts::new(
                "sealgate_accept_batch_size",
                "Messages written per accept transaction (group commit).",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
            ]),
        )?;
        registry.register(Box::new(accept_batch.clone()))?;
        Ok(Self {
            registry,
            accepted,
            rejected,
            delivery,
            latency,
            queue_depth,
            keys_in_memory,
            retries,
            dead_letters,
            webhook_failures,
            receipts,
            accept_batch,
        })
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The registry, for other areas to add their series.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_named_series() {
        let m = Metrics::new().unwrap();
        m.accepted.with_label_values(&["t1"]).inc();
        m.delivery.with_label_values(&["rcs", "success"]).inc();
        m.latency.with_label_values(&["rcs"]).observe(0.003);
        m.webhook_failures.inc();
        let text = m.render();
        for name in [
            "sealgate_messages_accepted_total{tenant=\"t1\"} 1",
            "sealgate_delivery_total{outcome=\"success\",transport=\"rcs\"} 1",
            "sealgate_delivery_latency_seconds_bucket",
            "sealgate_queue_depth",
            "sealgate_idempotency_keys_in_memory",
            "sealgate_webhook_verification_failures_total 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
