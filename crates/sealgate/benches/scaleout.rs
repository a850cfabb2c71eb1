//! Scale-out mode (PostgreSQL store + NATS JetStream queue) next to the embedded default
//! (SQLite), measured in the same run on the same machine:
//!
//! * durable accepts/s: an api-role gateway (no workers, in this process) takes `MESSAGES`
//!   1 KiB sends from 128 concurrent HTTP clients, twice (the ratio uses the mean of the rounds:
//!   a single short round swung by ±25 % between runs);
//! * drain rate: then workers start and deliver the backlog to the carrier simulator; the
//!   rate is messages acknowledged by the carrier per second, from the workers' start;
//! * scale-out drain with one `sealgate serve --role worker` process, then with two (on a
//!   fresh backlog); embedded drain with the worker-role gateway in this process (the
//!   embedded store is one process by design);
//! * the same with a carrier that takes 50 ms per call and a transport limit of 32 calls in
//!   flight per process — the usual case in production, where drain waits on the carrier
//!   rather than on CPU, and where a second worker process doubles the calls in flight.
//!
//! `cargo bench -p sealgate --bench scaleout` with `SEALGATE_TEST_POSTGRES_URL` and
//! `SEALGATE_TEST_NATS_URL` set (without them only the embedded figures are printed). The
//! load generator, the api gateway, the worker processes, the simulator, PostgreSQL and NATS
//! all share the 2 cores, so every figure is a floor, and a second worker process adds calls
//! in flight but no CPU. So each accept round also prints the CPU time it cost per accepted
//! message, split into this process (gateway, load generator, simulator), PostgreSQL's
//! processes and nats-server (from `/proc`, on Linux).

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sealgate::load::{LoadConfig, delivered, run};

// The process helpers of the end-to-end tests (binary path, start and wait for readiness).
#[path = "../tests/common/mod.rs"]
mod common;
use sealgate_carrier_sim::{Sim, SimConfig};
use sealgate_server::{Config, Gateway, Role};

const MESSAGES: usize = 20_000;
const BODY: usize = 1024;
/// Concurrent senders (as in the accept bench).
const SENDERS: usize = 128;
/// Carrier latency and per-process transport limit of the I/O-bound scenario.
const CARRIER_LATENCY_MS: u64 = 50;
const TRANSPORT_CONCURRENCY: usize = 32;

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench())
}

/// CPU seconds used so far by this process and by each PostgreSQL and nats-server process
/// (user + system time from `/proc/*/stat`; empty where `/proc` is unreadable).
#[derive(Debug, Clone, Default)]
struct Cpu {
    own: f64,
    /// pid → (is PostgreSQL, seconds).
    others: std::collections::HashMap<u32, (bool, f64)>,
}

impl Cpu {
    fn now() -> Self {
        // Linux reports these times in clock ticks of 1/100 s (USER_HZ) on every common build.
        const TICK: f64 = 0.01;
        let ticks = |stat: &str| -> Option<(String, f64)> {
            let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // Fields after the name: state is 3rd overall, utime 14th and stime 15th.
            let used =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some((comm.to_owned(), used * TICK))
        };
        let mut cpu = Cpu::default();
        if let Some((_, own)) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| ticks(&s))
        {
            cpu.own = own;
        }
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            match ticks(&stat) {
                Some((comm, used)) if comm.starts_with("postgres") => {
                    cpu.others.insert(pid, (true, used));
                }
                Some((comm, used)) if comm == "nats-server" => {
                    cpu.others.insert(pid, (false, used));
                }
                _ => {}
            }
        }
        cpu
    }

    /// Microseconds of CPU per message between `self` and `later`. A process that started in
    /// between counts whole; one that ended in between is missed (none does during accepts).
    fn per_message(&self, later: &Cpu, messages: usize) -> String {
        let (mut pg, mut nats) = (0.0, 0.0);
        for (pid, (is_pg, used)) in &later.others {
            let before = self.others.get(pid).map_or(0.0, |(_, u)| *u);
            *(if *is_pg { &mut pg } else { &mut nats }) += used - before;
        }
        let us = |seconds: f64| seconds * 1e6 / messages as f64;
        let (own, pg, nats) = (us(later.own - self.own), us(pg), us(nats));
        format!(
            "CPU per accept {:.0} µs: this process {own:.0}, PostgreSQL {pg:.0}, nats-server {nats:.0}",
            own + pg + nats
        )
    }
}

struct Running {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), sealgate_server::ServerError>>,
}

async fn start(config: &Config, role: Role) -> Result<(Gateway, Running)> {
    let gateway = Gateway::open_as(config.clone(), role).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = gateway.clone();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
    });
    Ok((gateway, Running { url, stop, task }))
}

async fn stop(r: Running) -> Result<()> {
    let _ = r.stop.send(());
    r.task.await??;
    Ok(())
}

/// How the drain workers run.
enum Workers {
    /// Worker-role gateways inside this process (the embedded store is one process by design).
    InProcess,
    /// `sealgate serve --role worker` processes, each with this `sealgate.toml`.
    Processes(String),
}

/// The `sealgate.toml` of a worker process on the scale-out services of `config`.
fn worker_toml(config: &Config) -> Result<String> {
    let sms = config.transports.sms.as_ref().context("no SMS transport")?;
    Ok(format!(
        "[store]\nbackend = \"postgres\"\nurl = \"{}\"\nschema = \"{}\"\nmigrate_on_start = false\n\
         [queue]\nbackend = \"nats\"\nurl = \"{}\"\nstream = \"{}\"\n\
         [delivery]\npoll_ms = 20\n\
         [transports.sms]\nbase_url = \"{}\"\ntoken = \"sim-agent-token\"\nfrom = \"BENCH\"\n\
         concurrency = {}\n",
        config.store.url.as_deref().context("no PostgreSQL URL")?,
        config.store.schema.as_deref().context("no schema")?,
        config.queue.url.as_deref().context("no NATS URL")?,
        config.queue.stream,
        sms.base_url,
        sms.concurrency,
    ))
}

/// Start `sealgate serve --role worker` with `toml` in `data`; returns it and its URL once
/// it prints its `listening on …` line.
async fn spawn_worker(toml: String, data: PathBuf) -> Result<(Child, String)> {
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&data)?;
        let config = data.join("sealgate.toml");
        std::fs::write(&config, toml)?;
        let mut cmd = Command::new(common::bin("sealgate"));
        cmd.args([
            "serve",
            "--role",
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .arg("--data")
        .arg(&data);
        Ok(common::spawn_ready(cmd, &data.join("worker.log")))
    })
    .await?
}

/// Accept a backlog on an api-only gateway, then drain it with each count of workers.
/// Returns (accepts/s, drained messages/s).
async fn scenario(
    name: &str,
    config: &Config,
    mode: &Workers,
    worker_counts: &[usize],
    messages: usize,
) -> Result<Vec<(f64, f64)>> {
    let (api_gw, api) = start(config, Role::Api).await?;
    let tenant = api_gw.create_tenant(&format!("bench-{name}")).await?;
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for (round, &workers) in worker_counts.iter().enumerate() {
        let recipients: Vec<String> = (0..100).map(|i| format!("+1555700{i:04}")).collect();
        let cpu_before = Cpu::now();
        let report = run(LoadConfig {
            url: api.url.clone(),
            api_key: tenant.api_key.clone(),
            count: messages,
            concurrency: SENDERS,
            body_size: BODY,
            recipients,
            channel: "sms".into(),
            class: "transactional".into(),
            rate: None,
            key_prefix: format!("{name}-{round}"),
            batch: 1,
        })
        .await?;
        anyhow::ensure!(report.errors == 0, "{name}: {} sends failed", report.errors);
        let cpu = cpu_before.per_message(&Cpu::now(), messages);
        let mut running = Vec::new();
        let mut processes = Vec::new();
        let mut urls = Vec::new();
        let started = Instant::now();
        for n in 0..workers {
            match mode {
                Workers::InProcess => {
                    let r = start(config, Role::Worker).await?.1;
                    urls.push(r.url.clone());
                    running.push(r);
                }
                Workers::Processes(toml) => {
                    let data = config.data_dir.join(format!("worker-{round}-{n}"));
                    let (child, url) = spawn_worker(toml.clone(), data).await?;
                    urls.push(url);
                    processes.push(child);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        while delivered(&http, &urls).await? < messages {
            anyhow::ensure!(Instant::now() < deadline, "{name}: drain stalled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let drain = messages as f64 / started.elapsed().as_secs_f64();
        for r in running {
            stop(r).await?;
        }
        for mut child in processes {
            // Everything is delivered and acked; nothing is lost by a kill.
            let _ = child.kill();
            let _ = child.wait();
        }
        println!(
            "{name}: {:.0} durable accepts/s (p50 {:.1} ms, p99 {:.1} ms; {cpu}); drain with {workers} worker {}: {drain:.0} msg/s",
            report.accepts_per_sec,
            report.latency_p50_ms,
            report.latency_p99_ms,
            match mode {
                Workers::InProcess => "instance(s) in this process",
                Workers::Processes(_) => "process(es)",
            }
        );
        out.push((report.accepts_per_sec, drain));
    }
    stop(api).await?;
    Ok(out)
}

async fn bench() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let sim = Sim::new(SimConfig::from_toml_str(
        "webhook_url = \"http://127.0.0.1:9/none\"\nwebhook_secret = \"bench\"\nseed = 1\n\
         [default]\nsms = true\n[receipts]\ndelivered_after_ms = 100000000\n",
    )?)?;
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_url = format!("http://{}", sim_listener.local_addr()?);
    let (stop_sim, sim_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sealgate_carrier_sim::serve(sim, sim_listener, async {
        let _ = sim_stopped.await;
    }));
    let config_path = dir.path().join("sealgate.toml");
    std::fs::write(
        &config_path,
        format!(
            "[delivery]\npoll_ms = 20\n[transports.sms]\nbase_url = \"{sim_url}\"\n\
             token = \"sim-agent-token\"\nfrom = \"BENCH\"\n"
        ),
    )?;
    let mut embedded = Config::load(Some(&config_path))?;
    embedded.data_dir = dir.path().join("embedded");
    let e = scenario(
        "embedded",
        &embedded,
        &Workers::InProcess,
        &[1, 1],
        MESSAGES,
    )
    .await?;

    let pg = std::env::var("SEALGATE_TEST_POSTGRES_URL").ok();
    let nats = std::env::var("SEALGATE_TEST_NATS_URL").ok();
    let (Some(pg), Some(nats)) = (pg, nats) else {
        println!("scale-out: skipped (set SEALGATE_TEST_POSTGRES_URL and SEALGATE_TEST_NATS_URL)");
        let _ = stop_sim.send(());
        return Ok(());
    };
    let id = sealgate_server::auth::random_id("");
    let schema = format!("sg_bench_{}", &id[..12]);
    let stream = format!("SG_BENCH_{}", &id[..12]);
    let mut scale = embedded.clone();
    scale.data_dir = dir.path().join("scaleout");
    scale.store.backend = sealgate_server::store::backend::StoreBackend::Postgres;
    scale.store.url = Some(pg.clone());
    scale.store.schema = Some(schema.clone());
    scale.queue.backend = sealgate_server::store::backend::QueueBackend::Nats;
    scale.queue.url = Some(nats.clone());
    scale.queue.stream = stream.clone();
    let mut result = match worker_toml(&scale) {
        Ok(toml) => {
            scenario(
                "scale-out",
                &scale,
                &Workers::Processes(toml),
                &[1, 2],
                MESSAGES,
            )
            .await
        }
        Err(e) => Err(e),
    };
    let mut slow_carrier = Vec::new();
    if result.is_ok() {
        // The I/O-bound case: a slower carrier and a per-process transport limit.
        let slow = Sim::new(SimConfig::from_toml_str(&format!(
            "webhook_url = \"http://127.0.0.1:9/none\"\nwebhook_secret = \"bench\"\nseed = 1\n\
             [default]\nsms = true\n[faults]\nlatency_ms = {CARRIER_LATENCY_MS}\n\
             [receipts]\ndelivered_after_ms = 100000000\n"
        ))?)?;
        let slow_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let slow_url = format!("http://{}", slow_listener.local_addr()?);
        let (stop_slow, slow_stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(sealgate_carrier_sim::serve(slow, slow_listener, async {
            let _ = slow_stopped.await;
        }));
        let mut io_bound = scale.clone();
        if let Some(sms) = io_bound.transports.sms.as_mut() {
            sms.base_url = slow_url;
            sms.concurrency = TRANSPORT_CONCURRENCY;
        }
        let toml = worker_toml(&io_bound)?;
        match scenario(
            "scale-out-slow-carrier",
            &io_bound,
            &Workers::Processes(toml),
            &[1, 2],
            MESSAGES / 2,
        )
        .await
        {
            Ok(r) => slow_carrier = r,
            Err(e) => result = Err(e),
        }
        let _ = stop_slow.send(());
    }
    let _ = sealgate_server::store::postgres::PgStore::drop_schema(&pg, &schema).await;
    let _ = sealgate_server::delivery::nats::NatsQueue::delete_stream(&nats, &stream).await;
    let s = result?;
    let mean = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
        v.iter().map(f).sum::<f64>() / v.len().max(1) as f64
    };
    anyhow::ensure!(!e.is_empty() && !s.is_empty(), "no figures");
    let (e_acc, e_drain) = (mean(&e, |r| r.0), mean(&e, |r| r.1));
    let s_acc = mean(&s, |r| r.0);
    let (s_drain1, s_drain2) = (s[0].1, s.get(1).map_or(0.0, |r| r.1));
    println!(
        "scale-out vs embedded (means of the rounds): accepts {:.0} % ({s_acc:.0} vs {e_acc:.0}/s), \
         drain with one worker process {:.0} % ({s_drain1:.0} vs {e_drain:.0}/s); target >= 50 %",
        100.0 * s_acc / e_acc,
        100.0 * s_drain1 / e_drain
    );
    println!(
        "scale-out drain: 1 worker process {s_drain1:.0} msg/s, 2 worker processes {s_drain2:.0} msg/s ({:+.0} %)",
        100.0 * (s_drain2 / s_drain1 - 1.0)
    );
    if let (Some(one), Some(two)) = (slow_carrier.first(), slow_carrier.get(1)) {
        println!(
            "scale-out drain, carrier {CARRIER_LATENCY_MS} ms per call, {TRANSPORT_CONCURRENCY} calls in flight per process: \
             1 worker process {:.0} msg/s, 2 worker processes {:.0} msg/s ({:+.0} %)",
            one.1,
            two.1,
            100.0 * (two.1 / one.1 - 1.0)
        );
    }
    let _ = stop_sim.send(());
    Ok(())
}
