//! Signing keys and revocations in the store, as internal `GlobalSecret`
//! resources: `dataplane-token-signing-key-<serial>` (`{"data": <base64>}`)
//! and `dataplane-token-revocations` (`{"ids": [...]}`).

use crate::{new_token_id, now_secs, Claims, KeySet, SigningKey, TokenError, DEFAULT_VALIDITY, MAX_VALIDITY};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use tern_model::{Kind, Resource, ResourceKey};
use tern_protocol::{DataplaneTokenRequest, SigningKeyInfo, ZoneTokenRequest};
use tern_store::{ListFilter, Precondition, ResourceStore, StoreError, Write};

const KEY_PREFIX: &str = "dataplane-token-signing-key-";
const REVOCATIONS: &str = "dataplane-token-revocations";

#[derive(Serialize, Deserialize)]
struct KeySecret {
    data: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Revocations {
    ids: BTreeSet<String>,
}

/// Why a key or token operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Bad input: the field and the rule.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Token(#[from] TokenError),
}

fn invalid(field: &str, reason: impl Into<String>) -> KeyError {
    KeyError::Invalid { field: field.into(), reason: reason.into() }
}

/// The store-backed side of data-plane tokens.
pub struct TokenKeys<S> {
    store: Arc<S>,
}

impl<S: ResourceStore> TokenKeys<S> {
    pub fn new(store: Arc<S>) -> Self {
        TokenKeys { store }
    }

    /// The keys (sorted by serial) and revocations stored now.
    pub async fn load(&self) -> Result<KeySet, TokenError> {
        let store_err = |e: StoreError| TokenError::Store(e.to_string());
        let secrets = self.store.list(Kind::GlobalSecret, &ListFilter::default()).await.map_err(store_err)?;
        let mut set = KeySet::default();
        for r in secrets {
            if let Some(serial) = r.name.strip_prefix(KEY_PREFIX).and_then(|s| s.parse::<u32>().ok()) {
                let secret: KeySecret = serde_json::from_value(r.spec)
                    .map_err(|e| TokenError::Store(format!("signing key {serial} is unreadable: {e}")))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(secret.data)
                    .map_err(|_| TokenError::Store(format!("signing key {serial} is not base64")))?;
                set.keys.push(SigningKey { serial, secret: bytes });
            } else if r.name == REVOCATIONS {
                let list: Revocations = serde_json::from_value(r.spec)
                    .map_err(|e| TokenError::Store(format!("the revocation list is unreadable: {e}")))?;
                set.revoked = list.ids;
            }
        }
        set.keys.sort_by_key(|k| k.serial);
        Ok(set)
    }

    /// Creates the first signing key unless one exists. Safe to race: two
    /// control planes starting together create it once.
    pub async fn ensure_key(&self) -> Result<(), KeyError> {
        if self.load().await?.keys.is_empty() {
            match self.create_key(1).await {
                Ok(()) | Err(KeyError::Store(StoreError::AlreadyExists { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Adds a key with the next serial; new tokens are signed with it, old
    /// ones keep verifying until their key is removed.
    pub async fn rotate(&self) -> Result<u32, KeyError> {
        let next = self.load().await?.keys.last().map_or(1, |k| k.serial + 1);
        self.create_key(next).await?;
        Ok(next)
    }

    /// Removes a key: tokens it signed stop verifying. The last key stays.
    pub async fn remove(&self, serial: u32) -> Result<(), KeyError> {
        let keys = self.load().await?.keys;
        if !keys.iter().any(|k| k.serial == serial) {
            return Err(KeyError::NotFound(format!("signing key {serial} not found")));
        }
        if keys.len() == 1 {
            return Err(invalid(
                "serial",
                "is the only signing key; rotate first (a new key), then remove the old one",
            ));
        }
        let key = ResourceKey::new(Kind::GlobalSecret, "", &format!("{KEY_PREFIX}{serial}"));
        Ok(self.store.delete(&key, Precondition::None).await?)
    }

    /// The keys' serials, never their material.
    pub async fn list(&self) -> Result<Vec<SigningKeyInfo>, KeyError> {
        let keys = self.load().await?.keys;
        let newest = keys.last().map(|k| k.serial);
        Ok(keys.iter().map(|k| SigningKeyInfo { serial: k.serial, active: Some(k.serial) == newest }).collect())
    }

    /// Adds a token id to the revocation list (idempotent).
    pub async fn revoke(&self, id: &str) -> Result<(), KeyError> {
        if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(invalid("id", "must be a token id: 1 to 128 letters, digits or dashes"));
        }
        let key = ResourceKey::new(Kind::GlobalSecret, "", REVOCATIONS);
        let stored = self.store.get(&key).await?;
        let (mut list, precondition) = match &stored {
            Some(r) => (
                serde_json::from_value::<Revocations>(r.spec.clone())
                    .map_err(|e| TokenError::Store(format!("the revocation list is unreadable: {e}")))?,
                Precondition::Version(r.meta.version),
            ),
            None => (Revocations::default(), Precondition::MustNotExist),
        };
        if list.ids.insert(id.to_string()) {
            let spec = serde_json::to_value(&list).map_err(|e| TokenError::Store(e.to_string()))?;
            self.store.apply(vec![Write { resource: secret(REVOCATIONS, spec), precondition }]).await?;
        }
        Ok(())
    }

    /// Signs a token for one data plane.
    pub async fn issue(&self, req: &DataplaneTokenRequest) -> Result<String, KeyError> {
        check_name("mesh", &req.mesh)?;
        check_name("name", &req.name)?;
        let (iat, exp) = validity(req.valid_for.as_deref())?;
        let claims = Claims {
            mesh: req.mesh.clone(),
            name: req.name.clone(),
            tags: req.tags.clone(),
            zone: None,
            jti: new_token_id()?,
            iat,
            exp,
        };
        Ok(self.load().await?.sign(&claims)?)
    }

    /// Signs a token that admits one zone control plane to this (global) one.
    pub async fn issue_zone(&self, req: &ZoneTokenRequest) -> Result<String, KeyError> {
        check_name("zone", &req.zone)?;
        let (iat, exp) = validity(req.valid_for.as_deref())?;
        let claims = Claims {
            mesh: String::new(),
            name: String::new(),
            tags: Default::default(),
            zone: Some(req.zone.clone()),
            jti: new_token_id()?,
            iat,
            exp,
        };
        Ok(self.load().await?.sign(&claims)?)
    }

    async fn create_key(&self, serial: u32) -> Result<(), KeyError> {
        let key = SigningKey::generate(serial)?;
        let data = base64::engine::general_purpose::STANDARD.encode(&key.secret);
        let spec = serde_json::to_value(KeySecret { data }).map_err(|e| TokenError::Store(e.to_string()))?;
        let write = Write {
            resource: secret(&format!("{KEY_PREFIX}{serial}"), spec),
            precondition: Precondition::MustNotExist,
        };
        self.store.apply(vec![write]).await?;
        Ok(())
    }
}

/// Issue time and expiry for a `validFor` (a Go duration; a day when absent).
fn validity(valid_for: Option<&str>) -> Result<(u64, u64), KeyError> {
    let valid_for = match valid_for {
        None => DEFAULT_VALIDITY,
        Some(text) => tern_model::spec::duration::parse_go_duration(text).map_err(|m| invalid("validFor", m))?,
    };
    if valid_for.is_zero() || valid_for > MAX_VALIDITY {
        return Err(invalid("validFor", "must be more than 0 and at most 87600h (10 years)"));
    }
    let iat = now_secs();
    Ok((iat, iat + valid_for.as_secs()))
}

fn secret(name: &str, spec: serde_json::Value) -> Resource {
    Resource::new(Kind::GlobalSecret, "", name, spec)
}

/// Mesh and dataplane names by the model's rules (Kuma's: a mesh may hold
/// `_`, a dataplane name is a lowercase RFC 1123 subdomain).
fn check_name(field: &str, value: &str) -> Result<(), KeyError> {
    match tern_model::document::identifier_problem(value, field == "mesh") {
        None => Ok(()),
        Some(problem) => Err(invalid(field, problem)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn keys() -> (tempfile::TempDir, TokenKeys<tern_store::SqlStore>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("t.db").display());
        let store = Arc::new(tern_store::SqlStore::open(&url).await.unwrap());
        (dir, TokenKeys::new(store))
    }

    fn request(valid_for: Option<&str>) -> DataplaneTokenRequest {
        DataplaneTokenRequest {
            mesh: "default".into(),
            name: "web-1".into(),
            tags: Default::default(),
            valid_for: valid_for.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn keys_live_in_the_store_rotate_and_revoke() {
        let (_dir, keys) = keys().await;
        keys.ensure_key().await.unwrap();
        keys.ensure_key().await.unwrap();
        assert_eq!(keys.list().await.unwrap(), vec![SigningKeyInfo { serial: 1, active: true }]);
        let old = keys.issue(&request(Some("1h"))).await.unwrap();
        assert_eq!(keys.rotate().await.unwrap(), 2);
        let new = keys.issue(&request(None)).await.unwrap();
        let set = keys.load().await.unwrap();
        assert!(set.verify(&old, now_secs()).is_ok() && set.verify(&new, now_secs()).is_ok());
        keys.remove(1).await.unwrap();
        assert!(matches!(keys.remove(2).await, Err(KeyError::Invalid { .. })));
        assert!(matches!(keys.load().await.unwrap().verify(&old, now_secs()), Err(TokenError::UnknownKey(_))));
        let id = crate::token_id(&new).unwrap();
        keys.revoke(&id).await.unwrap();
        keys.revoke(&id).await.unwrap();
        assert!(matches!(keys.load().await.unwrap().verify(&new, now_secs()), Err(TokenError::Revoked(_))));
    }

    #[tokio::test]
    async fn bad_requests_name_the_field() {
        let (_dir, keys) = keys().await;
        keys.ensure_key().await.unwrap();
        for (valid_for, field) in
            [("0s", "validFor"), ("-1h", "validFor"), ("90000h", "validFor"), ("soon", "validFor")]
        {
            match keys.issue(&request(Some(valid_for))).await {
                Err(KeyError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{valid_for}: {other:?}"),
            }
        }
        let bad = DataplaneTokenRequest { name: "web\n1".into(), ..request(None) };
        assert!(matches!(keys.issue(&bad).await, Err(KeyError::Invalid { field, .. }) if field == "name"));
        assert!(matches!(keys.revoke("a,b").await, Err(KeyError::Invalid { .. })));
    }
}
