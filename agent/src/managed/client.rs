//! The agent's HTTP client to the control endpoint: reqwest over rustls,
//! every call signed with SigV4 by the AWS SDK's signer (`aws-sigv4`), the
//! ECS JSON 1.1 protocol. Several URLs (control replicas) are tried in
//! turn: a call that cannot reach one moves to the next, and the client
//! stays on the one that answered.

use crate::config::Config;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

/// Connecting to the control endpoint takes at most this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No control endpoint could be reached (or it answered garbage).
    #[error("cannot reach the control endpoint: {0}")]
    Transport(String),
    /// The control endpoint refused the call: ECS's exception name.
    #[error("{code}: {message}")]
    Api { code: String, message: String },
}

impl CallError {
    /// The exception name of a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            CallError::Api { code, .. } => Some(code),
            CallError::Transport(_) => None,
        }
    }

    /// A refusal of the key itself: retrying soon will not help.
    pub fn is_auth(&self) -> bool {
        matches!(
            self.code(),
            Some(
                "UnrecognizedClientException"
                    | "InvalidSignatureException"
                    | "IncompleteSignatureException"
                    | "MissingAuthenticationTokenException"
                    | "AccessDeniedException"
            )
        )
    }
}

pub struct Client {
    http: reqwest::Client,
    urls: Vec<String>,
    current: AtomicUsize,
    key: String,
    secret: String,
    region: String,
}

impl Client {
    /// A client for the configured control endpoint(s) and instance key.
    pub fn new(cfg: &Config) -> Result<Client, String> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("dockhand-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cfg.control_ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("{}: not a PEM certificate: {e}", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        Ok(Client {
            http: b.build().map_err(|e| e.to_string())?,
            urls: cfg.backend_hosts.clone(),
            current: AtomicUsize::new(0),
            key: cfg.access_key_id.clone().unwrap_or_default(),
            secret: cfg.secret_access_key.clone().unwrap_or_default(),
            region: cfg.region.clone(),
        })
    }

    /// The URL calls go to now.
    pub fn url(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.urls.len().max(1);
        self.urls.get(i).map_or("", String::as_str)
    }

    /// Calls `target` (`AmazonEC2ContainerServiceV20141113.X` or
    /// `DockhandAgentV1.X`) with `body`, waiting at most `timeout` for the
    /// answer; on a transport failure, each other URL is tried once.
    pub async fn call(
        &self,
        target: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let bytes = body.to_string().into_bytes();
        let mut last = CallError::Transport("no ECS_BACKEND_HOST".into());
        for _ in 0..self.urls.len() {
            let url = self.url().to_string();
            match self.call_one(&url, target, &bytes, timeout).await {
                Err(e @ CallError::Transport(_)) => {
                    tracing::debug!(url, cause = %e, "control endpoint unreachable; trying the next");
                    self.current.fetch_add(1, Ordering::Relaxed);
                    last = e;
                }
                other => return other,
            }
        }
        Err(last)
    }

    async fn call_one(
        &self,
        url: &str,
        target: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let endpoint = format!("{url}/");
        let headers = [
            ("content-type", "application/x-amz-json-1.1".to_string()),
            ("x-amz-target", target.to_string()),
        ];
        let signed = self
            .sign(&endpoint, &headers, body)
            .map_err(|e| CallError::Transport(format!("cannot sign the request: {e}")))?;
        let mut req = self
            .http
            .post(&endpoint)
            .timeout(timeout)
            .body(body.to_vec());
        for (k, v) in headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .chain(signed)
        {
            req = req.header(k, v);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| CallError::Transport(format!("{url}: {}", error_chain(&e))))?;
        let status = resp.status();
        let text = resp
            .bytes()
            .await
            .map_err(|e| CallError::Transport(format!("{url}: {}", error_chain(&e))))?;
        let v: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        match v["__type"].as_str() {
            Some(code) => Err(CallError::Api {
                code: code.rsplit('#').next().unwrap_or(code).to_string(),
                message: v["message"].as_str().unwrap_or("").to_string(),
            }),
            // Not the control endpoint (a proxy's error page): try another.
            None => Err(CallError::Transport(format!("{url}: HTTP {status}"))),
        }
    }

    /// The SigV4 headers (`authorization`, `x-amz-date`) of a POST.
    fn sign(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Vec<(String, String)>, String> {
        let identity = aws_credential_types::Credentials::new(
            &self.key,
            &self.secret,
            None,
            None,
            "ecs.config",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ecs")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let request = SignableRequest::new(
            "POST",
            url,
            headers.iter().map(|(k, v)| (*k, v.as_str())),
            SignableBody::Bytes(body),
        )
        .map_err(|e| e.to_string())?;
        let (instructions, _) = sign(request, &params)
            .map_err(|e| e.to_string())?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }
}

/// An error and its causes, for a log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
