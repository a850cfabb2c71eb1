//! A thin HTTP client for the gateway's `/v1` API.
//!
//! One method per endpoint, JSON in and out, RFC 7807 problems mapped to
//! [`Error::Server`] so callers branch on the stable `code`. This module holds no protocol
//! logic and must never see plaintext: everything it carries is already MLS ciphertext or
//! public directory data. It never logs bodies or the device token.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use sealgate_proto::api::*;
use sealgate_proto::attachment::{
    CreateUploadRequest, CreateUploadResponse, DownloadUrlResponse, OFFSET_OCTET_STREAM,
    UPLOAD_LENGTH, UPLOAD_OFFSET,
};
use sealgate_proto::{ErrorCode, Problem};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Timeout of a normal request; long polls add their `wait` on top.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway, as seen by one device.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`), authenticated with `token` if given.
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::InvalidArgument(format!(
                "server URL must start with http:// or https://: {base}"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(Error::Transport)?;
        Ok(Self { http, base, token })
    }

    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<R> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(timeout);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(Error::Transport)?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let bytes = resp.bytes().await.map_err(Error::Transport)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| Error::BadResponse(format!("{path}: {e}")));
        }
        let mut problem =
            serde_json::from_slice::<Problem>(&bytes).unwrap_or_else(|_| fallback_problem(status));
        if problem.retry_after.is_none() {
            problem.retry_after = retry_after;
        }
        Err(Error::Server(Box::new(problem)))
    }

    async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R> {
        self.call::<(), R>(Method::GET, path, &[], None, REQUEST_TIMEOUT)
            .await
    }

    async fn post<B: Serialize, R: DeserializeOwned>(&self, path: &str, body: &B) -> Result<R> {
        self.call(Method::POST, path, &[], Some(body), REQUEST_TIMEOUT)
            .await
    }

    /// `POST /v1/devices`.
    pub async fn register(&self, req: &RegisterDeviceRequest) -> Result<RegisterDeviceResponse> {
        self.post("/v1/devices", req).await
    }

    /// `GET /v1/devices/me`.
    pub async fn me(&self) -> Result<DeviceInfo> {
        self.get("/v1/devices/me").await
    }

    /// `POST /v1/keypackages`.
    pub async fn publish_key_packages(
        &self,
        req: &PublishKeyPackagesRequest,
    ) -> Result<KeyPackageStock> {
        self.post("/v1/keypackages", req).await
    }

    /// `GET /v1/keypackages/stock`.
    pub async fn stock(&self) -> Result<KeyPackageStock> {
        self.get("/v1/keypackages/stock").await
    }

    /// `POST /v1/keypackages/claim`.
    pub async fn claim(&self, user: &str) -> Result<ClaimKeyPackagesResponse> {
        let req = ClaimKeyPackagesRequest {
            user: user.to_owned(),
        };
        self.post("/v1/keypackages/claim", &req).await
    }

    /// `GET /v1/users/{user}` (callers validate `user` so it is URL-safe).
    pub async fn user(&self, user: &str) -> Result<UserInfo> {
        self.get(&format!("/v1/users/{user}")).await
    }

    /// `POST /v1/groups`.
    pub async fn create_group(&self, req: &CreateGroupRequest) -> Result<GroupInfoResponse> {
        self.post("/v1/groups", req).await
    }

    /// `GET /v1/groups/{group_id}`.
    pub async fn group(&self, group_id: &str) -> Result<GroupInfoResponse> {
        self.get(&format!("/v1/groups/{group_id}")).await
    }

    /// `POST /v1/groups/{group_id}/commits`.
    pub async fn submit_commit(
        &self,
        group_id: &str,
        req: &SubmitCommitRequest,
    ) -> Result<SubmitCommitResponse> {
        self.post(&format!("/v1/groups/{group_id}/commits"), req)
            .await
    }

    /// `POST /v1/groups/{group_id}/messages`.
    pub async fn send_message(
        &self,
        group_id: &str,
        req: &SendMessageRequest,
    ) -> Result<SendMessageResponse> {
        self.post(&format!("/v1/groups/{group_id}/messages"), req)
            .await
    }

    /// `GET /v1/mailbox?after&limit&wait`.
    pub async fn mailbox(
        &self,
        after: i64,
        limit: u32,
        wait: Option<Duration>,
    ) -> Result<MailboxResponse> {
        let mut query = vec![("after", after.to_string()), ("limit", limit.to_string())];
        let mut timeout = REQUEST_TIMEOUT;
        if let Some(wait) = wait.filter(|w| !w.is_zero()) {
            let secs = wait.as_secs().max(1);
            query.push(("wait", secs.to_string()));
            timeout += Duration::from_secs(secs);
        }
        self.call::<(), _>(Method::GET, "/v1/mailbox", &query, None, timeout)
            .await
    }

    /// `POST /v1/mailbox/ack`.
    pub async fn ack(&self, up_to: i64) -> Result<AckResponse> {
        self.post("/v1/mailbox/ack", &AckRequest { up_to }).await
    }
}

// ---------------------------------------------------------------------------------------------
// Attachment blobs: ciphertext only.

/// Timeout of one blob request (a `PATCH` of a few MiB, or a whole download).
const BLOB_TIMEOUT: Duration = Duration::from_secs(3600);

impl Api {
    fn blob_request(&self, method: Method, url: String) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, url).timeout(BLOB_TIMEOUT);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        req
    }

    /// `POST /v1/attachments`.
    pub async fn create_upload(&self, req: &CreateUploadRequest) -> Result<CreateUploadResponse> {
        self.post("/v1/attachments", req).await
    }

    /// `HEAD /v1/attachments/{id}`: `(offset, length)`.
    pub async fn upload_offset(&self, attachment_id: &str) -> Result<(u64, u64)> {
        let resp = self
            .blob_request(
                Method::HEAD,
                format!("{}/v1/attachments/{attachment_id}", self.base),
            )
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(Error::Transport)?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(Error::Server(Box::new(Problem::new(
                ErrorCode::UnknownAttachment,
                None,
            ))));
        }
        if !status.is_success() {
            return Err(Error::Server(Box::new(fallback_problem(status))));
        }
        match (
            header_u64(&resp, UPLOAD_OFFSET),
            header_u64(&resp, UPLOAD_LENGTH),
        ) {
            (Some(offset), Some(length)) => Ok((offset, length)),
            _ => Err(Error::BadResponse(
                "HEAD without upload offset or length".into(),
            )),
        }
    }

    /// `PATCH /v1/attachments/{id}` at `offset`: the new offset.
    pub async fn append_upload(
        &self,
        attachment_id: &str,
        offset: u64,
        body: Vec<u8>,
    ) -> Result<u64> {
        let resp = self
            .blob_request(
                Method::PATCH,
                format!("{}/v1/attachments/{attachment_id}", self.base),
            )
            .header(reqwest::header::CONTENT_TYPE, OFFSET_OCTET_STREAM)
            .header(UPLOAD_OFFSET, offset.to_string())
            .body(body)
            .send()
            .await
            .map_err(Error::Transport)?;
        if resp.status().is_success() {
            return header_u64(&resp, UPLOAD_OFFSET)
                .ok_or_else(|| Error::BadResponse("PATCH without Upload-Offset".into()));
        }
        Err(error_from(resp).await)
    }

    /// `POST /v1/attachments/{id}/download-url`.
    pub async fn download_url(&self, attachment_id: &str) -> Result<DownloadUrlResponse> {
        self.call::<(), _>(
            Method::POST,
            &format!("/v1/attachments/{attachment_id}/download-url"),
            &[],
            None,
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// `GET` a signed download URL (a path on this gateway); the body is the ciphertext.
    pub async fn download(&self, url: &str) -> Result<reqwest::Response> {
        if !url.starts_with("/v1/blobs/") {
            return Err(Error::BadResponse("download URL outside /v1/blobs/".into()));
        }
        let resp = self
            .blob_request(Method::GET, format!("{}{url}", self.base))
            .send()
            .await
            .map_err(Error::Transport)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(error_from(resp).await)
    }
}

fn header_u64(resp: &reqwest::Response, name: &str) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// The problem document of an error response.
async fn error_from(resp: reqwest::Response) -> Error {
    let status = resp.status();
    match resp.bytes().await {
        Ok(bytes) => Error::Server(Box::new(
            serde_json::from_slice::<Problem>(&bytes).unwrap_or_else(|_| fallback_problem(status)),
        )),
        Err(e) => Error::Transport(e),
    }
}

/// A problem for an error response without a (parsable) problem body, e.g. from a proxy.
/// Its code is `http_{status}`, which no [`ErrorCode`] matches.
fn fallback_problem(status: StatusCode) -> Problem {
    let mut p = Problem::new(
        ErrorCode::Internal,
        Some(format!("HTTP {status} without a problem body")),
    );
    p.status = status.as_u16();
    p.code = format!("http_{}", status.as_u16());
    p
}
