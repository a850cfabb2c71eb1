//! `sealgate`: the server binary. Thin by design: parse flags, load the typed config, then hand
//! over to `sealgate_server::Gateway`. Admin commands open the same data folder directly, so
//! they work (and are scriptable, with JSON output) whether or not a server is running.

// Links the library, and with it the global allocator (mimalloc).
use sealgate as _;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use sealgate_proto::api::CreateEnrollmentRequest;
use sealgate_server::{Config, Gateway, Role};

#[derive(Parser)]
#[command(
    name = "sealgate",
    version,
    about = "Sealgate gateway: E2EE business messaging over RCS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (API + delivery service) until SIGTERM or Ctrl-C.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long, env = "SEALGATE_LISTEN")]
        listen: Option<SocketAddr>,
        /// Log format: `text` (default) or `json`.
        #[arg(long, default_value = "text")]
        log_format: String,
        /// What this process runs: `api` (HTTP API, no delivery workers), `worker` (delivery
        /// workers; health and metrics only on the listener) or `all` (both, the default).
        #[arg(long, env = "SEALGATE_ROLE", default_value = "all")]
        role: Role,
    },
    /// Apply pending store migrations (and create the queue stream, operator token and
    /// URL-signing key if missing), then exit. Run once before starting a scale-out fleet.
    Migrate {
        #[command(flatten)]
        common: Common,
    },
    /// Administer tenants and enrollments (JSON output).
    Admin {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print the OpenAPI spec of the HTTP API as JSON.
    Openapi,
}

#[derive(Args)]
struct Common {
    /// Data folder (default ./sealgate-data).
    #[arg(long, env = "SEALGATE_DATA")]
    data: Option<PathBuf>,
    /// Configuration file (TOML).
    #[arg(long, env = "SEALGATE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Issue a one-time device enrollment token for a user of a tenant.
    Enroll {
        /// Tenant id or name.
        #[arg(long)]
        tenant: String,
        /// User id (created on first enrollment).
        #[arg(long)]
        user: String,
        /// E.164 phone number of the user.
        #[arg(long)]
        phone: Option<String>,
        /// Token lifetime in seconds.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Print the path of the bootstrap operator token (for the HTTP admin API).
    OperatorToken,
    /// A tenant's send policy (per message class: E2EE, then the fallback chain).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the tenant's effective policy (version 0 = the built-in default).
    Get {
        /// Tenant id or name.
        #[arg(long)]
        tenant: String,
    },
    /// Replace the tenant's policy with FILE (JSON, or TOML when it ends in .toml); every
    /// problem in it is listed. Recorded in the audit trail as `operator`.
    Set {
        /// Tenant id or name.
        #[arg(long)]
        tenant: String,
        file: PathBuf,
    },
    /// Print the audit trail of the tenant's policy, newest first.
    History {
        /// Tenant id or name.
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant; prints its id and first API key (shown once).
    Create { name: String },
    /// List tenants.
    List,
}

impl Common {
    fn config(&self) -> Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(data) = &self.data {
            config.data_dir = data.clone();
        }
        Ok(config)
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            common,
            listen,
            log_format,
            role,
        } => {
            init_logging(&log_format)?;
            let mut config = common.config()?;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            serve(config, role).await
        }
        Command::Migrate { common } => {
            Gateway::migrate(common.config()?).await?;
            println!("{}", serde_json::json!({ "migrated": true }));
            Ok(())
        }
        Command::Admin { common, command } => {
            let gateway = Gateway::open(common.config()?).await?;
            admin(&gateway, command).await
        }
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&sealgate_server::openapi())?
            );
            Ok(())
        }
    }
}

fn init_logging(format: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEALGATE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, not in files or log collectors.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => bail!("unknown log format {other:?} (use text or json)"),
    }
    Ok(())
}

async fn serve(config: Config, role: Role) -> Result<()> {
    let gateway = Gateway::open_as(config.clone(), role).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data = %config.data_dir.display(), ?role, "gateway ready");
    // The one line scripts wait for.
    println!("listening on http://{addr}");
    gateway.serve(listener, shutdown_signal()).await?;
    tracing::info!("gateway stopped");
    Ok(())
}

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
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}

async fn admin(gateway: &Gateway, command: AdminCommand) -> Result<()> {
    let output = match command {
        AdminCommand::Tenant {
            command: TenantCommand::Create { name },
        } => serde_json::to_value(gateway.create_tenant(&name).await.map_err(problem)?)?,
        AdminCommand::Tenant {
            command: TenantCommand::List,
        } => serde_json::json!({ "tenants": gateway.list_tenants().await.map_err(problem)? }),
        AdminCommand::Enroll {
            tenant,
            user,
            phone,
            ttl,
        } => {
            let tenants = gateway.list_tenants().await.map_err(problem)?;
            let tenant_id = tenants
                .iter()
                .find(|t| t.tenant_id == tenant || t.name == tenant)
                .map(|t| t.tenant_id.clone())
                .with_context(|| format!("no tenant with id or name {tenant:?}"))?;
            let req = CreateEnrollmentRequest {
                user,
                phone,
                ttl_secs: ttl,
            };
            serde_json::to_value(
                gateway
                    .create_enrollment(&tenant_id, req)
                    .await
                    .map_err(problem)?,
            )?
        }
        AdminCommand::Policy { command } => policy(gateway, command).await?,
        AdminCommand::OperatorToken => {
            serde_json::json!({ "path": gateway.operator_token_path() })
        }
    };
    println!("{output}");
    Ok(())
}

async fn tenant_id(gateway: &Gateway, tenant: &str) -> Result<String> {
    let tenants = gateway.list_tenants().await.map_err(problem)?;
    tenants
        .iter()
        .find(|t| t.tenant_id == tenant || t.name == tenant)
        .map(|t| t.tenant_id.clone())
        .with_context(|| format!("no tenant with id or name {tenant:?}"))
}

async fn policy(gateway: &Gateway, command: PolicyCommand) -> Result<serde_json::Value> {
    let policies = gateway.state().policy();
    Ok(match command {
        PolicyCommand::Get { tenant } => {
            let tenant = tenant_id(gateway, &tenant).await?;
            serde_json::to_value(policies.view(&tenant).await.map_err(problem)?)?
        }
        PolicyCommand::Set { tenant, file } => {
            let tenant = tenant_id(gateway, &tenant).await?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let toml = file.extension().is_some_and(|e| e == "toml");
            let rules =
                sealgate_server::policy::parse_document(&bytes, toml).map_err(|issues| {
                    anyhow::anyhow!(
                        "invalid policy ({} problem(s)):\n  {}",
                        issues.len(),
                        issues.join("\n  ")
                    )
                })?;
            serde_json::to_value(
                policies
                    .set(&tenant, &rules, "operator")
                    .await
                    .map_err(problem)?,
            )?
        }
        PolicyCommand::History { tenant } => {
            let tenant = tenant_id(gateway, &tenant).await?;
            let changes = policies
                .store()
                .policy_history(&tenant, 1000)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            serde_json::json!({ "changes": changes })
        }
    })
}

fn problem(e: sealgate_server::ApiError) -> anyhow::Error {
    anyhow::anyhow!("{}", e.problem)
}
