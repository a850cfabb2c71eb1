#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
pub mod directory;
pub mod ds;
pub mod error;
pub mod mls;
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
use store::sqlite::SqliteStore;

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
    ds: ds::DeliveryService,
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

    pub fn ds(&self) -> &ds::DeliveryService {
        &self.inner.ds
    }
}

/// The gateway: open it on a data folder, then serve it on a listener until shutdown.
#[derive(Clone)]
pub struct Gateway {
    state: AppState,
    operator_token_path: PathBuf,
}

impl Gateway {
    /// Open the data folder (creating it), the store (applying migrations), and the operator
    /// token (written with mode 0600 on first start, read afterwards).
    pub async fn open(config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| ServerError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let store = SqliteStore::open(&dir.join(DATABASE_FILE)).await?;
        let operator_token_path = dir.join(OPERATOR_TOKEN_FILE);
        let operator_token = read_or_create_operator_token(&operator_token_path)?;
        let config = Arc::new(config);
        let state = AppState {
            inner: Arc::new(Inner {
                claims: directory::ClaimLimiter::new(
                    config.claim_rate_per_minute,
                    config.claim_burst,
                ),
                ds: ds::DeliveryService::new(),
                operator_token_hash: auth::secret_hash(&operator_token),
                store: Arc::new(store),
                config,
            }),
        };
        Ok(Self {
            state,
            operator_token_path,
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

    /// The full HTTP router.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// Serve until `shutdown` resolves, then stop accepting, finish in-flight requests and
    /// return. Long-polls are woken so they answer promptly.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let ds = self.state.ds().clone();
        let router = self.router();
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                ds.shutdown();
            })
            .await
            .map_err(ServerError::Serve)
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
