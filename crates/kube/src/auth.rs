//! Data planes in Pods prove who they are with their Pod's ServiceAccount
//! token, as in Kuma: the apiserver vouches for it (TokenReview), and a
//! token bound to a Pod speaks for that Pod's Dataplane (`POD.NAMESPACE`,
//! in the Pod's mesh) and nothing else. Data-plane tokens from `ternctl
//! generate dataplane-token` keep working beside them.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::Client;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_tokens::{bearer, Authenticate, Identity, TokenError};
use tokio::sync::Mutex;

/// How long the apiserver's verdict on a token is reused: a data plane polls
/// and reports every few seconds, and a deleted Pod's token stops working
/// within this.
const REVIEW_FOR: Duration = Duration::from_secs(10);
/// Verdicts kept at most (a flood of distinct tokens cannot grow memory).
const MAX_CACHED: usize = 10_000;
/// The claim the apiserver puts in the tokens it issues.
const KUBERNETES_CLAIM: &str = "kubernetes.io";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// The apiserver's verdict on a token: whose it is, or why not.
type Verdict = Result<Identity, String>;

pub struct ServiceAccountAuth {
    client: Client,
    /// Data-plane tokens (Tern's own).
    tokens: Arc<dyn Authenticate>,
    /// Verdicts by token, with when they were given.
    reviewed: Mutex<HashMap<String, (Instant, Verdict)>>,
}

impl ServiceAccountAuth {
    pub fn new(client: Client, tokens: Arc<dyn Authenticate>) -> Self {
        ServiceAccountAuth { client, tokens, reviewed: Mutex::default() }
    }

    async fn verify(&self, authorization: Option<&str>) -> Result<Identity, TokenError> {
        let Some(token) = bearer(authorization).filter(|t| issued_by_kubernetes(t)) else {
            return self.tokens.authenticate(authorization).await;
        };
        if let Some((at, verdict)) = self.reviewed.lock().await.get(token) {
            if at.elapsed() < REVIEW_FOR {
                return verdict.clone().map_err(TokenError::ServiceAccount);
            }
        }
        let verdict = self.review(token).await?;
        let mut reviewed = self.reviewed.lock().await;
        if reviewed.len() >= MAX_CACHED {
            reviewed.clear();
        }
        reviewed.insert(token.to_string(), (Instant::now(), verdict.clone()));
        verdict.map_err(TokenError::ServiceAccount)
    }

    /// The apiserver's verdict: the identity, or why not (an `Err` of the
    /// outer result is the apiserver failing, not the token).
    async fn review(&self, token: &str) -> Result<Verdict, TokenError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), ..Default::default() },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| TokenError::Store(format!("asking the apiserver about a ServiceAccount token: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok(Err(status.error.unwrap_or_else(|| "the apiserver does not accept it".into())));
        }
        let user = status.user.unwrap_or_default();
        let namespace = user
            .username
            .as_deref()
            .and_then(|u| u.strip_prefix("system:serviceaccount:"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(ns, _)| ns.to_string());
        let pod = user.extra.as_ref().and_then(|e| e.get(POD_NAME_EXTRA)).and_then(|v| v.first()).cloned();
        let (Some(namespace), Some(pod)) = (namespace, pod) else {
            return Ok(Err("it is not bound to a Pod (use the token Kubernetes mounts into the Pod)".into()));
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let found = pods.get_opt(&pod).await.map_err(|e| TokenError::Store(format!("reading Pod {pod}: {e}")))?;
        let Some(found) = found else { return Ok(Err(format!("its Pod {pod} in {namespace} does not exist"))) };
        let mesh = crate::pods::mesh_of(&found.metadata);
        Ok(Ok(Identity { mesh, name: format!("{pod}.{namespace}"), tags: Default::default() }))
    }
}

impl Authenticate for ServiceAccountAuth {
    fn authenticate<'a>(
        &'a self,
        authorization: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, TokenError>> + Send + 'a>> {
        Box::pin(self.verify(authorization))
    }
}

/// Whether a JWT carries the claim the apiserver puts in the tokens it
/// issues (read without verifying: the apiserver verifies it).
fn issued_by_kubernetes(token: &str) -> bool {
    use base64::Engine;
    let Some(payload) = token.split('.').nth(1) else { return false };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|claims| claims.get(KUBERNETES_CLAIM).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn jwt(claims: serde_json::Value) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!("{}.{}.sig", b64(br#"{"alg":"RS256"}"#), b64(claims.to_string().as_bytes()))
    }

    #[test]
    fn service_account_tokens_are_told_from_data_plane_tokens() {
        let sa =
            jwt(serde_json::json!({"iss": "https://kubernetes.default.svc", "kubernetes.io": {"namespace": "shop"}}));
        assert!(issued_by_kubernetes(&sa));
        let tern = jwt(serde_json::json!({"mesh": "default", "name": "web", "jti": "1"}));
        assert!(!issued_by_kubernetes(&tern));
        assert!(!issued_by_kubernetes("not-a-jwt"));
        assert!(!issued_by_kubernetes("a.%%%.c"));
    }
}
