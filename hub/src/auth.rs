//! JWT verification and development tokens.
//!
//! What is accepted is pinned by configuration ([`JwtSettings`]): the algorithms (HS256/384/512
//! with the shared secret, RS256/384/512 and ES256/384 with public keys from PEM files, a JWKS
//! file or a JWKS URL kept fresh by [`crate::jwks`]), and optionally the audiences and issuers. `none` cannot be configured, and each
//! algorithm family only ever meets keys of its own family, so an RSA public key can never be
//! used as an HMAC secret (the classic key-confusion forgery). `role` and `exp` are required.
//! `nbf` gets a small leeway (a token minted by a server whose clock runs ahead is not refused);
//! `exp` does not: an open channel is closed the moment its token expires, so a token accepted
//! "within the leeway" would be closed right after its join.
//!
//! Verified tokens are cached (bounded, see [`TokenCache`]): a reconnect storm presents the
//! same few tokens thousands of times, and an RSA verification costs tens of microseconds.
//!
//! Errors use the wording of Supabase Realtime where it has one, so clients and operators see
//! familiar reasons.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use channels::auth::now_secs;
use channels::grants::Grants;
use channels::{Principal, TokenError, TokenVerifier};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value;

/// Default clock-skew leeway for `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(10);

/// Default number of verified tokens remembered.
pub const DEFAULT_CACHE_SIZE: usize = 10_000;

/// What the verifier accepts. Built from the command line by `Config::jwt_settings`.
#[derive(Clone)]
pub struct JwtSettings {
    /// The accepted algorithms; a token with any other `alg` is refused before its key is looked
    /// up.
    pub algorithms: Vec<Algorithm>,
    /// The HMAC secret (HS*). Also signs the tokens the hub issues itself (share tokens).
    pub secret: Vec<u8>,
    /// Public keys (RS*/ES*), each with its `kid` when it came from a JWKS.
    pub public_keys: Vec<PublicKey>,
    /// Keys from a JWKS URL as first fetched; [`JwtVerifier::replace_remote_keys`] swaps them.
    pub remote_keys: Vec<PublicKey>,
    /// Whether a JWKS URL is configured: a token whose `kid` no key carries then asks the
    /// refresher for an early fetch (the issuer may have rotated its keys).
    pub remote: bool,
    /// Accepted `aud` values; empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Accepted `iss` values; empty: `iss` is not checked.
    pub issuers: Vec<String>,
    /// Clock-skew allowance for `nbf`.
    pub leeway: Duration,
    /// Verified tokens remembered (0: no cache).
    pub cache_size: usize,
}

impl fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSettings")
            .field("algorithms", &self.algorithms)
            .field("public_keys", &self.public_keys.len())
            .field("remote_keys", &self.remote_keys.len())
            .field("audiences", &self.audiences)
            .field("issuers", &self.issuers)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl JwtSettings {
    /// HS256 with `secret`, nothing else: the default, and what tests use.
    pub fn hs256(secret: &[u8]) -> Self {
        Self {
            algorithms: vec![Algorithm::HS256],
            secret: secret.to_vec(),
            public_keys: Vec::new(),
            remote_keys: Vec::new(),
            remote: false,
            audiences: Vec::new(),
            issuers: Vec::new(),
            leeway: DEFAULT_LEEWAY,
            cache_size: DEFAULT_CACHE_SIZE,
        }
    }
}

/// Why the token configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key or JWKS file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key or JWKS file holds no usable key.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An algorithm name that is not supported (or `none`).
    #[error(
        "unsupported JWT algorithm {0:?} (accepted: HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384)"
    )]
    Algorithm(String),
    /// An asymmetric algorithm is accepted but no public key of its family was given.
    #[error(
        "{0:?} is accepted but no RSA/EC public key was configured (--jwt-public-key or --jwt-jwks)"
    )]
    NoKeyFor(Algorithm),
    /// The JWKS URL could not be used at start.
    #[error("JWKS from {url}: {reason}")]
    Jwks {
        /// The URL.
        url: String,
        /// What failed (connection, status, body).
        reason: String,
    },
}

/// Which public-key family a key belongs to; a token's `alg` only ever meets keys of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
}

fn family(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        _ => None,
    }
}

/// An algorithm name from configuration. Only the ones this hub verifies are accepted; there is
/// no way to spell `none`.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    match name.trim().to_ascii_uppercase().as_str() {
        "HS256" => Ok(Algorithm::HS256),
        "HS384" => Ok(Algorithm::HS384),
        "HS512" => Ok(Algorithm::HS512),
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "RS512" => Ok(Algorithm::RS512),
        "ES256" => Ok(Algorithm::ES256),
        "ES384" => Ok(Algorithm::ES384),
        _ => Err(KeyError::Algorithm(name.to_owned())),
    }
}

/// A public key for RS*/ES* tokens.
#[derive(Clone)]
pub struct PublicKey {
    kid: Option<String>,
    family: Family,
    key: DecodingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    /// Reads one PEM public key (RSA or EC, SPKI or PKCS#1).
    pub fn from_pem_file(path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(&pem).ok_or_else(|| KeyError::Invalid {
            path: path.display().to_string(),
            reason: "not an RSA or EC public key in PEM form".into(),
        })
    }

    /// One PEM public key, RSA or EC.
    pub fn from_pem(pem: &[u8]) -> Option<Self> {
        let (family, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (Family::Rsa, k)
        } else {
            (Family::Ec, DecodingKey::from_ec_pem(pem).ok()?)
        };
        Some(Self {
            kid: None,
            family,
            key,
        })
    }

    /// The RSA and EC keys of a JWKS document (`{"keys": [...]}`), each with its `kid`. Keys of
    /// other kinds (symmetric `oct`, EdDSA) are skipped: a JWKS never supplies an HMAC secret.
    pub fn from_jwks(json: &[u8]) -> Result<Vec<Self>, String> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let family = match jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
            keys.push(Self {
                kid: jwk.common.key_id.clone(),
                family,
                key,
            });
        }
        if keys.is_empty() {
            return Err("no RSA or EC key in the set".into());
        }
        Ok(keys)
    }

    /// Reads a JWKS file.
    pub fn from_jwks_file(path: &Path) -> Result<Vec<Self>, KeyError> {
        let json = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_jwks(&json).map_err(|reason| KeyError::Invalid {
            path: path.display().to_string(),
            reason,
        })
    }
}

/// Verified tokens by their full text, with the principal they verified as.
///
/// Bounded: when it holds `capacity` tokens it is emptied and refilled by the tokens still in
/// use (a reconnect storm re-verifies each distinct token once more, not each connection).
/// Keyed by the whole token, never by a hash of it, so one token can never be mistaken for
/// another. Only successes are cached; an expired entry is reported as expired.
struct TokenCache {
    capacity: usize,
    map: Mutex<HashMap<Box<str>, Principal>>,
}

impl TokenCache {
    fn get(&self, token: &str) -> Option<Principal> {
        if self.capacity == 0 {
            return None;
        }
        self.lock().get(token).cloned()
    }

    fn put(&self, token: &str, p: &Principal) {
        if self.capacity == 0 {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(token.into(), p.clone());
    }

    fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Principal>> {
        // Each critical section is one lookup or insert: a panic cannot leave it half-done.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Verifies client tokens as [`JwtSettings`] say.
pub struct JwtVerifier {
    settings: JwtSettings,
    secret: DecodingKey,
    cache: TokenCache,
    /// The JWKS URL's current keys. Read once per verification (an `Arc` clone, the lock
    /// released before any signature work); written only by the refresher.
    remote: RwLock<Arc<[PublicKey]>>,
    /// Woken when a token names a `kid` no key carries (see [`JwtSettings::remote`]). One stored
    /// permit at most, so a storm of such tokens asks for one fetch, not thousands.
    key_wanted: tokio::sync::Notify,
    /// Tokens refused since start (exported as a metric).
    failures: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// A verifier for HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::build(JwtSettings::hs256(secret))
    }

    /// A verifier for `settings`; refuses settings that accept an algorithm no key can verify.
    pub fn new(settings: JwtSettings) -> Result<Self, KeyError> {
        for &alg in &settings.algorithms {
            if let Some(f) = family(alg)
                && !settings
                    .public_keys
                    .iter()
                    .chain(&settings.remote_keys)
                    .any(|k| k.family == f)
            {
                return Err(KeyError::NoKeyFor(alg));
            }
        }
        Ok(Self::build(settings))
    }

    fn build(mut settings: JwtSettings) -> Self {
        let remote = std::mem::take(&mut settings.remote_keys);
        Self {
            remote: RwLock::new(remote.into()),
            key_wanted: tokio::sync::Notify::new(),
            failures: std::sync::atomic::AtomicU64::new(0),
            secret: DecodingKey::from_secret(&settings.secret),
            cache: TokenCache {
                capacity: settings.cache_size,
                map: Mutex::new(HashMap::new()),
            },
            settings,
        }
    }

    /// Replaces the JWKS URL's keys and forgets every verified token, so a key the issuer
    /// withdrew stops verifying at once (its tokens are checked again against the new set).
    pub fn replace_remote_keys(&self, keys: Vec<PublicKey>) {
        let keys: Arc<[PublicKey]> = keys.into();
        *self.remote.write().unwrap_or_else(|p| p.into_inner()) = keys;
        self.cache.clear();
    }

    /// Completes when a token asked for a key no current key carries (the refresher waits on it).
    pub async fn key_wanted(&self) {
        self.key_wanted.notified().await;
    }

    fn remote_keys(&self) -> Arc<[PublicKey]> {
        self.remote
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The secret the hub signs its own tokens with.
    pub fn secret(&self) -> &[u8] {
        &self.settings.secret
    }

    /// The claims the hub's own tokens need to pass its checks: the first configured audience
    /// and issuer (the share-token exchange adds them).
    pub fn own_claims(&self) -> (Option<&str>, Option<&str>) {
        (
            self.settings.audiences.first().map(String::as_str),
            self.settings.issuers.first().map(String::as_str),
        )
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        // Expiry and required claims are checked in `principal`, to give Supabase's messages.
        v.validate_exp = false;
        v.validate_nbf = true;
        v.leeway = self.settings.leeway.as_secs();
        v.required_spec_claims.clear();
        if self.settings.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.settings.audiences);
            v.required_spec_claims.insert("aud".into());
        }
        if !self.settings.issuers.is_empty() {
            v.set_issuer(&self.settings.issuers);
            v.required_spec_claims.insert("iss".into());
        }
        v
    }

    /// Verifies the signature and the configured claims; the claims on success.
    fn decode(&self, token: &str) -> Result<Value, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let alg = header.alg;
        if !self.settings.algorithms.contains(&alg) {
            return Err(TokenError::AlgorithmNotAccepted(format!("{alg:?}")));
        }
        let validation = self.validation(alg);
        let decode = |key: &DecodingKey| jsonwebtoken::decode::<Value>(token, key, &validation);
        let result = match family(alg) {
            None => decode(&self.secret),
            Some(f) => {
                // Keys of the token's family; with a `kid`, only the keys carrying it (keys
                // from PEM files have none and are tried for any token).
                let remote = self.remote_keys();
                let mut candidates = self
                    .settings
                    .public_keys
                    .iter()
                    .chain(remote.iter())
                    .filter(|k| {
                        k.family == f
                            && match (&header.kid, &k.kid) {
                                (Some(want), Some(have)) => want == have,
                                _ => true,
                            }
                    });
                if self.settings.remote
                    && let Some(want) = &header.kid
                    && !remote.iter().any(|k| k.kid.as_ref() == Some(want))
                {
                    // Perhaps rotated in since the last fetch: ask for an early one. This
                    // token is still judged by the keys at hand (the client retries).
                    self.key_wanted.notify_one();
                }
                let Some(first) = candidates.next() else {
                    return Err(TokenError::UnknownKey);
                };
                let mut result = decode(&first.key);
                for k in candidates {
                    if !matches!(&result, Err(e) if *e.kind() == ErrorKind::InvalidSignature) {
                        break;
                    }
                    result = decode(&k.key);
                }
                result
            }
        };
        result.map(|d| d.claims).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::InvalidAudience => TokenError::WrongAudience,
            ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::WrongAudience,
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenError::WrongIssuer,
            _ => TokenError::Malformed,
        })
    }

    /// `exp` against now, exactly (see the module doc).
    fn check_expiry(&self, exp: u64) -> Result<(), TokenError> {
        let now = now_secs();
        if exp <= now {
            return Err(TokenError::Expired {
                secs_ago: now - exp,
            });
        }
        Ok(())
    }
}

/// The principal a verified token's claims describe; `role` and `exp` are required.
fn principal(claims: &Value) -> Result<Principal, TokenError> {
    let role = claims.get("role").and_then(Value::as_str);
    let exp = claims.get("exp").and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
    });
    let (Some(role), Some(exp)) = (role, exp) else {
        return Err(TokenError::MissingClaims);
    };
    let grants = match claims.get("grants") {
        None | Some(Value::Null) => None,
        Some(g) => Some(std::sync::Arc::new(
            Grants::from_claim(g).map_err(|e| TokenError::BadGrants(e.0))?,
        )),
    };
    Ok(Principal {
        role: role.to_owned(),
        sub: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
        exp,
        share_session: claims
            .get("share_session")
            .and_then(Value::as_str)
            .and_then(|s| uuid::Uuid::parse_str(s).ok()),
        grants,
    })
}

impl TokenVerifier for JwtVerifier {
    fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let verified = self.verify_counted(token);
        if verified.is_err() {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        verified
    }
}

impl JwtVerifier {
    /// Tokens refused since start, on every transport.
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn verify_counted(&self, token: &str) -> Result<Principal, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if let Some(p) = self.cache.get(token) {
            self.check_expiry(p.exp)?;
            return Ok(p);
        }
        let p = principal(&self.decode(token)?)?;
        self.check_expiry(p.exp)?;
        self.cache.put(token, &p);
        Ok(p)
    }
}

/// Signs an HS256 token with `claims` (development tokens and tests).
pub fn sign_hs256(secret: &[u8], claims: &Value) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
}

/// The claims of the token `POST /sessions/token` issues for a share token: read access to
/// `build:<session>` and the session's REST endpoints, nothing else (`role: anon`, no `sub`).
///
/// `own` is [`JwtVerifier::own_claims`]: the audience and issuer the hub itself checks, so its own
/// tokens pass them.
pub fn share_claims(session: uuid::Uuid, exp: u64, own: (Option<&str>, Option<&str>)) -> Value {
    let mut claims = serde_json::json!({
        "role": "anon",
        "exp": exp,
        "share_session": session.to_string(),
        "iss": own.1.unwrap_or("hub"),
    });
    if let Some(aud) = own.0 {
        claims["aud"] = aud.into();
    }
    claims
}

/// A random secret for development, URL-safe base64 of 32 random bytes.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Tokens printed at start when no secret was configured.
#[derive(Debug, Clone)]
pub struct DevTokens {
    /// The generated secret.
    pub secret: String,
    /// `role: anon`.
    pub anon: String,
    /// `role: service_role`.
    pub service_role: String,
}

impl DevTokens {
    /// Generates a secret and two tokens valid for 30 days.
    pub fn generate() -> Result<Self, jsonwebtoken::errors::Error> {
        let secret = random_secret();
        let exp = now_secs() + 30 * 24 * 3600;
        let token = |role: &str| {
            sign_hs256(
                secret.as_bytes(),
                &serde_json::json!({"role": role, "exp": exp, "iss": "hub-dev"}),
            )
        };
        Ok(Self {
            anon: token("anon")?,
            service_role: token("service_role")?,
            secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    fn token(claims: Value) -> String {
        sign_hs256(SECRET, &claims).unwrap()
    }

    #[test]
    fn accepts_a_valid_token() {
        let v = JwtVerifier::hs256(SECRET);
        let p = v
            .verify(&token(
                json!({"role": "authenticated", "sub": "u1", "exp": now_secs() + 60}),
            ))
            .unwrap();
        assert_eq!(p.role, "authenticated");
        assert_eq!(p.sub.as_deref(), Some("u1"));
    }

    #[test]
    fn reads_grants_and_refuses_a_malformed_claim() {
        use channels::kinds::Access;
        let v = JwtVerifier::hs256(SECRET);
        let p = v
            .verify(&token(
                json!({"role": "authenticated", "exp": now_secs() + 60,
                "grants": {"read": ["room:team-42:*"]}}),
            ))
            .unwrap();
        assert!(p.granted(Access::Read, "room:team-42:general"));
        assert!(!p.granted(Access::Write, "room:team-42:general"));
        assert!(!p.granted(Access::Read, "room:team-420:general"));
        let p = v
            .verify(&token(
                json!({"role": "authenticated", "exp": now_secs() + 60}),
            ))
            .unwrap();
        assert!(
            p.grants.is_none(),
            "no claim is no grants, not empty grants"
        );
        for bad in [
            json!(["room:*"]),
            json!({"read": "room:*"}),
            json!({"root": ["*"]}),
        ] {
            let err = v
                .verify(&token(
                    json!({"role": "authenticated", "exp": now_secs() + 60,
                    "grants": bad}),
                ))
                .unwrap_err();
            assert!(matches!(err, TokenError::BadGrants(_)), "{err:?}");
            assert!(
                err.reason()
                    .starts_with("InvalidJWTToken: The token's grants claim")
            );
        }
    }

    #[test]
    fn refuses_with_supabase_reasons() {
        let v = JwtVerifier::hs256(SECRET);
        assert_eq!(v.verify(""), Err(TokenError::Missing));
        assert_eq!(v.verify("not-a-jwt"), Err(TokenError::Malformed));
        assert_eq!(
            v.verify(&token(json!({"exp": now_secs() + 60}))),
            Err(TokenError::MissingClaims)
        );
        assert_eq!(
            v.verify(&token(json!({"role": "anon"}))),
            Err(TokenError::MissingClaims)
        );
        assert!(matches!(
            v.verify(&token(json!({"role": "anon", "exp": now_secs() - 5}))),
            Err(TokenError::Expired { secs_ago }) if (5..10).contains(&secs_ago)
        ));
        let other = sign_hs256(b"other", &json!({"role": "anon", "exp": now_secs() + 60})).unwrap();
        assert_eq!(v.verify(&other), Err(TokenError::BadSignature));
    }

    #[test]
    fn refuses_the_none_algorithm() {
        let v = JwtVerifier::hs256(SECRET);
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let forged = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(
                r#"{{"role":"service_role","exp":{}}}"#,
                now_secs() + 60
            ))
        );
        assert_eq!(v.verify(&forged), Err(TokenError::Malformed));
    }

    #[test]
    fn share_claims_verify_as_a_share_principal() {
        let id = uuid::Uuid::new_v4();
        let t = sign_hs256(SECRET, &share_claims(id, now_secs() + 60, (None, None))).unwrap();
        let p = JwtVerifier::hs256(SECRET).verify(&t).unwrap();
        assert_eq!(p.role, "anon");
        assert_eq!(p.sub, None);
        assert_eq!(p.share_session, Some(id));
    }

    #[test]
    fn dev_tokens_verify_with_their_secret() {
        let dev = DevTokens::generate().unwrap();
        let v = JwtVerifier::hs256(dev.secret.as_bytes());
        assert_eq!(v.verify(&dev.anon).unwrap().role, "anon");
        assert!(v.verify(&dev.service_role).unwrap().is_service());
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/jwt")
            .join(name)
    }

    fn sign(alg: Algorithm, kid: Option<&str>, private_pem: &str, claims: &Value) -> String {
        let pem = std::fs::read(fixture(private_pem)).unwrap();
        let key = match family(alg) {
            Some(Family::Rsa) => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn settings(algs: &[Algorithm]) -> JwtSettings {
        JwtSettings {
            algorithms: algs.to_vec(),
            public_keys: vec![
                PublicKey::from_pem_file(&fixture("rsa-public.pem")).unwrap(),
                PublicKey::from_pem_file(&fixture("ec-public.pem")).unwrap(),
            ],
            ..JwtSettings::hs256(SECRET)
        }
    }

    fn valid() -> Value {
        json!({"role": "authenticated", "sub": "u1", "exp": now_secs() + 60})
    }

    #[test]
    fn hmac_variants_verify_only_when_configured() {
        let v = JwtVerifier::new(settings(&[Algorithm::HS384, Algorithm::HS512])).unwrap();
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let t = jsonwebtoken::encode(
                &Header::new(alg),
                &valid(),
                &EncodingKey::from_secret(SECRET),
            )
            .unwrap();
            assert_eq!(v.verify(&t).unwrap().sub.as_deref(), Some("u1"), "{alg:?}");
        }
        // HS256 was not listed: refused before any key is tried.
        assert_eq!(
            v.verify(&token(valid())),
            Err(TokenError::AlgorithmNotAccepted("HS256".into()))
        );
    }

    #[test]
    fn rs256_and_es256_verify_with_their_public_keys() {
        let v = JwtVerifier::new(settings(&[Algorithm::RS256, Algorithm::ES256])).unwrap();
        let rs = sign(Algorithm::RS256, None, "rsa-private.pem", &valid());
        assert_eq!(v.verify(&rs).unwrap().role, "authenticated");
        let es = sign(Algorithm::ES256, None, "ec-private.pem", &valid());
        assert_eq!(v.verify(&es).unwrap().role, "authenticated");
        // Signed by a key the hub does not have.
        let other = sign(Algorithm::RS256, None, "rsa2-private.pem", &valid());
        assert_eq!(v.verify(&other), Err(TokenError::BadSignature));
        // The hub's own HMAC secret is not accepted unless HS256 is listed.
        assert_eq!(
            v.verify(&token(valid())),
            Err(TokenError::AlgorithmNotAccepted("HS256".into()))
        );
    }

    #[test]
    fn a_public_key_used_as_an_hmac_secret_is_refused() {
        // The key-confusion forgery: HS256 signed with the RSA public key's PEM text. Even with
        // HS256 and RS256 both accepted, HS tokens are checked against the secret only.
        let v = JwtVerifier::new(settings(&[Algorithm::HS256, Algorithm::RS256])).unwrap();
        let public = std::fs::read(fixture("rsa-public.pem")).unwrap();
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"role": "service_role", "exp": now_secs() + 60}),
            &EncodingKey::from_secret(&public),
        )
        .unwrap();
        assert_eq!(v.verify(&forged), Err(TokenError::BadSignature));
    }

    #[test]
    fn jwks_keys_are_picked_by_kid_and_never_supply_a_secret() {
        let mut s = JwtSettings::hs256(SECRET);
        s.algorithms = vec![Algorithm::RS256, Algorithm::ES256, Algorithm::HS256];
        s.public_keys = PublicKey::from_jwks_file(&fixture("jwks.json")).unwrap();
        assert_eq!(s.public_keys.len(), 3, "the oct key must be skipped");
        let v = JwtVerifier::new(s).unwrap();
        let k2 = sign(Algorithm::RS256, Some("k2"), "rsa2-private.pem", &valid());
        assert!(v.verify(&k2).is_ok());
        let e1 = sign(Algorithm::ES256, Some("e1"), "ec-private.pem", &valid());
        assert!(v.verify(&e1).is_ok());
        // Right key, wrong kid: only k1 is tried, and it did not sign this.
        let mislabelled = sign(Algorithm::RS256, Some("k1"), "rsa2-private.pem", &valid());
        assert_eq!(v.verify(&mislabelled), Err(TokenError::BadSignature));
        let unknown = sign(Algorithm::RS256, Some("nope"), "rsa-private.pem", &valid());
        assert_eq!(v.verify(&unknown), Err(TokenError::UnknownKey));
        // A token signed with the JWKS's symmetric key as an HMAC secret.
        let sym = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &valid(),
            &EncodingKey::from_secret(b"jwks-must-not-supply-hmac-secrets"),
        )
        .unwrap();
        assert_eq!(v.verify(&sym), Err(TokenError::BadSignature));
    }

    #[test]
    fn an_asymmetric_algorithm_without_a_key_is_a_configuration_error() {
        let mut s = JwtSettings::hs256(SECRET);
        s.algorithms.push(Algorithm::ES256);
        assert!(matches!(
            JwtVerifier::new(s),
            Err(KeyError::NoKeyFor(Algorithm::ES256))
        ));
        assert!(parse_algorithm("none").is_err());
        assert!(parse_algorithm("EdDSA").is_err());
        assert_eq!(parse_algorithm(" rs256 ").unwrap(), Algorithm::RS256);
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let mut s = JwtSettings::hs256(SECRET);
        s.audiences = vec!["authenticated".into()];
        s.issuers = vec!["https://auth.example".into()];
        let v = JwtVerifier::new(s).unwrap();
        let mut c = valid();
        c["aud"] = "authenticated".into();
        c["iss"] = "https://auth.example".into();
        assert!(v.verify(&token(c.clone())).is_ok());
        let mut wrong_aud = c.clone();
        wrong_aud["aud"] = "other".into();
        assert_eq!(v.verify(&token(wrong_aud)), Err(TokenError::WrongAudience));
        let mut no_aud = c.clone();
        no_aud.as_object_mut().unwrap().remove("aud");
        assert_eq!(v.verify(&token(no_aud)), Err(TokenError::WrongAudience));
        let mut wrong_iss = c.clone();
        wrong_iss["iss"] = "https://evil.example".into();
        assert_eq!(v.verify(&token(wrong_iss)), Err(TokenError::WrongIssuer));
        let mut no_iss = c;
        no_iss.as_object_mut().unwrap().remove("iss");
        assert_eq!(v.verify(&token(no_iss)), Err(TokenError::WrongIssuer));
        // The hub's own share tokens carry the first audience and issuer.
        let own = share_claims(uuid::Uuid::new_v4(), now_secs() + 60, v.own_claims());
        assert!(v.verify(&sign_hs256(SECRET, &own).unwrap()).is_ok());
    }

    #[test]
    fn not_before_allows_the_leeway_and_expiry_does_not() {
        let v = JwtVerifier::hs256(SECRET); // 10 s leeway
        let now = now_secs();
        assert!(matches!(
            v.verify(&token(json!({"role": "anon", "exp": now - 1}))),
            Err(TokenError::Expired { .. })
        ));
        assert!(
            v.verify(&token(
                json!({"role": "anon", "exp": now + 60, "nbf": now + 5})
            ))
            .is_ok()
        );
        assert_eq!(
            v.verify(&token(
                json!({"role": "anon", "exp": now + 60, "nbf": now + 60})
            )),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn the_cache_answers_repeats_and_still_enforces_expiry() {
        let mut s = JwtSettings::hs256(SECRET);
        s.cache_size = 2;
        let v = JwtVerifier::new(s).unwrap();
        let t = token(json!({"role": "anon", "exp": now_secs() + 60}));
        assert!(v.verify(&t).is_ok());
        assert_eq!(v.cache.get(&t).map(|p| p.role), Some("anon".into()));
        // Bounded: a third token empties it first.
        for i in 0..3 {
            let other = token(json!({"role": "anon", "exp": now_secs() + 60, "i": i}));
            assert!(v.verify(&other).is_ok());
        }
        assert!(v.cache.lock().len() <= 2);
        // A cached token past its exp is refused as expired, not served from the cache (the
        // entry is aged by hand instead of waiting for the clock).
        let mut aged = v.verify(&t).unwrap();
        aged.exp = now_secs() - 30;
        v.cache.put(&t, &aged);
        assert!(matches!(
            v.verify(&t),
            Err(TokenError::Expired { secs_ago }) if secs_ago >= 30
        ));
        // Failures are never cached.
        let bad = format!("{t}x");
        assert!(v.verify(&bad).is_err());
        assert!(v.cache.get(&bad).is_none());
    }
}
