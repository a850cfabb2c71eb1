//! Load generation for `POST /v1/messages`, and the ceiling it is judged against.
//!
//! `run` drives the real HTTP API with a fixed number of concurrent senders (optionally paced
//! to a target rate), each message with its own idempotency key — one message per request, or
//! several per `POST /v1/messages/batch` — and reports durable accepts per second and request
//! latency percentiles. `raw_insert_ceiling` measures what the same
//! SQLite engine does with plain batched inserts of rows of the same size, in the same run, so
//! the accept rate can be stated as a share of what the store allows. Message bodies are
//! synthetic; nothing here may log them.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sealgate_proto::send::{BatchSendResponse, Channel, MessageClass};
use sealgate_server::delivery::store::{NewMessage, PayloadKind};
use sealgate_server::store::DeliveryStore;
use sealgate_server::store::sqlite::SqliteStore;
use serde::Serialize;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Gateway base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Tenant API key.
    pub api_key: String,
    /// Messages to send.
    pub count: usize,
    /// Concurrent senders.
    pub concurrency: usize,
    /// Text body size in bytes.
    pub body_size: usize,
    /// Recipients, used round robin.
    pub recipients: Vec<String>,
    /// `sms` or `rcs`.
    pub channel: String,
    /// Message class.
    pub class: String,
    /// Target rate in messages per second (all senders together); `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Prefix of the idempotency keys (make it unique per run).
    pub key_prefix: String,
    /// Messages per request: 1 sends through `POST /v1/messages`, more through
    /// `POST /v1/messages/batch` (each message with its own key).
    pub batch: usize,
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub accepted: usize,
    pub errors: usize,
    /// Messages per request (latencies are per request).
    pub messages_per_request: usize,
    pub elapsed_secs: f64,
    pub accepts_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

/// Send `config.count` messages and report.
pub async fn run(config: LoadConfig) -> Result<LoadReport> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(config.concurrency)
        .build()?;
    let config = Arc::new(config);
    let next = Arc::new(AtomicUsize::new(0));
    // Bodies are built once per recipient: the generator shares the cores with the gateway,
    // so it should spend as little as it can.
    let body_text = "x".repeat(config.body_size);
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        config
            .recipients
            .iter()
            .map(|to| {
                let body = json!({"to": to, "class": config.class,
                                  "body": {"text": body_text, "channel": config.channel}});
                bytes::Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
            })
            .collect(),
    );
    anyhow::ensure!(!bodies.is_empty(), "no recipients");
    let batch = config.batch.max(1);
    let path = if batch > 1 {
        "/v1/messages/batch"
    } else {
        "/v1/messages"
    };
    let url: Arc<str> = format!("{}{path}", config.url).into();
    let auth: Arc<str> = format!("Bearer {}", config.api_key).into();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..config.concurrency.max(1) {
        let (http, config, next, bodies, url, auth) = (
            http.clone(),
            config.clone(),
            next.clone(),
            bodies.clone(),
            url.clone(),
            auth.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut accepted, mut errors) = (0usize, 0usize);
            loop {
                let n = next.fetch_add(batch, Ordering::Relaxed);
                if n >= config.count {
                    break;
                }
                let take = batch.min(config.count - n);
                if let Some(rate) = config.rate {
                    let due = start + Duration::from_secs_f64(n as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let request = http
                    .post(&*url)
                    .header(reqwest::header::AUTHORIZATION, &*auth)
                    .header(reqwest::header::CONTENT_TYPE, "application/json");
                let request = if batch > 1 {
                    request.body(batch_body(&bodies, &config.key_prefix, n, take))
                } else {
                    request
                        .header("Idempotency-Key", idempotency_key(&config.key_prefix, n))
                        .body(bodies[n % bodies.len()].clone())
                };
                let t0 = Instant::now();
                let stored = match request.send().await {
                    Ok(r) if batch == 1 => usize::from(r.status().as_u16() == 202),
                    Ok(r) if r.status().as_u16() == 200 => r
                        .bytes()
                        .await
                        .ok()
                        .and_then(|b| serde_json::from_slice::<BatchSendResponse>(&b).ok())
                        .map_or(0, |r| r.accepted as usize),
                    _ => 0,
                };
                if stored > 0 {
                    latencies.push(t0.elapsed());
                }
                accepted += stored;
                errors += take - stored.min(take);
            }
            (latencies, accepted, errors)
        }));
    }
    let mut latencies = Vec::new();
    let (mut accepted, mut errors) = (0, 0);
    for t in tasks {
        let (l, a, e) = t.await.context("sender task")?;
        latencies.extend(l);
        accepted += a;
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: usize| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        latencies[((latencies.len() - 1) * p) / 100].as_secs_f64() * 1000.0
    };
    Ok(LoadReport {
        accepted,
        errors,
        messages_per_request: batch,
        elapsed_secs: elapsed,
        accepts_per_sec: accepted as f64 / elapsed,
        latency_p50_ms: pct(50),
        latency_p99_ms: pct(99),
        latency_max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    })
}

/// The idempotency key of message `n`: `{prefix}-` and a UUID-shaped value that is a
/// bijection of `n` (so keys never repeat within a run) in random order, as clients' v4 UUIDs
/// are. Sequential keys (`prefix-1`, `prefix-2`, …) would fill the store's unique key index
/// only at its right edge, a pattern real clients never produce, and flatter every figure.
pub fn idempotency_key(prefix: &str, n: usize) -> String {
    let hi = mix(n as u64);
    let lo = mix(hi);
    format!(
        "{prefix}-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

/// SplitMix64's step: a bijection of `u64` (an odd constant added, then xor-shifts and
/// multiplications by odd numbers) whose outputs look random.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The body of one `POST /v1/messages/batch`: messages `n..n + take`, each a prebuilt single
/// body (`{"to": …}`) with its key spliced in front.
fn batch_body(bodies: &[bytes::Bytes], prefix: &str, n: usize, take: usize) -> bytes::Bytes {
    let mut out = Vec::with_capacity(take * (bodies[0].len() + 48) + 16);
    out.extend_from_slice(b"{\"messages\":[");
    for i in n..n + take {
        if i > n {
            out.push(b',');
        }
        let single = &bodies[i % bodies.len()];
        let key = serde_json::to_string(&idempotency_key(prefix, i)).unwrap_or_default();
        out.extend_from_slice(format!("{{\"idempotency_key\":{key},").as_bytes());
        // The single body without its opening brace.
        out.extend_from_slice(&single[1..]);
    }
    out.extend_from_slice(b"]}");
    out.into()
}

/// Rows per second that plain batched inserts of `row_bytes`-byte rows reach on a fresh SQLite
/// file in `dir`, with the gateway's pragmas (WAL, synchronous=NORMAL), `batch` rows per
/// transaction and one multi-row INSERT per batch — the ceiling for durable accepts. No
/// checkpoint runs during the measurement (`wal_autocheckpoint=0`): every commit only appends
/// to the WAL, the cheapest a durable SQLite insert gets. (With SQLite's default, a checkpoint
/// inside every thousandth page's commit, this ceiling fell below what the gateway's accept
/// transaction reaches with its checkpoints on a thread of their own.)
pub async fn raw_insert_ceiling(
    dir: &Path,
    rows: usize,
    batch: usize,
    row_bytes: usize,
) -> Result<f64> {
    let url = format!("sqlite://{}", dir.join("ceiling.db").display());
    let options = SqliteConnectOptions::from_str(&url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .pragma("wal_autocheckpoint", "0");
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    sqlx::query(
        "CREATE TABLE rows (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, body BLOB NOT NULL, \
         created_at INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let body = vec![b'x'; row_bytes];
    let start = Instant::now();
    let mut n = 0;
    while n < rows {
        let take = batch.min(rows - n);
        let mut q = sqlx::QueryBuilder::new("INSERT INTO rows (id, tenant, body, created_at) ");
        q.push_values(n..n + take, |mut b, i| {
            b.push_bind(format!("msg_{i:032}"))
                .push_bind("tn_bench")
                .push_bind(body.as_slice())
                .push_bind(i as i64);
        });
        let mut tx = pool.begin().await?;
        q.build().execute(&mut *tx).await?;
        tx.commit().await?;
        n += take;
    }
    let rate = rows as f64 / start.elapsed().as_secs_f64();
    pool.close().await;
    Ok(rate)
}

/// Messages per second that the store's own accept transaction
/// ([`DeliveryStore::accept_messages`]: the message with its idempotency key and send job; one
/// row per message on SQLite) reaches on a fresh embedded store in `dir`, `batch` messages per
/// transaction with `body_bytes`-byte texts, called directly — the ceiling for the HTTP accept
/// path.
pub async fn store_accept_ceiling(
    dir: &Path,
    messages: usize,
    batch: usize,
    body_bytes: usize,
) -> Result<f64> {
    let store = SqliteStore::open(&dir.join("accept-ceiling.db")).await?;
    let payload = vec![b'x'; body_bytes];
    let now = sealgate_server::store::now_millis();
    let start = Instant::now();
    let mut n = 0;
    while n < messages {
        let take = batch.min(messages - n);
        let chunk: Vec<NewMessage> = (n..n + take)
            .map(|i| NewMessage {
                message_id: format!("msg_{i:032}"),
                tenant_id: "tn_bench".into(),
                idempotency_key: idempotency_key("ceiling", i),
                request_hash: vec![0; 32],
                recipient: format!("+1555600{:04}", i % 100),
                class: MessageClass::Transactional,
                channel: Channel::Sms,
                kind: PayloadKind::Text,
                group_id: None,
                epoch: None,
                payload: payload.clone(),
                correlation_id: None,
                accepted_at: now,
                expires_at: None,
            })
            .collect();
        for outcome in store.accept_messages(&chunk).await? {
            outcome?;
        }
        n += take;
    }
    Ok(messages as f64 / start.elapsed().as_secs_f64())
}

/// Messages the carrier acknowledged, summed over the gateways at `urls` (their
/// `sealgate_delivery_total{outcome="success"}` counters).
pub async fn delivered(http: &reqwest::Client, urls: &[String]) -> Result<usize> {
    let mut total = 0.0;
    for url in urls {
        let text = http
            .get(format!("{url}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        total += text
            .lines()
            .filter(|l| {
                l.starts_with("sealgate_delivery_total{") && l.contains("outcome=\"success\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(total as usize)
}

/// The `q`-quantile (0–1) of a Prometheus histogram given as cumulative `(upper bound, count)`
/// buckets, interpolated linearly inside the bucket like PromQL's `histogram_quantile`.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let in_bucket = count - prev.1;
            let frac = if in_bucket > 0.0 {
                (rank - prev.1) / in_bucket
            } else {
                0.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    None
}

/// Cumulative buckets of histogram `name` with label `label="value"` from Prometheus text.
pub fn scrape_histogram(text: &str, name: &str, label: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        if !rest.contains(label) {
            continue;
        }
        let Some(le_start) = rest.find("le=\"") else {
            continue;
        };
        let le_text = &rest[le_start + 4..];
        let Some(le_end) = le_text.find('"') else {
            continue;
        };
        let le = if &le_text[..le_end] == "+Inf" {
            f64::INFINITY
        } else {
            le_text[..le_end].parse().unwrap_or(f64::NAN)
        };
        if let Some(count) = line.rsplit(' ').next().and_then(|c| c.parse().ok()) {
            out.push((le, count));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = [
            (0.001, 0.0),
            (0.005, 50.0),
            (0.01, 100.0),
            (f64::INFINITY, 100.0),
        ];
        let p50 = histogram_quantile(0.5, &b).unwrap();
        assert!((p50 - 0.005).abs() < 1e-9, "{p50}");
        let p75 = histogram_quantile(0.75, &b).unwrap();
        assert!((p75 - 0.0075).abs() < 1e-9, "{p75}");
        assert_eq!(histogram_quantile(0.5, &[(1.0, 0.0)]), None);
    }

    /// Keys never repeat within a run and arrive in no sorted order, as v4 UUIDs do.
    #[test]
    fn keys_are_unique_and_unordered() {
        let keys: Vec<String> = (0..10_000).map(|n| idempotency_key("p", n)).collect();
        let unique: std::collections::HashSet<&String> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len());
        let rising = keys.windows(2).filter(|w| w[0] < w[1]).count();
        assert!(
            (4_000..6_000).contains(&rising),
            "{rising} of 9,999 pairs rise"
        );
        assert_eq!(
            keys[7],
            idempotency_key("p", 7),
            "the same run resends the same keys"
        );
        assert_eq!(keys[0].len(), "p-".len() + 36, "{}", keys[0]);
    }

    #[test]
    fn scrapes_one_labelled_series() {
        let text = "x_bucket{transport=\"sms\",le=\"0.005\"} 3\n\
                    x_bucket{transport=\"rcs\",le=\"0.005\"} 9\n\
                    x_bucket{transport=\"sms\",le=\"+Inf\"} 4\n";
        assert_eq!(
            scrape_histogram(text, "x", "transport=\"sms\""),
            vec![(0.005, 3.0), (f64::INFINITY, 4.0)]
        );
    }
}
