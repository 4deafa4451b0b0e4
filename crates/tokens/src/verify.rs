//! Checking a presented token, for the data-plane server and ADS.

use crate::{keys::TokenKeys, now_secs, Identity, KeySet, TokenError};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_store::ResourceStore;

/// How long loaded keys and revocations are trusted before the store is
/// read again: a revocation or a removed key takes effect within this.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

/// Turns an `Authorization` header value into the identity it proves.
/// Object-safe, so the xDS server can hold one without knowing the store.
pub trait Authenticate: Send + Sync {
    fn authenticate<'a>(
        &'a self,
        authorization: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, TokenError>> + Send + 'a>>;
}

/// Verifies data-plane tokens against the keys in the store.
pub struct Verifier<S> {
    keys: TokenKeys<S>,
    cache: tokio::sync::Mutex<Option<(Instant, Arc<KeySet>)>>,
}

impl<S: ResourceStore> Verifier<S> {
    pub fn new(store: Arc<S>) -> Self {
        Verifier { keys: TokenKeys::new(store), cache: Default::default() }
    }

    async fn key_set(&self) -> Result<Arc<KeySet>, TokenError> {
        let mut cache = self.cache.lock().await;
        if let Some((at, set)) = cache.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return Ok(set.clone());
            }
        }
        let set = Arc::new(self.keys.load().await?);
        *cache = Some((Instant::now(), set.clone()));
        Ok(set)
    }

    /// The identity a bearer token proves.
    pub async fn verify(&self, authorization: Option<&str>) -> Result<Identity, TokenError> {
        let token = bearer(authorization).ok_or(TokenError::Missing)?;
        let claims = self.key_set().await?.verify(token, now_secs())?;
        if claims.zone.is_some() {
            return Err(TokenError::ZoneTokenForDataplane);
        }
        Ok(Identity { mesh: claims.mesh, name: claims.name, tags: claims.tags })
    }

    /// The zone a zone token admits (on the global control plane).
    pub async fn verify_zone(&self, authorization: Option<&str>) -> Result<String, TokenError> {
        let token = bearer(authorization).ok_or(TokenError::Missing)?;
        let claims = self.key_set().await?.verify(token, now_secs())?;
        claims.zone.ok_or(TokenError::NotAZoneToken)
    }
}

impl<S: ResourceStore> Authenticate for Verifier<S> {
    fn authenticate<'a>(
        &'a self,
        authorization: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, TokenError>> + Send + 'a>> {
        Box::pin(self.verify(authorization))
    }
}

/// The token in `Bearer <token>` (the scheme is case-insensitive).
pub fn bearer(value: Option<&str>) -> Option<&str> {
    let (scheme, token) = value?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
