//! Shared helpers for the server's integration tests: a real gateway on a loopback port,
//! tenants, enrollments, registered devices with real MLS signing keys, and real KeyPackages.
//!
//! Include it from any test binary with `mod support;` (unused helpers are allowed). API:
//! - [`TestGateway::start`] / [`TestGateway::start_with`]`(|c: &mut Config| ..)`: opens a
//!   `Gateway` on a fresh temp data folder and serves it on `127.0.0.1:0`; stops when dropped.
//!   Fields: `base` (`http://127.0.0.1:PORT`), `http` (`reqwest::Client`), `operator_token`,
//!   `gateway` (for `gateway.state().store()`). Methods: `url(path)`,
//!   `create_tenant(name) -> CreateTenantResponse`, `enroll(api_key, user) ->
//!   EnrollmentResponse`, `register(enrollment_token) -> TestDevice`, `device(api_key, user)
//!   -> TestDevice` (enroll + register), `publish(&device, n, last_resort) -> KeyPackageStock`.
//! - [`TestDevice`]: `tenant_id, user, device_id, token, identity, secret_key, public_key`;
//!   `mls_client()` (mls-rs `Client` with this device's credential, 84-day KeyPackages),
//!   `key_packages(n) -> Vec<Vec<u8>>` (MLSMessage bytes), `auth()` (the bearer header value).
//! - [`new_signing_key`], [`mls_client`], [`key_package`]: build any identity / KeyPackage,
//!   e.g. a forged one.
//! - [`problem`]: read an error response, asserting `application/problem+json`.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mls_rs::client_builder::MlsConfig;
use mls_rs::crypto::{SignaturePublicKey, SignatureSecretKey};
use mls_rs::identity::SigningIdentity;
use mls_rs::identity::basic::{BasicCredential, BasicIdentityProvider};
use mls_rs::{CipherSuite, CipherSuiteProvider, Client, CryptoProvider};
use mls_rs_crypto_awslc::AwsLcCryptoProvider;
use reqwest::StatusCode;
use sealgate_proto::api::{
    CreateEnrollmentRequest, CreateTenantRequest, CreateTenantResponse, EnrollmentResponse,
    KeyPackageStock, PublishKeyPackagesRequest, RegisterDeviceRequest, RegisterDeviceResponse,
};
use sealgate_proto::{DeviceIdentity, MAX_KEY_PACKAGE_LIFETIME_SECS, Problem};
use sealgate_server::{Config, Gateway};

/// The suite every Sealgate KeyPackage uses.
pub const SUITE: CipherSuite = CipherSuite::CURVE25519_AES128;

/// A running gateway; shut down when dropped.
pub struct TestGateway {
    pub base: String,
    pub http: reqwest::Client,
    pub operator_token: String,
    pub gateway: Gateway,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    pub async fn start() -> Result<Self> {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = Config::for_data_dir(dir.path());
        tweak(&mut config);
        let gateway = Gateway::open(config).await?;
        let operator_token = std::fs::read_to_string(gateway.operator_token_path())?
            .trim()
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serving = gateway.clone();
        tokio::spawn(async move {
            let _ = serving
                .serve(listener, async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Self {
            base,
            http: reqwest::Client::new(),
            operator_token,
            gateway,
            _shutdown: tx,
            _dir: dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn create_tenant(&self, name: &str) -> Result<CreateTenantResponse> {
        let resp = self
            .http
            .post(self.url("/v1/admin/tenants"))
            .bearer_auth(&self.operator_token)
            .json(&CreateTenantRequest {
                name: name.to_owned(),
            })
            .send()
            .await?;
        ensure!(
            resp.status() == StatusCode::CREATED,
            "create tenant: {}",
            resp.status()
        );
        Ok(resp.json().await?)
    }

    pub async fn enroll(&self, api_key: &str, user: &str) -> Result<EnrollmentResponse> {
        let resp = self
            .http
            .post(self.url("/v1/enrollments"))
            .bearer_auth(api_key)
            .json(&CreateEnrollmentRequest {
                user: user.to_owned(),
                phone: None,
                ttl_secs: None,
            })
            .send()
            .await?;
        ensure!(
            resp.status() == StatusCode::CREATED,
            "enroll: {}",
            resp.status()
        );
        Ok(resp.json().await?)
    }

    /// Register a new device with fresh signing keys using `enrollment_token`.
    pub async fn register(&self, enrollment_token: &str) -> Result<TestDevice> {
        let (secret_key, public_key) = new_signing_key()?;
        let resp = self
            .http
            .post(self.url("/v1/devices"))
            .json(&RegisterDeviceRequest {
                enrollment_token: enrollment_token.to_owned(),
                signature_key: public_key.as_bytes().to_vec(),
                name: Some("test device".to_owned()),
            })
            .send()
            .await?;
        ensure!(
            resp.status() == StatusCode::CREATED,
            "register: {}",
            resp.status()
        );
        let r: RegisterDeviceResponse = resp.json().await?;
        let identity = DeviceIdentity::new(&r.tenant_id, &r.user, &r.device_id)?;
        ensure!(identity.to_string() == r.credential_identity);
        Ok(TestDevice {
            tenant_id: r.tenant_id,
            user: r.user,
            device_id: r.device_id,
            token: r.device_token,
            identity,
            secret_key,
            public_key,
        })
    }

    /// Enroll `user` with `api_key` and register one device for it.
    pub async fn device(&self, api_key: &str, user: &str) -> Result<TestDevice> {
        let enrollment = self.enroll(api_key, user).await?;
        self.register(&enrollment.token).await
    }

    /// Publish `n` fresh one-time KeyPackages (and a last-resort one if asked) for `device`.
    pub async fn publish(
        &self,
        device: &TestDevice,
        n: usize,
        last_resort: bool,
    ) -> Result<KeyPackageStock> {
        let mut kps = device.key_packages(n + usize::from(last_resort))?;
        let last = if last_resort { kps.pop() } else { None };
        let resp = self
            .http
            .post(self.url("/v1/keypackages"))
            .bearer_auth(&device.token)
            .json(&PublishKeyPackagesRequest {
                key_packages: kps,
                last_resort: last,
            })
            .send()
            .await?;
        ensure!(
            resp.status() == StatusCode::OK,
            "publish: {}",
            resp.status()
        );
        Ok(resp.json().await?)
    }
}

/// A registered device and its MLS signing keys.
pub struct TestDevice {
    pub tenant_id: String,
    pub user: String,
    pub device_id: String,
    pub token: String,
    pub identity: DeviceIdentity,
    pub secret_key: SignatureSecretKey,
    pub public_key: SignaturePublicKey,
}

impl TestDevice {
    /// `Bearer <device token>`.
    pub fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// An mls-rs client acting as this device.
    pub fn mls_client(&self) -> Client<impl MlsConfig + use<>> {
        mls_client(
            self.identity.to_credential_bytes(),
            self.secret_key.clone(),
            self.public_key.clone(),
            Duration::from_secs(MAX_KEY_PACKAGE_LIFETIME_SECS),
        )
    }

    /// `n` valid KeyPackage `MLSMessage`s of this device.
    pub fn key_packages(&self, n: usize) -> Result<Vec<Vec<u8>>> {
        let client = self.mls_client();
        (0..n)
            .map(|_| {
                Ok(client
                    .generate_key_package_message(Default::default(), Default::default(), None)?
                    .to_bytes()?)
            })
            .collect()
    }
}

/// A fresh Ed25519 key pair.
pub fn new_signing_key() -> Result<(SignatureSecretKey, SignaturePublicKey)> {
    let provider = AwsLcCryptoProvider::default()
        .cipher_suite_provider(SUITE)
        .context("suite 1 unsupported")?;
    Ok(provider.signature_key_generate()?)
}

/// An mls-rs client with a basic credential carrying `identity` bytes.
pub fn mls_client(
    identity: Vec<u8>,
    secret_key: SignatureSecretKey,
    public_key: SignaturePublicKey,
    key_package_lifetime: Duration,
) -> Client<impl MlsConfig + use<>> {
    Client::builder()
        .crypto_provider(AwsLcCryptoProvider::default())
        .identity_provider(BasicIdentityProvider::new())
        .signing_identity(
            SigningIdentity::new(BasicCredential::new(identity).into_credential(), public_key),
            secret_key,
            SUITE,
        )
        .key_package_lifetime(key_package_lifetime)
        .build()
}

/// One KeyPackage `MLSMessage` for an arbitrary identity and key (forgeries included).
pub fn key_package(
    identity: &[u8],
    secret_key: &SignatureSecretKey,
    public_key: &SignaturePublicKey,
    lifetime: Duration,
) -> Result<Vec<u8>> {
    let client = mls_client(
        identity.to_vec(),
        secret_key.clone(),
        public_key.clone(),
        lifetime,
    );
    Ok(client
        .generate_key_package_message(Default::default(), Default::default(), None)?
        .to_bytes()?)
}

/// Read an error response: status and problem document, checking the media type.
pub async fn problem(resp: reqwest::Response) -> Result<(StatusCode, Problem)> {
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(
        content_type == "application/problem+json",
        "{status}: content-type {content_type:?}"
    );
    let problem: Problem = resp.json().await?;
    ensure!(problem.status == status.as_u16());
    Ok((status, problem))
}
