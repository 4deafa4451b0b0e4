//! The validating admission webhook: every create and update of a `kuma.io`
//! resource goes through the same validator as Universal
//! ([`resource_from_document`]), so `kubectl apply` of an invalid document
//! prints every violation, in Kuma's words, and stores nothing. Kuma's
//! warnings (a deprecated inline endpoint) come back as kubectl warnings.
//!
//! On a global or zone control plane the webhook also applies the sync's
//! write rules ([`tern_kds::guard::refusal`]) to everyone but the control
//! plane itself: `kubectl` cannot edit or delete on a zone what came from
//! the global, nor create a Mesh there, and the other way round.
//!
//! Registration ([`ensure_registered`]): on start the control plane writes
//! its ValidatingWebhookConfiguration with the CA that signs its serving
//! certificate, so the apiserver trusts it without a manual step.

use crate::inject::Injector;
use crate::resources::Naming;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use kube::api::{Api, Patch, PatchParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use kube::Client;
use serde_json::{json, Value};
use tern_kds::guard::{refusal, Role};
use tern_kds::mapping::{ORIGIN_GLOBAL, ORIGIN_LABEL, ORIGIN_ZONE, ZONE_LABEL};
use tern_model::document::{resource_from_document, API_VERSION};
use tern_model::{Kind, Resource};

/// The webhook configuration's name, and the webhook's.
pub const VALIDATING_CONFIGURATION: &str = "tern-validating-webhook";
const VALIDATOR_NAME: &str = "validator.tern.kuma.io";
/// The path the webhook serves on.
pub const VALIDATE_PATH: &str = "/validate";
/// The sidecar injector's configuration and path.
pub const MUTATING_CONFIGURATION: &str = "tern-sidecar-injector";
const INJECTOR_NAME: &str = "injector.tern.kuma.io";
pub const INJECT_PATH: &str = "/inject";

/// A global or zone control plane's rules for what users write.
#[derive(Debug, Clone)]
pub struct Federation {
    pub role: Role,
    /// The control plane's own user on the apiserver ([`own_username`]):
    /// its writes (the sync's) pass.
    pub own_user: String,
    pub naming: Naming,
}

/// Users besides the control plane whose changes pass, as in Kuma: the
/// garbage collector (owner references) and the storage version migrator.
const SYSTEM_USERS: &[&str] = &[
    "system:serviceaccount:kube-system:generic-garbage-collector",
    "system:serviceaccount:kube-system:storage-version-migrator-controller",
];

impl Federation {
    /// Why the request's user may not make this change here, if not: the
    /// kind is the other side's, what is stored belongs to the other side,
    /// the new object claims to, or (on a global) a policy outside the
    /// system namespace.
    fn refusal(&self, kind: Kind, request: &AdmissionRequest<DynamicObject>) -> Option<String> {
        let user = request.user_info.username.as_deref().unwrap_or_default();
        if user == self.own_user || SYSTEM_USERS.contains(&user) {
            return None;
        }
        let read = |o: &Option<DynamicObject>| o.as_ref().and_then(|o| self.naming.to_resource(kind, o).ok());
        let (old, new) = (read(&request.old_object), read(&request.object));
        let key = old.as_ref().or(new.as_ref())?.key();
        // The kind's rules and what is stored (none for a create).
        if let Some(stored) = refusal(&self.role, &key, old.as_ref()) {
            return Some(stored);
        }
        if let Some(claimed) = new.as_ref().and_then(|n| self.label_refusal(n)) {
            return Some(claimed);
        }
        let namespace = request.namespace.as_deref().unwrap_or_default();
        if self.role == Role::Global && kind.is_mesh_scoped() && namespace != self.naming.system_namespace {
            return Some(format!(
                "on Global CP the policy can be created only in the system namespace:{}",
                self.naming.system_namespace
            ));
        }
        None
    }

    /// Kuma's refusal of an object whose origin or zone labels say it
    /// belongs elsewhere.
    fn label_refusal(&self, new: &Resource) -> Option<String> {
        let wrong = |label: &str, expected: &str, got: &str| {
            format!("Operation not allowed. '{label}' label should have '{expected}' value, got '{got}'")
        };
        let origin = new.labels.get(ORIGIN_LABEL).map(String::as_str);
        match &self.role {
            Role::Global => origin.filter(|o| *o == ORIGIN_ZONE).map(|o| wrong(ORIGIN_LABEL, ORIGIN_GLOBAL, o)),
            Role::Zone { zone } => match origin {
                Some(o) if o != ORIGIN_ZONE => Some(wrong(ORIGIN_LABEL, ORIGIN_ZONE, o)),
                Some(_) => new.labels.get(ZONE_LABEL).filter(|z| *z != zone).map(|z| wrong(ZONE_LABEL, zone, z)),
                None => None,
            },
        }
    }
}

/// Who the apiserver says `client` is (a SelfSubjectReview): the user the
/// control plane's own writes come from.
pub async fn own_username(client: &Client) -> Result<String, kube::Error> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = reviews.create(&Default::default(), &SelfSubjectReview::default()).await?;
    let user = review.status.and_then(|s| s.user_info).and_then(|u| u.username);
    Ok(user.unwrap_or_default())
}

#[derive(Clone)]
struct Webhooks {
    injector: Injector,
    federation: Option<Federation>,
}

/// The webhooks' routes (served over TLS by the control plane): validation
/// of Tern's resources (with the sync's rules on a global or zone control
/// plane) and the sidecar injector for Pods.
pub fn router(injector: Injector, federation: Option<Federation>) -> Router {
    Router::new()
        .route(VALIDATE_PATH, post(validate))
        .route(INJECT_PATH, post(inject))
        .with_state(Webhooks { injector, federation })
}

async fn inject(
    State(hooks): State<Webhooks>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    answer(review, |request| hooks.injector.review(request))
}

/// The review's answer, or `invalid` when it carries no request.
fn answer(
    review: AdmissionReview<DynamicObject>,
    decide: impl FnOnce(&AdmissionRequest<DynamicObject>) -> AdmissionResponse,
) -> Json<AdmissionReview<DynamicObject>> {
    let request: Result<AdmissionRequest<DynamicObject>, _> = review.try_into();
    let response = match request {
        Ok(request) => decide(&request),
        Err(e) => AdmissionResponse::invalid(format!("not an admission request: {e}")),
    };
    Json(response.into_review())
}

async fn validate(
    State(hooks): State<Webhooks>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    answer(review, |request| review_request(request, hooks.federation.as_ref()))
}

/// The answer to one admission request.
pub fn review_request(request: &AdmissionRequest<DynamicObject>, federation: Option<&Federation>) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    if request.kind.group != "kuma.io" {
        return allowed;
    }
    let refused = federation.zip(Kind::from_name(&request.kind.kind)).and_then(|(f, kind)| f.refusal(kind, request));
    if let Some(reason) = refused {
        return allowed.deny(reason);
    }
    if !matches!(request.operation, Operation::Create | Operation::Update) {
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
/// resources and the MutatingWebhookConfiguration of the sidecar injector,
/// trusting `ca_pem`.
/// With `deletes`, deletions are reviewed too (a global or zone control
/// plane's rules cover them). Without `injects` (a global control plane,
/// which has no data planes) the injector is not registered, and removed if
/// it was.
pub async fn ensure_registered(
    client: &Client,
    at: &WebhookClient,
    ca_pem: &str,
    deletes: bool,
    injects: bool,
) -> Result<(), kube::Error> {
    let params = PatchParams::apply("tern-cp").force();
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let configuration = validating_configuration(at, ca_pem, deletes);
    validating.patch(VALIDATING_CONFIGURATION, &params, &Patch::Apply(&configuration)).await?;
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if !injects {
        return match mutating.delete(MUTATING_CONFIGURATION, &Default::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        };
    }
    let configuration = mutating_configuration(at, ca_pem);
    mutating.patch(MUTATING_CONFIGURATION, &params, &Patch::Apply(&configuration)).await.map(|_| ())
}

/// How the apiserver reaches one webhook path.
fn client_config(at: &WebhookClient, ca_pem: &str, path: &str) -> Value {
    use base64::Engine;
    let mut config = json!({"caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem)});
    match at {
        WebhookClient::Url(url) => config["url"] = json!(format!("{}{path}", url.trim_end_matches('/'))),
        WebhookClient::Service { namespace, name, port } => {
            config["service"] = json!({"namespace": namespace, "name": name, "port": port, "path": path});
        }
    }
    config
}

/// The injector: Pods created in namespaces labelled for injection; one
/// that cannot be reached refuses those Pods (fail closed, never a Pod
/// without its sidecar).
pub fn mutating_configuration(at: &WebhookClient, ca_pem: &str) -> MutatingWebhookConfiguration {
    let value = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": MUTATING_CONFIGURATION},
        "webhooks": [{
            "name": INJECTOR_NAME,
            "clientConfig": client_config(at, ca_pem, INJECT_PATH),
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {crate::pods::INJECTION_LABEL: "enabled"}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "reinvocationPolicy": "Never",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }],
    });
    serde_json::from_value(value).expect("the injector configuration literal matches k8s-openapi's type")
}

/// The configuration: every `kuma.io` resource of Tern's, on create and
/// update (and delete with `deletes`); a webhook that cannot be reached
/// refuses the write (fail closed).
pub fn validating_configuration(at: &WebhookClient, ca_pem: &str, deletes: bool) -> ValidatingWebhookConfiguration {
    let resources: Vec<String> = Kind::ALL.iter().map(|k| crate::resources::plural(*k)).collect();
    let operations: &[&str] = if deletes { &["CREATE", "UPDATE", "DELETE"] } else { &["CREATE", "UPDATE"] };
    let value = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": VALIDATING_CONFIGURATION},
        "webhooks": [{
            "name": VALIDATOR_NAME,
            "clientConfig": client_config(at, ca_pem, VALIDATE_PATH),
            "rules": [{
                "apiGroups": [crate::resources::GROUP],
                "apiVersions": [crate::resources::VERSION],
                "operations": operations,
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
        let r = review_request(
            &request("MeshOpenTelemetryBackend", "kuma-system", json!({"endpoint": {"port": 4317}})),
            None,
        );
        assert!(r.allowed);
    }

    #[test]
    fn every_violation_is_reported_in_kumas_words() {
        let spec = json!({"endpoint": {"port": 70000, "path": "/x"}, "protocol": "grpc"});
        let r = review_request(&request("MeshOpenTelemetryBackend", "default", spec), None);
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
        let r = review_request(&request("MeshTrace", "kuma-system", spec), None);
        assert!(r.allowed);
        assert!(r.warnings.unwrap_or_default().iter().any(|w| w.contains("deprecated")));
    }

    #[test]
    fn the_configuration_trusts_the_ca_and_covers_every_kind() {
        let c = validating_configuration(&WebhookClient::Url("https://127.0.0.1:5443".into()), "PEM", false);
        let hook = &c.webhooks.unwrap()[0];
        assert_eq!(hook.client_config.url.as_deref(), Some("https://127.0.0.1:5443/validate"));
        assert_eq!(hook.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()), Some(&b"PEM"[..]));
        assert_eq!(hook.rules.as_ref().unwrap()[0].resources.as_ref().unwrap().len(), Kind::ALL.len());
        assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
    }

    #[test]
    fn the_injector_is_registered_for_pods_in_injection_enabled_namespaces() {
        let at =
            WebhookClient::Service { namespace: "kuma-system".into(), name: "tern-control-plane".into(), port: 5443 };
        let c = mutating_configuration(&at, "PEM");
        let hook = &c.webhooks.unwrap()[0];
        let service = hook.client_config.service.as_ref().unwrap();
        assert_eq!((service.name.as_str(), service.path.as_deref()), ("tern-control-plane", Some(INJECT_PATH)));
        let selector = hook.namespace_selector.as_ref().and_then(|s| s.match_labels.clone()).unwrap();
        assert_eq!(selector.get("kuma.io/sidecar-injection").map(String::as_str), Some("enabled"));
        assert_eq!(hook.rules.as_ref().unwrap()[0].resources, Some(vec!["pods".to_string()]));
    }

    /// Hostile reviews: an internal kind, a non-ASCII name, a review with
    /// no request: each is answered, none panics.
    #[test]
    fn hostile_reviews_are_refused_not_crashed() {
        let secret = request("GlobalSecret", "kuma-system", json!({"key": "x"}));
        assert!(!review_request(&secret, None).allowed, "an internal kind is never admitted as a resource");
        let mut odd = request("MeshOpenTelemetryBackend", "kuma-system", json!({}));
        odd.object.as_mut().unwrap().metadata.name = Some("ünïcødé✓".into());
        let r = review_request(&odd, None);
        assert!(!r.allowed && r.result.message.contains("metadata.name"), "{}", r.result.message);
        let empty: AdmissionReview<DynamicObject> =
            serde_json::from_value(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})).unwrap();
        let Json(answer) = answer(empty, |r| review_request(r, None));
        let answer = serde_json::to_value(answer).unwrap();
        assert_eq!(answer["response"]["allowed"], false, "{answer}");
    }

    fn zone_rules() -> Federation {
        let naming = Naming { system_namespace: "kuma-system".into() };
        Federation { role: Role::Zone { zone: "east".into() }, own_user: "tern-cp".into(), naming }
    }

    /// A review of `operation` by `user` of a MeshTrace labelled with `origin`.
    fn change(operation: &str, user: &str, origin: &str) -> AdmissionRequest<DynamicObject> {
        let object = json!({
            "apiVersion": "kuma.io/v1alpha1", "kind": "MeshTrace",
            "metadata": {"name": "mt-abc", "namespace": "kuma-system", "labels": {"kuma.io/origin": origin}},
            "spec": {"targetRef": {"kind": "Mesh"}, "default": {"backends": []}},
        });
        let (new, old) = match operation {
            "DELETE" => (Value::Null, object),
            "CREATE" => (object, Value::Null),
            _ => (object.clone(), object),
        };
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-2",
                "kind": {"group": "kuma.io", "version": "v1alpha1", "kind": "MeshTrace"},
                "resource": {"group": "kuma.io", "version": "v1alpha1", "resource": "meshtraces"},
                "name": "mt-abc", "namespace": "kuma-system", "operation": operation,
                "userInfo": {"username": user},
                "object": new, "oldObject": old,
            },
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    #[test]
    fn on_a_zone_users_cannot_touch_what_the_global_synced() {
        let zone = zone_rules();
        for (operation, says) in [
            ("UPDATE", "synced from the global control plane"),
            ("DELETE", "synced from the global control plane"),
            ("CREATE", "'kuma.io/origin' label should have 'zone' value, got 'global'"),
        ] {
            let r = review_request(&change(operation, "alice", "global"), Some(&zone));
            assert!(!r.allowed, "{operation}");
            assert!(r.result.message.contains(says), "{}", r.result.message);
            let own = review_request(&change(operation, "tern-cp", "global"), Some(&zone));
            assert!(own.allowed, "the sync's own {operation} passes");
        }
        assert!(review_request(&change("UPDATE", "alice", "zone"), Some(&zone)).allowed, "the zone's own policy");
        assert!(review_request(&change("DELETE", "alice", "zone"), Some(&zone)).allowed);
        let mut mesh = request("Mesh", "", json!({}));
        mesh.user_info.username = Some("alice".into());
        let r = review_request(&mesh, Some(&zone));
        assert!(!r.allowed && r.result.message.contains("meshes are created on the global"), "{}", r.result.message);
        assert!(review_request(&mesh, None).allowed, "a standalone control plane takes meshes");
    }

    #[test]
    fn labels_that_claim_the_other_side_are_refused_in_kumas_words() {
        let zone = zone_rules();
        let r = review_request(&change("CREATE", "alice", "global"), Some(&zone));
        assert!(!r.allowed);
        let mut claims_west = change("CREATE", "alice", "zone");
        let labels = claims_west.object.as_mut().unwrap().metadata.labels.get_or_insert_default();
        labels.insert(ZONE_LABEL.into(), "west".into());
        let r = review_request(&claims_west, Some(&zone));
        assert_eq!(
            r.result.message,
            "Operation not allowed. 'kuma.io/zone' label should have 'east' value, got 'west'"
        );
        let gc = change("DELETE", "system:serviceaccount:kube-system:generic-garbage-collector", "global");
        assert!(review_request(&gc, Some(&zone)).allowed, "the garbage collector follows owner references");

        let global = Federation { role: Role::Global, ..zone_rules() };
        let r = review_request(&change("CREATE", "alice", "zone"), Some(&global));
        assert_eq!(
            r.result.message,
            "Operation not allowed. 'kuma.io/origin' label should have 'global' value, got 'zone'"
        );
        let mut elsewhere = change("CREATE", "alice", "global");
        elsewhere.namespace = Some("shop".into());
        elsewhere.object.as_mut().unwrap().metadata.namespace = Some("shop".into());
        let r = review_request(&elsewhere, Some(&global));
        assert_eq!(r.result.message, "on Global CP the policy can be created only in the system namespace:kuma-system");
        assert!(review_request(&change("CREATE", "alice", "global"), Some(&global)).allowed);
    }

    #[test]
    fn deletes_are_reviewed_only_when_federated() {
        let at = WebhookClient::Url("https://127.0.0.1:5443".into());
        let operations = |deletes| {
            let c = validating_configuration(&at, "PEM", deletes);
            c.webhooks.unwrap()[0].rules.as_ref().unwrap()[0].operations.clone().unwrap()
        };
        assert!(!operations(false).contains(&"DELETE".to_string()));
        assert!(operations(true).contains(&"DELETE".to_string()));
    }
}
