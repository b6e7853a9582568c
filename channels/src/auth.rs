//! Who is connected, and the seam through which the hub verifies tokens.
//!
//! `channels` never sees a JWT library: the hub implements [`TokenVerifier`] and the core only
//! handles the verified [`Principal`] and the error wording the real client expects.

use std::fmt;

/// A verified identity (the claims the hub acts on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// JWT `role` (`anon`, `authenticated`, `service_role`, …).
    pub role: String,
    /// JWT `sub`, the user id, when present.
    pub sub: Option<String>,
    /// JWT `exp`, seconds since the Unix epoch.
    pub exp: u64,
    /// JWT `share_session`: the build session a share-token exchange granted read access to.
    pub share_session: Option<uuid::Uuid>,
    /// JWT `grants`: the topics this token may reach (`None` when the claim is absent).
    pub grants: Option<std::sync::Arc<crate::grants::Grants>>,
}

impl Principal {
    /// Whether this is the backend's service role, which may do anything.
    pub fn is_service(&self) -> bool {
        self.role == "service_role"
    }

    /// Whether the token's grants name `access` on the topic called `name`.
    pub fn granted(&self, access: crate::kinds::Access, name: &str) -> bool {
        self.grants.as_ref().is_some_and(|g| g.allows(access, name))
    }
}

/// Why a token was refused. `Display` gives the message Supabase uses; [`TokenError::code`] the
/// code that prefixes join error reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token given.
    #[error("API key is missing")]
    Missing,
    /// `exp` is in the past.
    #[error("Token has expired {secs_ago} seconds ago")]
    Expired {
        /// How long ago it expired.
        secs_ago: u64,
    },
    /// `role` or `exp` absent.
    #[error("Fields `role` and `exp` are required in JWT")]
    MissingClaims,
    /// Not a JWT at all, or an algorithm that is not accepted.
    #[error("The token provided is not a valid JWT")]
    Malformed,
    /// Signed with another key.
    #[error("Failed to validate JWT signature")]
    BadSignature,
    /// Signed with an algorithm the hub is not configured to accept (`none` never is).
    #[error("The token's algorithm {0} is not accepted")]
    AlgorithmNotAccepted(String),
    /// Names (`kid`) or needs a public key the hub does not have.
    #[error("No configured key can verify this token")]
    UnknownKey,
    /// `aud` is absent or not one the hub accepts (checked when configured).
    #[error("The token's audience is not accepted")]
    WrongAudience,
    /// `iss` is absent or not one the hub accepts (checked when configured).
    #[error("The token's issuer is not accepted")]
    WrongIssuer,
    /// `nbf` is in the future (beyond the leeway).
    #[error("The token is not valid yet")]
    NotYetValid,
    /// The `grants` claim is present but malformed.
    #[error("The token's grants claim is invalid: {0}")]
    BadGrants(&'static str),
}

impl TokenError {
    /// The code used in join error reasons (`<Code>: <message>`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing
            | Self::Expired { .. }
            | Self::MissingClaims
            | Self::WrongAudience
            | Self::WrongIssuer
            | Self::NotYetValid
            | Self::BadGrants(_) => "InvalidJWTToken",
            Self::Malformed | Self::AlgorithmNotAccepted(_) => "MalformedJWT",
            Self::BadSignature | Self::UnknownKey => "JwtSignatureError",
        }
    }

    /// `<Code>: <message>`, the join error reason.
    pub fn reason(&self) -> String {
        format!("{}: {}", self.code(), self)
    }
}

/// Verifies tokens; implemented by the hub (HMAC secret, RSA/EC public keys, JWKS).
pub trait TokenVerifier: Send + Sync + fmt::Debug + 'static {
    /// Verifies `token` now, including expiry.
    fn verify(&self, token: &str) -> Result<Principal, TokenError>;
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
