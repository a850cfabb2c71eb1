#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod blobs;
pub mod capabilities;
pub mod config;
pub mod delivery;
pub mod directory;
pub mod ds;
pub mod error;
pub mod links;
pub mod mls;
pub mod policy;
pub mod sched;
pub mod store;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

pub use api::openapi::openapi;
pub use config::{Config, ConfigError};
pub use error::{ApiError, ApiResult};
use sealgate_proto::api::{
    CreateEnrollmentRequest, CreateTenantResponse, EnrollmentResponse, TenantInfo,
};
use store::Store;

/// Name of the file in the data folder holding the bootstrap operator token.
pub const OPERATOR_TOKEN_FILE: &str = "operator-token";
/// Name of the SQLite database file in the data folder.
pub const DATABASE_FILE: &str = "sealgate.db";

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data folder {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("serving: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Api(Box<sealgate_proto::Problem>),
    #[error("metrics registry: {0}")]
    Metrics(String),
}

impl From<ApiError> for ServerError {
    fn from(e: ApiError) -> Self {
        ServerError::Api(e.problem)
    }
}

/// Shared state of every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    operator_token_hash: String,
    claims: directory::ClaimLimiter,
    api_keys: auth::ApiKeyCache,
    ds: ds::DeliveryService,
    delivery: delivery::Delivery,
    blobs: blobs::Blobs,
    policy: policy::Policies,
    capabilities: capabilities::Capabilities,
    links: links::Links,
}

impl AppState {
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    pub fn operator_token_hash(&self) -> &str {
        &self.inner.operator_token_hash
    }

    pub fn claim_limiter(&self) -> &directory::ClaimLimiter {
        &self.inner.claims
    }

    pub fn api_key_cache(&self) -> &auth::ApiKeyCache {
        &self.inner.api_keys
    }

    pub fn ds(&self) -> &ds::DeliveryService {
        &self.inner.ds
    }

    pub fn delivery(&self) -> &delivery::Delivery {
        &self.inner.delivery
    }

    pub fn blobs(&self) -> &blobs::Blobs {
        &self.inner.blobs
    }

    pub fn policy(&self) -> &policy::Policies {
        &self.inner.policy
    }

    pub fn capabilities(&self) -> &capabilities::Capabilities {
        &self.inner.capabilities
    }

    pub fn links(&self) -> &links::Links {
        &self.inner.links
    }
}

/// What a gateway process runs (`sealgate serve --role`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// The HTTP API only: accepts, DS, directory, receipts; no delivery workers.
    Api,
    /// Delivery workers (and the blob garbage collector), with only `/healthz`, `/readyz`
    /// and `/metrics` on the listener.
    Worker,
    /// Both in one process (the embedded default).
    #[default]
    All,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "api" => Ok(Role::Api),
            "worker" => Ok(Role::Worker),
            "all" => Ok(Role::All),
            other => Err(format!("unknown role {other:?} (use api, worker or all)")),
        }
    }
}

/// The gateway: open it on a data folder, then serve it on a listener until shutdown.
#[derive(Clone)]
pub struct Gateway {
    state: AppState,
    operator_token_path: PathBuf,
    role: Role,
    /// The NATS outbox relay, when the queue is NATS (runs in every role).
    relay: Option<Arc<delivery::nats::NatsQueue>>,
}

impl Gateway {
    /// Open the data folder (creating it), the store (applying migrations), and the operator
    /// token (written with mode 0600 on first start, read afterwards).
    pub async fn open(config: Config) -> Result<Self, ServerError> {
        Self::open_as(config, Role::All).await
    }

    /// Apply every pending migration of the configured store (and create the JetStream
    /// stream and consumer, the operator token and the URL-signing key if missing), then
    /// close: what `sealgate migrate` does before a fleet starts.
    pub async fn migrate(mut config: Config) -> Result<(), ServerError> {
        config.store.migrate_on_start = true;
        Self::open_as(config, Role::Api).await.map(drop)
    }

    /// [`Gateway::open`] for one role of a scale-out deployment. Migrations run on start if
    /// `store.migrate_on_start` (SQLite always: it has one process).
    pub async fn open_as(config: Config, role: Role) -> Result<Self, ServerError> {
        config.validate()?;
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| ServerError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let backends = store::backend::open(&config, &dir, config.store.migrate_on_start).await?;
        let operator_token_path = dir.join(OPERATOR_TOKEN_FILE);
        let operator_token = read_or_create_operator_token(&operator_token_path)?;
        let config = Arc::new(config);
        let ds = ds::DeliveryService::new();
        let dyn_store: Arc<dyn Store> = backends.store;
        let blobs = blobs::Blobs::open(&config.blobs, &dir, backends.uploads)?;
        let transports = delivery::transports_from_config(&config, dyn_store.clone(), ds.clone());
        let delivery = delivery::Delivery::new(
            backends.delivery,
            transports,
            &config,
            delivery::Clock::System,
        )
        .map_err(|e| ServerError::Metrics(e.to_string()))?;
        let policy = policy::Policies::new(dyn_store.clone(), delivery.metrics().registry())
            .map_err(|e| ServerError::Metrics(e.to_string()))?;
        let capabilities = capabilities::Capabilities::new(&config);
        let links = links::Links::new(dyn_store.clone(), config.links.clone());
        let state = AppState {
            inner: Arc::new(Inner {
                policy,
                capabilities,
                links,
                api_keys: auth::ApiKeyCache::default(),
                claims: directory::ClaimLimiter::new(
                    config.claim_rate_per_minute,
                    config.claim_burst,
                ),
                ds,
                delivery,
                blobs,
                operator_token_hash: auth::secret_hash(&operator_token),
                store: dyn_store,
                config,
            }),
        };
        Ok(Self {
            state,
            operator_token_path,
            role,
            relay: backends.relay,
        })
    }

    /// The handler state (for embedding the router elsewhere).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Where the bootstrap operator token lives.
    pub fn operator_token_path(&self) -> &std::path::Path {
        &self.operator_token_path
    }

    /// The HTTP router of this process's role (a worker serves health and metrics only).
    pub fn router(&self) -> axum::Router {
        match self.role {
            Role::Api | Role::All => api::router(self.state.clone()),
            Role::Worker => api::worker_router(self.state.clone()),
        }
    }

    /// What this process runs.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Serve until `shutdown` resolves, then stop accepting, finish in-flight requests and
    /// return. Long-polls are woken so they answer promptly. Delivery workers (as many as
    /// `delivery.workers`) run alongside and are drained after the HTTP server: they stop
    /// leasing and finish the jobs in hand; a job cut short is leased again after restart.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let ds = self.state.ds().clone();
        self.lower_runtime_threads();
        let runs_workers = matches!(self.role, Role::Worker | Role::All);
        let workers = if runs_workers {
            self.state.delivery().spawn_workers()
        } else {
            None
        };
        let _blob_gc = runs_workers.then(|| self.state.blobs().spawn_gc());
        let _link_gc = runs_workers.then(|| self.state.links().spawn_gc());
        let (relay_stop, relay_rx) = tokio::sync::watch::channel(false);
        let relay = self.relay.as_ref().map(|q| q.spawn_relay(relay_rx));
        let router = self.router();
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                ds.shutdown();
            })
            .await
            .map_err(ServerError::Serve);
        if let Some(workers) = workers {
            workers.shutdown().await;
        }
        // Last: jobs written while draining still reach the queue.
        let _ = relay_stop.send(true);
        if let Some(relay) = relay {
            let _ = relay.await;
        }
        served
    }

    /// With the embedded store, run the async runtime's threads below its writer thread
    /// (`store.runtime_nice`; [`sched`]). The store is open, so its writer thread already
    /// exists at the process's own priority; the runtime's threads, and any they start
    /// later, go down.
    fn lower_runtime_threads(&self) {
        let store = &self.state.config().store;
        if store.backend != store::backend::StoreBackend::Sqlite || store.runtime_nice == 0 {
            return;
        }
        match sched::lower_threads(sched::TOKIO_THREADS, store.runtime_nice) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                threads = n,
                steps = store.runtime_nice,
                "runtime threads lowered below the store's writer"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "could not lower the runtime threads' priority; running without"
            ),
        }
    }

    /// Create a tenant and its first API key (what `sealgate admin tenant create` does).
    pub async fn create_tenant(&self, name: &str) -> Result<CreateTenantResponse, ApiError> {
        directory::admin::create_tenant(&self.state, name).await
    }

    /// All tenants.
    pub async fn list_tenants(&self) -> Result<Vec<TenantInfo>, ApiError> {
        directory::admin::list_tenants(&self.state).await
    }

    /// Issue a one-time enrollment token for a user of a tenant.
    pub async fn create_enrollment(
        &self,
        tenant_id: &str,
        req: CreateEnrollmentRequest,
    ) -> Result<EnrollmentResponse, ApiError> {
        directory::admin::create_enrollment(&self.state, tenant_id, req).await
    }
}

fn read_or_create_operator_token(path: &std::path::Path) -> Result<String, ServerError> {
    let io_err = |source| ServerError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = auth::new_secret(auth::SecretKind::Operator);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            use std::io::Write;
            let mut file = options.open(path).map_err(io_err)?;
            file.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_err)?;
            Ok(token)
        }
        Err(e) => Err(io_err(e)),
    }
}
