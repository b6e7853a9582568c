//! A minimal JSON-over-HTTP client for the subcommands (hyper's pooled client, plain `http://`
//! only: the hub itself serves plain HTTP; put TLS in front and use its inside address).

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Longest one request may take, connect to last body byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response body read (an event timeline is far smaller).
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// A client for one hub.
#[derive(Debug, Clone)]
pub struct HubClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

/// A response: status and JSON body (a non-JSON body becomes a JSON string).
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Parsed body.
    pub body: Value,
}

impl Reply {
    /// The error text of a failed call: seed-000 `error.message`, Supabase `message`, or the body.
    pub fn error_text(&self) -> String {
        let b = &self.body;
        let msg = b["error"]["message"]
            .as_str()
            .or_else(|| b["message"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| b.to_string());
        match b["requestId"].as_str() {
            Some(id) => format!("{} {msg} (request {id})", self.status),
            None => format!("{} {msg}", self.status),
        }
    }
}

impl HubClient {
    /// A client for the hub at `base` (`http://host:port`).
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .with_context(|| format!("invalid URL {base:?}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => bail!("only http:// URLs are supported, not {other}://"),
            None => bail!("the URL needs a scheme: http://{base}"),
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self { client, base })
    }

    /// `method path` with an optional bearer token and JSON body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method.clone()).uri(&url);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let bytes = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .with_context(|| format!("building {method} {url}"))?;
        let call = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading the response: {e}"))?
                .to_bytes();
            anyhow::Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, call)
            .await
            .with_context(|| format!("{method} {url} timed out after {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{method} {url}"))?;
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok(Reply { status, body })
    }
}
