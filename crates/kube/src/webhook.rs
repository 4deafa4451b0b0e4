//! The validating admission webhook: every create and update of a `kuma.io`
//! resource goes through the same validator as Universal
//! ([`resource_from_document`]), so `kubectl apply` of an invalid document
//! prints every violation, in Kuma's words, and stores nothing. Kuma's
//! warnings (a deprecated inline endpoint) come back as kubectl warnings.
//!
//! Registration ([`ensure_registered`]): on start the control plane writes
//! its ValidatingWebhookConfiguration with the CA that signs its serving
//! certificate, so the apiserver trusts it without a manual step.

use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use kube::Client;
use serde_json::{json, Value};
use tern_model::document::{resource_from_document, API_VERSION};
use tern_model::Kind;

/// The webhook configuration's name, and the webhook's.
pub const VALIDATING_CONFIGURATION: &str = "tern-validating-webhook";
const VALIDATOR_NAME: &str = "validator.tern.kuma.io";
/// The path the webhook serves on.
pub const VALIDATE_PATH: &str = "/validate";

/// The webhook's routes (served over TLS by the control plane).
pub fn router() -> Router {
    Router::new().route(VALIDATE_PATH, post(validate))
}

async fn validate(Json(review): Json<AdmissionReview<DynamicObject>>) -> Json<AdmissionReview<DynamicObject>> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return Json(AdmissionResponse::invalid(format!("not an admission request: {e}")).into_review()),
    };
    Json(review_request(&request).into_review())
}

/// The answer to one admission request.
pub fn review_request(request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    if !matches!(request.operation, Operation::Create | Operation::Update) || request.kind.group != "kuma.io" {
        return allowed;
    }
    let Some(object) = &request.object else { return allowed };
    let Some(kind) = Kind::from_name(&request.kind.kind).filter(|k| !k.is_internal()) else {
        return allowed.deny(format!("kind {} is not a Tern resource", request.kind.kind));
    };
    match resource_from_document(&document(kind, object, request.namespace.as_deref())) {
        Ok(parsed) => {
            let mut response = allowed;
            if !parsed.warnings.is_empty() {
                response.warnings = Some(parsed.warnings);
            }
            response
        }
        Err(e) => allowed.deny(e.violations.to_string()),
    }
}

/// The object as the Kubernetes-form document Tern's validator reads.
fn document(kind: Kind, object: &DynamicObject, namespace: Option<&str>) -> Value {
    let mut metadata = json!({"name": object.metadata.name.clone().unwrap_or_default()});
    if let Some(ns) = object.metadata.namespace.as_deref().or(namespace) {
        metadata["namespace"] = json!(ns);
    }
    if let Some(labels) = &object.metadata.labels {
        metadata["labels"] = json!(labels);
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": kind.name(),
        "metadata": metadata,
        "spec": object.data.get("spec").cloned().unwrap_or(json!({})),
    })
}

/// Where the apiserver reaches the webhook.
#[derive(Debug, Clone)]
pub enum WebhookClient {
    /// A URL (a control plane outside the cluster, as in the tests).
    Url(String),
    /// A Service in the cluster (the installed control plane).
    Service { namespace: String, name: String, port: u16 },
}

/// Writes (server-side apply) the ValidatingWebhookConfiguration for Tern's
/// resources, trusting `ca_pem`.
pub async fn ensure_registered(client: &Client, at: &WebhookClient, ca_pem: &str) -> Result<(), kube::Error> {
    let configuration = validating_configuration(at, ca_pem);
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let params = PatchParams::apply("tern-cp").force();
    api.patch(VALIDATING_CONFIGURATION, &params, &Patch::Apply(&configuration)).await.map(|_| ())
}

/// The configuration: every `kuma.io` resource of Tern's, on create and
/// update; a webhook that cannot be reached refuses the write (fail closed).
pub fn validating_configuration(at: &WebhookClient, ca_pem: &str) -> ValidatingWebhookConfiguration {
    use base64::Engine;
    let mut client_config = json!({"caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem)});
    match at {
        WebhookClient::Url(url) => {
            client_config["url"] = json!(format!("{}{VALIDATE_PATH}", url.trim_end_matches('/')))
        }
        WebhookClient::Service { namespace, name, port } => {
            client_config["service"] =
                json!({"namespace": namespace, "name": name, "port": port, "path": VALIDATE_PATH});
        }
    }
    let resources: Vec<String> = Kind::ALL.iter().map(|k| crate::resources::plural(*k)).collect();
    let value = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": VALIDATING_CONFIGURATION},
        "webhooks": [{
            "name": VALIDATOR_NAME,
            "clientConfig": client_config,
            "rules": [{
                "apiGroups": [crate::resources::GROUP],
                "apiVersions": [crate::resources::VERSION],
                "operations": ["CREATE", "UPDATE"],
                "resources": resources,
            }],
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }],
    });
    serde_json::from_value(value).expect("the webhook configuration literal matches k8s-openapi's type")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: &str, namespace: &str, spec: Value) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "kuma.io", "version": "v1alpha1", "kind": kind},
                "resource": {"group": "kuma.io", "version": "v1alpha1", "resource": "x"},
                "name": "main",
                "namespace": namespace,
                "operation": "CREATE",
                "userInfo": {},
                "object": {
                    "apiVersion": "kuma.io/v1alpha1", "kind": kind,
                    "metadata": {"name": "main", "namespace": namespace},
                    "spec": spec,
                },
            },
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    #[test]
    fn a_valid_backend_is_allowed() {
        let r =
            review_request(&request("MeshOpenTelemetryBackend", "kuma-system", json!({"endpoint": {"port": 4317}})));
        assert!(r.allowed);
    }

    #[test]
    fn every_violation_is_reported_in_kumas_words() {
        let spec = json!({"endpoint": {"port": 70000, "path": "/x"}, "protocol": "grpc"});
        let r = review_request(&request("MeshOpenTelemetryBackend", "default", spec));
        assert!(!r.allowed);
        let message = r.result.message;
        assert!(message.contains("metadata.namespace"), "{message}");
        assert!(message.contains("spec.endpoint.port"), "{message}");
        assert!(message.contains("spec.endpoint.path"), "{message}");
    }

    #[test]
    fn deprecated_fields_come_back_as_warnings() {
        let spec = json!({"targetRef": {"kind": "Mesh"}, "default": {"backends": [
            {"type": "OpenTelemetry", "openTelemetry": {"endpoint": "collector:4317"}}]}});
        let r = review_request(&request("MeshTrace", "kuma-system", spec));
        assert!(r.allowed);
        assert!(r.warnings.unwrap_or_default().iter().any(|w| w.contains("deprecated")));
    }

    #[test]
    fn the_configuration_trusts_the_ca_and_covers_every_kind() {
        let c = validating_configuration(&WebhookClient::Url("https://127.0.0.1:5443".into()), "PEM");
        let hook = &c.webhooks.unwrap()[0];
        assert_eq!(hook.client_config.url.as_deref(), Some("https://127.0.0.1:5443/validate"));
        assert_eq!(hook.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()), Some(&b"PEM"[..]));
        assert_eq!(hook.rules.as_ref().unwrap()[0].resources.as_ref().unwrap().len(), Kind::ALL.len());
        assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
    }
}
