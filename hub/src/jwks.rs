//! Public keys from a JWKS URL (`--jwt-jwks-url`): what an identity provider such as Supabase
//! Auth or Auth0 publishes at `/.well-known/jwks.json`.
//!
//! The set is fetched once at start, and the hub does not start without it: a hub that cannot
//! verify any token would refuse every client while looking healthy. After that a task
//! ([`refresh`]) fetches it again every `--jwt-jwks-refresh`, and early when a token names a `kid`
//! that no current key carries (the provider rotated its keys), but never more often than every
//! `--jwt-jwks-cooldown`, so a flood of tokens with made-up `kid`s costs one request per cooldown.
//! A failed refresh keeps the keys at hand and says so in the log; tokens go on verifying.
//!
//! The fetch is plain HTTP/1.1 or HTTPS (rustls, the system's roots plus `--jwt-jwks-ca`), with a
//! time limit and a size limit, and only a `200` counts.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::{JwtVerifier, KeyError, PublicKey};

/// Longest a fetch (connect, headers and body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest JWKS body accepted; real sets are a few KiB.
pub const MAX_BODY: usize = 1024 * 1024;

/// Where the keys come from and how to fetch them.
#[derive(Debug)]
pub struct JwksSource {
    url: http::Uri,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl JwksSource {
    /// A source for `url` (`http://` or `https://`), trusting the system's roots and, when given,
    /// the CA certificates in the PEM file `extra_ca`.
    pub fn new(url: &str, extra_ca: Option<&Path>) -> Result<Self, KeyError> {
        let fail = |reason: String| KeyError::Jwks {
            url: url.to_owned(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|e| fail(format!("not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(fail("the URL must start with http:// or https://".into())),
        }
        let tls = tls_config(extra_ca).map_err(fail)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            url: uri,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// The URL, for logs.
    pub fn url(&self) -> String {
        self.url.to_string()
    }

    /// Fetches and parses the set: its body (to tell whether it changed) and its keys.
    pub async fn fetch(&self) -> Result<(Bytes, Vec<PublicKey>), KeyError> {
        let fail = |reason: String| KeyError::Jwks {
            url: self.url(),
            reason,
        };
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.get())
            .await
            .map_err(|_| fail(format!("no answer within {FETCH_TIMEOUT:?}")))?
            .map_err(fail)?;
        let keys =
            PublicKey::from_jwks(&body).map_err(|e| fail(format!("not a usable JWKS: {e}")))?;
        Ok((body, keys))
    }

    async fn get(&self) -> Result<Bytes, String> {
        let request = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("hub/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
        let status = response.status();
        if status != http::StatusCode::OK {
            return Err(format!("answered {status}, not 200 OK"));
        }
        Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("reading the body (at most {MAX_BODY} bytes): {e}"))
    }
}

/// The error and its causes on one line (hyper's own message is only "client error (Connect)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn tls_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: an https URL signed by a public CA then fails
    // with a clear verification error, and `--jwt-jwks-ca` still works.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = extra_ca {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("reading {shown}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("reading {shown}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{shown} holds no certificate"));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{shown}: not a usable CA certificate: {e}"))?;
        }
    }
    // rustls 0.23.48 marks ring's provider deprecated because it lacks post-quantum key
    // exchange. Fetching a public key set is not a secret worth harvesting for later decryption,
    // and ring builds without cmake or a C toolchain beyond cc; aws-lc-rs would need both.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// How often [`refresh`] fetches.
#[derive(Debug, Clone, Copy)]
pub struct RefreshTiming {
    /// Between two scheduled fetches.
    pub every: Duration,
    /// Least time between two fetches of any kind (bounds early fetches for unknown `kid`s).
    pub cooldown: Duration,
}

/// Keeps `verifier`'s remote keys fresh until `shutdown`. `current` is the body of the set the
/// verifier holds now; a fetch that returns the same bytes changes nothing (and keeps the token
/// cache).
pub async fn refresh(
    source: JwksSource,
    verifier: Arc<JwtVerifier>,
    timing: RefreshTiming,
    mut current: Bytes,
    shutdown: CancellationToken,
) {
    let mut last_fetch = Instant::now();
    loop {
        let scheduled = last_fetch + timing.every.max(timing.cooldown);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(scheduled) => {}
            () = verifier.key_wanted() => {
                let earliest = last_fetch + timing.cooldown;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(earliest) => {}
                }
                tracing::debug!(url = %source.url(), "a token named an unknown kid: fetching the JWKS early");
            }
        }
        last_fetch = Instant::now();
        match source.fetch().await {
            Ok((body, keys)) if body != current => {
                tracing::info!(url = %source.url(), keys = keys.len(), "JWKS changed: using the new keys");
                verifier.replace_remote_keys(keys);
                current = body;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "JWKS refresh failed; keeping the keys at hand");
            }
        }
    }
}
