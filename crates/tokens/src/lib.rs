//! Data-plane identity, as Kuma has it: a data plane proves who it is with a
//! token the control plane signed, bound to a mesh and a name (optionally
//! tags), with an expiry and a revocation list.
//!
//! - [`keys`]: the signing keys (HS256, 32 random bytes each) and the
//!   revocation list, kept in the store as internal `GlobalSecret`
//!   resources so every control plane on the same store agrees. The key
//!   with the highest serial signs; older keys keep verifying until removed.
//! - [`Claims`] / [`KeySet`]: signing and checking, pure.
//! - [`Verifier`]: what the data-plane server asks on every request, with a
//!   one-second cache of keys and revocations.

pub mod keys;
mod verify;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

pub use keys::TokenKeys;
pub use verify::{bearer, Authenticate, Verifier};

/// What a data-plane token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub mesh: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Set only in a zone token (`ternctl generate zone-token`): the zone
    /// control plane it admits to the global one. A zone token never
    /// passes as a data plane's, nor the reverse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The token's id, what a revocation names.
    pub jti: String,
    /// Issued at and expiry, seconds since the Unix epoch.
    pub iat: u64,
    pub exp: u64,
}

/// The data plane a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub mesh: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
}

impl Identity {
    /// Whether this identity may act as the dataplane `mesh`/`name`.
    pub fn is(&self, mesh: &str, name: &str) -> bool {
        self.mesh == mesh && self.name == name
    }
}

/// Why a token was refused. Never carries the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no data-plane token given (Authorization: Bearer <token>; tern-dp --dataplane-token-file)")]
    Missing,
    #[error("the data-plane token is not a token this control plane issued (malformed)")]
    Malformed,
    #[error("the data-plane token was signed with signing key {0}, which this control plane does not have (removed?)")]
    UnknownKey(String),
    #[error("the data-plane token's signature does not verify")]
    BadSignature,
    #[error("the data-plane token has expired; generate a new one (ternctl generate dataplane-token)")]
    Expired,
    #[error("the data-plane token {0} has been revoked")]
    Revoked(String),
    #[error("this is a zone token; a data plane needs a data-plane token (ternctl generate dataplane-token)")]
    ZoneTokenForDataplane,
    #[error(
        "this is not a zone token (generate one on the global control plane: ternctl generate zone-token --zone NAME)"
    )]
    NotAZoneToken,
    #[error("cannot check data-plane tokens: {0}")]
    Store(String),
    /// A Kubernetes ServiceAccount token the apiserver did not vouch for as a Pod's.
    #[error("the ServiceAccount token was refused: {0}")]
    ServiceAccount(String),
}

impl TokenError {
    /// Whether the fault lies with the token (401) rather than the control plane (503).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, TokenError::Store(_))
    }
}

/// The longest a token may be valid (Kuma's kumactl allows years; ten is plenty).
pub const MAX_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a token is valid when the request does not say.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// One signing key: its serial (the token header's `kid`) and its secret.
#[derive(Clone)]
pub struct SigningKey {
    pub serial: u32,
    secret: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("serial", &self.serial).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key of 32 random bytes.
    pub fn generate(serial: u32) -> Result<SigningKey, TokenError> {
        let mut secret = vec![0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| TokenError::Store(format!("no randomness for a signing key: {e}")))?;
        Ok(SigningKey { serial, secret })
    }
}

/// The keys and revocations in force at one moment.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    /// Sorted by serial; the last one signs.
    pub keys: Vec<SigningKey>,
    pub revoked: std::collections::BTreeSet<String>,
}

const ALGORITHM: jsonwebtoken::Algorithm = jsonwebtoken::Algorithm::HS256;

impl KeySet {
    /// Signs `claims` with the newest key.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let key = self.keys.last().ok_or_else(|| TokenError::Store("no signing key".into()))?;
        let header = jsonwebtoken::Header { kid: Some(key.serial.to_string()), ..jsonwebtoken::Header::new(ALGORITHM) };
        jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_secret(&key.secret))
            .map_err(|e| TokenError::Store(format!("signing a token: {e}")))
    }

    /// Checks signature, expiry (at `now`, seconds since the epoch) and revocation.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != ALGORITHM {
            return Err(TokenError::Malformed);
        }
        let kid = header.kid.ok_or(TokenError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.serial.to_string() == kid)
            .ok_or_else(|| TokenError::UnknownKey(printable(&kid)))?;
        let mut validation = jsonwebtoken::Validation::new(ALGORITHM);
        // Expiry is checked below against `now`, so tests can move the clock.
        validation.validate_exp = false;
        validation.required_spec_claims = ["exp".to_string()].into();
        let data =
            jsonwebtoken::decode::<Claims>(token, &jsonwebtoken::DecodingKey::from_secret(&key.secret), &validation)
                .map_err(|e| match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                    _ => TokenError::Malformed,
                })?;
        let claims = data.claims;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if self.revoked.contains(&claims.jti) {
            return Err(TokenError::Revoked(printable(&claims.jti)));
        }
        Ok(claims)
    }
}

/// A value from a token, safe to print: at most 64 characters, controls replaced.
fn printable(s: &str) -> String {
    s.chars().take(64).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A fresh token id: 16 random bytes, hex.
pub fn new_token_id() -> Result<String, TokenError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Store(format!("no randomness for a token id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads a token's id without verifying it (for revoking a token from its file).
pub fn token_id(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.trim().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    Some(claims.jti)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            mesh: "default".into(),
            name: "web-1".into(),
            tags: BTreeMap::new(),
            zone: None,
            jti: "id-1".into(),
            iat: 0,
            exp,
        }
    }

    fn keys(serials: &[u32]) -> KeySet {
        KeySet {
            keys: serials.iter().map(|s| SigningKey::generate(*s).unwrap()).collect(),
            revoked: Default::default(),
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let set = keys(&[1]);
        let token = set.sign(&claims(100)).unwrap();
        assert_eq!(set.verify(&token, 99).unwrap(), claims(100));
        assert_eq!(set.verify(&token, 100), Err(TokenError::Expired));
        assert_eq!(token_id(&token).as_deref(), Some("id-1"));
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_until_their_key_is_removed() {
        let mut set = keys(&[1]);
        let old = set.sign(&claims(100)).unwrap();
        set.keys.push(SigningKey::generate(2).unwrap());
        let new = set.sign(&claims(100)).unwrap();
        assert!(set.verify(&old, 1).is_ok() && set.verify(&new, 1).is_ok());
        set.keys.remove(0);
        assert_eq!(set.verify(&old, 1), Err(TokenError::UnknownKey("1".into())));
        assert!(set.verify(&new, 1).is_ok());
    }

    #[test]
    fn forged_revoked_and_garbage_tokens_are_refused() {
        let set = keys(&[1]);
        let other = keys(&[1]);
        let forged = other.sign(&claims(100)).unwrap();
        assert_eq!(set.verify(&forged, 1), Err(TokenError::BadSignature));
        let mut revoked = set.clone();
        revoked.revoked.insert("id-1".into());
        assert_eq!(revoked.verify(&set.sign(&claims(100)).unwrap(), 1), Err(TokenError::Revoked("id-1".into())));
        for garbage in ["", "a.b.c", "é.\u{1b}[2J.x", "eyJhbGciOiJub25lIn0.e30."] {
            assert_eq!(set.verify(garbage, 1), Err(TokenError::Malformed), "{garbage:?}");
        }
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = SigningKey::generate(7).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains('7') && !shown.contains("secret"), "{shown}");
    }
}
