//! The `apikey` JWT: either given ready-made (`--token`) or minted here with HS256.
//!
//! Minting is a dozen lines of HMAC and base64url, so the load test does not pull in a JWT
//! library; the hub verifies with a real one, which keeps this honest.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How long a minted token stays valid beyond the run, so a slow run never sees it expire.
const SLACK_SECS: u64 = 3600;

/// The role a load-test client normally connects as.
pub const AUTHENTICATED: &str = "authenticated";

/// The backend's role, which may join any topic (`build:` topics of sessions it does not own).
pub const SERVICE_ROLE: &str = "service_role";

/// Mints an HS256 token with the given `role` and `sub` (none when empty), valid for
/// `valid_secs` plus an hour from `now_unix`.
pub fn mint(
    secret: &[u8],
    role: &str,
    sub: &str,
    now_unix: u64,
    valid_secs: u64,
) -> anyhow::Result<String> {
    let mut claims = serde_json::json!({
        "role": role,
        "iat": now_unix,
        "exp": now_unix + valid_secs + SLACK_SECS,
    });
    if !sub.is_empty() {
        claims["sub"] = sub.into();
    }
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    sign(&format!("{header}.{body}"), secret)
}

/// Appends the HS256 signature to `header.body`.
fn sign(signing_input: &str, secret: &[u8]) -> anyhow::Result<String> {
    // HMAC accepts keys of any length; the error exists only for fixed-key-size MACs.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret).map_err(|e| anyhow::anyhow!("HMAC key: {e}"))?;
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    Ok(format!("{signing_input}.{sig}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_jwt_io_example() {
        // The well-known HS256 example token from RFC 7519 tooling (jwt.io).
        let input = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ";
        let token = sign(input, b"your-256-bit-secret").unwrap();
        assert_eq!(
            token.rsplit('.').next().unwrap(),
            "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
        );
    }

    #[test]
    fn minted_claims_carry_role_sub_and_exp() {
        let t = mint(b"s", AUTHENTICATED, "lt-1", 1_000, 60).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["role"], "authenticated");
        assert_eq!(claims["sub"], "lt-1");
        assert_eq!(claims["exp"], 1_000 + 60 + SLACK_SECS);
        let t = mint(b"s", SERVICE_ROLE, "lt-1", 1_000, 60).unwrap();
        let body = t.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        assert_eq!(claims["role"], "service_role");
        let t = mint(b"s", AUTHENTICATED, "", 1_000, 60).unwrap();
        let body = t.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        assert!(claims.get("sub").is_none(), "{claims}");
    }
}
