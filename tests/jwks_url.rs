//! Public keys from a JWKS URL (`--jwt-jwks-url`): fetched at start, refreshed, rotated early
//! when a token names an unknown `kid`, kept when a refresh fails, over HTTP and HTTPS.
//!
//! A small key server in this file serves parts of `hub/testdata/jwt/jwks.json` (RSA keys `k1`
//! and `k2`, whose private halves are `rsa-private.pem` and `rsa2-private.pem`) and counts its
//! requests; the hub starts as `hub serve` starts it (`AppState::connect`). A token is judged by a
//! REST broadcast with it (202 accepted, 401 refused with the reason).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tests::{TestHub, http_client, now_secs};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(10);

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../hub/testdata/jwt")
        .join(name)
}

/// The keys of the test JWKS whose `kid` is in `kids`, as a JWKS document.
fn jwks_with(kids: &[&str]) -> String {
    let all: Value = serde_json::from_slice(&std::fs::read(testdata("jwks.json")).expect("jwks"))
        .expect("the test JWKS is JSON");
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .expect("keys array")
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap_or("")))
        .cloned()
        .collect();
    assert_eq!(
        keys.len(),
        kids.len(),
        "every kid asked for is in the test JWKS"
    );
    json!({ "keys": keys }).to_string()
}

/// A service-role RS256 token with `kid`, signed by `private_pem`; `n` makes it distinct (a new
/// token is never answered from the hub's cache).
fn token(kid: &str, private_pem: &str, n: u64) -> String {
    let pem = std::fs::read(testdata(private_pem)).expect("read a test key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("parse a test key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let claims = json!({"role": "service_role", "sub": "svc", "exp": now_secs() + 600, "n": n});
    jsonwebtoken::encode(&header, &claims, &key).expect("sign a test token")
}

/// A REST broadcast with `token`: its status and, when refused, the reason.
async fn judge(hub: &TestHub, token: &str) -> (u16, String) {
    let resp = http_client()
        .post(hub.http("/api/broadcast"))
        .header("Authorization", format!("Bearer {token}"))
        .json(&json!({"messages": [{"topic": "keys", "event": "k", "payload": {}}]}))
        .send()
        .await
        .expect("REST broadcast request");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    // The Supabase broadcast endpoint answers refusals as `{"message": ...}`.
    let reason = body["message"].as_str().unwrap_or("").to_owned();
    (status, reason)
}

const UNKNOWN_KEY: &str = "No configured key can verify this token";

// ---------------------------------------------------------------------------------------------
// The key server
// ---------------------------------------------------------------------------------------------

/// Serves one response (status and body, switchable) to every request and counts requests.
struct KeyServer {
    url: String,
    response: Arc<Mutex<(u16, String)>>,
    requests: Arc<AtomicUsize>,
    request_seen: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyServer {
    async fn start(tls: Option<tokio_rustls::TlsAcceptor>, status: u16, body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let response = Arc::new(Mutex::new((status, body)));
        let requests = Arc::new(AtomicUsize::new(0));
        let request_seen = Arc::new(Notify::new());
        let (r, n, seen) = (response.clone(), requests.clone(), request_seen.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (r, n, seen, tls) = (r.clone(), n.clone(), seen.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => answer(tcp, &r, &n, &seen).await,
                        Some(acceptor) => {
                            // A failed handshake (the client does not trust us) is no request.
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                answer(stream, &r, &n, &seen).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            url: format!("{scheme}://{addr}/.well-known/jwks.json"),
            response,
            requests,
            request_seen,
            task,
        }
    }

    fn respond(&self, status: u16, body: String) {
        *self.response.lock().expect("response lock") = (status, body);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Waits until the server has answered at least `n` requests in all.
    async fn wait_requests(&self, n: usize, why: &str) {
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                let seen = self.request_seen.notified();
                if self.requests() >= n {
                    return;
                }
                seen.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "waited {WAIT:?} for request {n} to the key server ({why}); saw {}",
            self.requests()
        );
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    response: &Mutex<(u16, String)>,
    requests: &AtomicUsize,
    seen: &Notify,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let (status, body) = response.lock().expect("response lock").clone();
    let reply = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    // Counted before the answer goes out: once the hub has the body, the count includes it.
    requests.fetch_add(1, Ordering::SeqCst);
    seen.notify_waiters();
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

async fn hub_on(url: &str, refresh: Duration, cooldown: Duration) -> TestHub {
    let url = url.to_owned();
    TestHub::try_spawn_connected(move |c| {
        c.jwt_algorithms = vec!["RS256".into(), "HS256".into()];
        c.jwt_jwks_url = Some(url);
        c.jwt_jwks_refresh = refresh;
        c.jwt_jwks_cooldown = cooldown;
    })
    .await
    .unwrap_or_else(|e| panic!("the hub did not start on the JWKS URL: {e}"))
}

#[tokio::test]
async fn a_rotated_key_is_fetched_early_and_a_withdrawn_key_stops_verifying() {
    let keys = KeyServer::start(None, 200, jwks_with(&["k1"])).await;
    let cooldown = Duration::from_millis(300);
    let hub = hub_on(&keys.url, Duration::from_secs(3600), cooldown).await;
    assert_eq!(keys.requests(), 1, "the JWKS is fetched once at start");

    let old = token("k1", "rsa-private.pem", 1);
    assert_eq!(
        judge(&hub, &old).await,
        (202, String::new()),
        "k1 from the URL verifies"
    );

    // The provider rotates: k2 in, k1 out. The hub still holds k1 (next refresh in an hour).
    keys.respond(200, jwks_with(&["k2"]));
    let new = token("k2", "rsa2-private.pem", 2);
    assert_eq!(
        judge(&hub, &new).await,
        (401, UNKNOWN_KEY.to_owned()),
        "a token with the new kid, before the hub has it"
    );
    keys.wait_requests(2, "the unknown kid asks for an early fetch")
        .await;
    let accepted = tokio::time::timeout(WAIT, async {
        loop {
            if judge(&hub, &new).await.0 == 202 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        accepted.is_ok(),
        "waited {WAIT:?} for the k2 token to verify after the early fetch"
    );
    // The k1 token verified before and sat in the token cache; the new set dropped its key.
    assert_eq!(
        judge(&hub, &old).await,
        (401, UNKNOWN_KEY.to_owned()),
        "a cached token whose key was withdrawn"
    );

    // A flood of made-up kids: one fetch per cooldown at most.
    let before = keys.requests();
    let started = Instant::now();
    for n in 0..60 {
        let forged = token(&format!("made-up-{n}"), "rsa-private.pem", 100 + n);
        assert_eq!(
            judge(&hub, &forged).await.0,
            401,
            "token with made-up kid {n}"
        );
    }
    let elapsed = started.elapsed();
    let allowed = (elapsed.as_millis() / cooldown.as_millis()) as usize + 2;
    let fetched = keys.requests() - before;
    assert!(
        fetched <= allowed,
        "60 unknown kids over {elapsed:?} caused {fetched} fetches; the cooldown of {cooldown:?} \
         allows {allowed}"
    );
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_keys_at_hand() {
    let keys = KeyServer::start(None, 200, jwks_with(&["k1", "k2"])).await;
    let hub = hub_on(
        &keys.url,
        Duration::from_millis(100),
        Duration::from_millis(50),
    )
    .await;
    keys.respond(500, "{\"error\":\"down for maintenance\"}".into());
    keys.wait_requests(3, "two scheduled refreshes that fail")
        .await;
    keys.respond(200, "not json".into());
    let seen = keys.requests();
    keys.wait_requests(seen + 2, "two refreshes that return garbage")
        .await;
    assert_eq!(
        judge(&hub, &token("k1", "rsa-private.pem", 3)).await,
        (202, String::new()),
        "a new k1 token after failed refreshes"
    );
    assert_eq!(
        judge(&hub, &token("k2", "rsa2-private.pem", 4)).await,
        (202, String::new()),
        "a new k2 token after failed refreshes"
    );
}

#[tokio::test]
async fn the_hub_does_not_start_without_a_usable_jwks() {
    let cases = [
        (404, "{}".to_owned(), "404"),
        (200, "<html>login</html>".to_owned(), "not a usable JWKS"),
        (200, jwks_with(&[]), "no RSA or EC key"),
    ];
    for (status, body, expect) in cases {
        let keys = KeyServer::start(None, status, body).await;
        let url = keys.url.clone();
        let Err(err) = TestHub::try_spawn_connected(|c| {
            c.jwt_algorithms = vec!["RS256".into()];
            c.jwt_jwks_url = Some(url);
        })
        .await
        else {
            panic!("the hub started on a JWKS URL answering {status}");
        };
        assert!(
            err.contains(&keys.url) && err.contains(expect),
            "start error for a URL answering {status}: want {expect:?} and the URL, got {err:?}"
        );
    }

    // Nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let Err(err) = TestHub::try_spawn_connected(|c| {
        c.jwt_algorithms = vec!["RS256".into()];
        c.jwt_jwks_url = Some(format!("http://{addr}/jwks.json"));
    })
    .await
    else {
        panic!("the hub started on a JWKS URL nobody serves");
    };
    assert!(
        err.contains("request failed") && err.contains("onnection refused"),
        "start error for a closed port: {err:?}"
    );

    let Err(err) = TestHub::try_spawn_connected(|c| {
        c.jwt_jwks_url = Some("ftp://keys.example/jwks.json".into());
    })
    .await
    else {
        panic!("the hub started on an ftp:// JWKS URL");
    };
    assert!(err.contains("http:// or https://"), "ftp URL: {err:?}");
}

/// A CA and a server certificate for 127.0.0.1 it signed, made with the `openssl` command.
struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    fn create() -> Self {
        let dir = std::env::temp_dir().join(format!("hub-jwks-pki-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create the PKI directory");
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write leaf.ext");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let steps: [&[&str]; 3] = [
            &[
                &["req", "-x509"],
                &ec[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=hub test CA",
                ],
            ]
            .concat(),
            &[
                &["req"],
                &ec[..],
                &[
                    "-keyout",
                    "leaf.key",
                    "-out",
                    "leaf.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "leaf.pem",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
            ],
        ];
        for args in steps {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("run openssl (the test makes its certificates with it)");
            assert!(
                out.status.success(),
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(self.path("leaf.pem"))
            .expect("leaf.pem")
            .collect::<Result<Vec<_>, _>>()
            .expect("parse leaf.pem");
        let key = PrivateKeyDer::from_pem_file(self.path("leaf.key")).expect("leaf.key");
        #[allow(deprecated)] // ring's provider, as the hub uses (see hub/src/jwks.rs)
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server certificate");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn https_needs_a_trusted_certificate() {
    let pki = TestPki::create();
    assert!(pki.path("ca.pem").is_file(), "openssl wrote ca.pem");
    let keys = KeyServer::start(Some(pki.acceptor()), 200, jwks_with(&["k1"])).await;
    assert!(keys.url.starts_with("https://"), "{}", keys.url);

    let url = keys.url.clone();
    let Err(err) = TestHub::try_spawn_connected(|c| {
        c.jwt_algorithms = vec!["RS256".into()];
        c.jwt_jwks_url = Some(url);
    })
    .await
    else {
        panic!("the hub trusted a certificate from an unknown CA");
    };
    assert!(
        err.contains("certificate") && err.contains(&keys.url),
        "start error for an untrusted certificate: {err:?}"
    );

    let url = keys.url.clone();
    let ca = pki.path("ca.pem");
    let hub = TestHub::try_spawn_connected(|c| {
        c.jwt_algorithms = vec!["RS256".into()];
        c.jwt_jwks_url = Some(url);
        c.jwt_jwks_ca = Some(ca);
    })
    .await
    .unwrap_or_else(|e| panic!("the hub did not start with --jwt-jwks-ca: {e}"));
    assert_eq!(
        judge(&hub, &token("k1", "rsa-private.pem", 5)).await,
        (202, String::new()),
        "a k1 token with the key fetched over HTTPS"
    );
}
