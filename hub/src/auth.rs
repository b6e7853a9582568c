//! JWT verification (HS256 with the configured secret) and development tokens.
//!
//! Errors use the exact wording of Supabase Realtime so clients and operators see familiar
//! reasons. `role` and `exp` are required; `aud` is not checked yet.

use std::fmt;

use base64::Engine as _;
use channels::auth::now_secs;
use channels::{Principal, TokenError, TokenVerifier};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value;

/// Verifies HS256 tokens signed with one secret.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier").finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// A verifier for tokens signed with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry and required claims are checked below, to give Supabase's messages.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }
}

impl TokenVerifier for JwtVerifier {
    fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let data = jsonwebtoken::decode::<Value>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed,
            },
        )?;
        let claims = data.claims;
        let role = claims.get("role").and_then(Value::as_str);
        let exp = claims.get("exp").and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        });
        let (Some(role), Some(exp)) = (role, exp) else {
            return Err(TokenError::MissingClaims);
        };
        let now = now_secs();
        if exp <= now {
            return Err(TokenError::Expired {
                secs_ago: now - exp,
            });
        }
        Ok(Principal {
            role: role.to_owned(),
            sub: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
            exp,
            share_session: claims
                .get("share_session")
                .and_then(Value::as_str)
                .and_then(|s| uuid::Uuid::parse_str(s).ok()),
        })
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
pub fn share_claims(session: uuid::Uuid, exp: u64) -> Value {
    serde_json::json!({
        "role": "anon",
        "exp": exp,
        "share_session": session.to_string(),
        "iss": "hub",
    })
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
        let t = sign_hs256(SECRET, &share_claims(id, now_secs() + 60)).unwrap();
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
}
