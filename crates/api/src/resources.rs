//! Kuma's resource paths: `GET/PUT/DELETE /meshes/{mesh}/{plural}/{name}`,
//! `GET /meshes/{mesh}/{plural}`, `GET /{plural}`, `GET/PUT/DELETE /meshes/{name}`.

use crate::error::{ApiError, InvalidParameter};
use crate::ApiState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use tern_model::{resource_from_document, Kind, Resource, ResourceKey};
use tern_store::{ListFilter, Precondition, ResourceStore, Write, WriteOutcome};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

fn kind_of(plural: &str) -> Result<Kind, ApiError> {
    match Kind::from_plural(plural) {
        Some(k) if k.is_mesh_scoped() => Ok(k),
        _ => Err(ApiError::not_found(format!("unknown resource type {plural:?}"))),
    }
}

fn with_etag(mut response: Response, version: i64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

async fn get_one<S: ResourceStore>(state: &ApiState<S>, key: ResourceKey) -> Result<Response, ApiError> {
    let found = state.store.get(&key).await.map_err(|e| ApiError::from_store(e, None))?;
    let r = found.ok_or_else(|| ApiError::not_found(format!("{key} not found")))?;
    Ok(with_etag(Json(r.to_json()).into_response(), r.meta.version))
}

pub async fn get_resource<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&plural)?;
    get_one(&state, ResourceKey::new(kind, &mesh, &name)).await
}

pub async fn get_mesh<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    get_one(&state, ResourceKey::new(Kind::Mesh, "", &name)).await
}

/// A kind outside meshes other than Mesh: `zones`, `zone-insights`.
fn global_kind(plural: &str) -> Result<Kind, ApiError> {
    match Kind::from_plural(plural) {
        Some(k) if !k.is_mesh_scoped() && k != Kind::Mesh => Ok(k),
        _ => Err(ApiError::not_found(format!("unknown resource type {plural:?}"))),
    }
}

/// `GET /zones/{name}`, `GET /zone-insights/{name}`.
pub async fn get_global<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    Path((plural, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    get_one(&state, ResourceKey::new(global_kind(&plural)?, "", &name)).await
}

/// `PUT /zones/{name}` (Kuma's `enabled` switch).
pub async fn put_global<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    Path((plural, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    put(&state, ResourceKey::new(global_kind(&plural)?, "", &name), &headers, &body?).await
}

pub async fn delete_global<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    Path((plural, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    delete(&state, ResourceKey::new(global_kind(&plural)?, "", &name), &headers).await
}

/// `offset`, `size` and `filter=label.<key>=<value>` (repeatable, ANDed).
struct ListQuery {
    offset: usize,
    size: usize,
    labels: BTreeMap<String, String>,
}

fn parse_list_query(raw: Option<&str>) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery { offset: 0, size: DEFAULT_PAGE, labels: BTreeMap::new() };
    let bad = |field: &str, reason: &str| {
        ApiError::bad_request(
            "Could not list resources",
            "invalid query",
            vec![InvalidParameter { field: field.into(), reason: reason.into(), document: None }],
        )
    };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "offset" => q.offset = v.parse().map_err(|_| bad("offset", "must be a non-negative integer"))?,
            "size" => {
                q.size = v.parse().map_err(|_| bad("size", "must be a positive integer"))?;
                if q.size == 0 || q.size > MAX_PAGE {
                    return Err(bad("size", &format!("must be between 1 and {MAX_PAGE}")));
                }
            }
            "filter" => {
                let (key, value) = v
                    .strip_prefix("label.")
                    .and_then(|s| s.split_once('='))
                    .ok_or_else(|| bad("filter", "must be label.<key>=<value>"))?;
                q.labels.insert(key.to_string(), value.to_string());
            }
            _ => {}
        }
    }
    Ok(q)
}

async fn list<S: ResourceStore>(
    state: &ApiState<S>,
    kind: Kind,
    mesh: Option<String>,
    path: String,
    raw: Option<String>,
) -> Result<Response, ApiError> {
    let q = parse_list_query(raw.as_deref())?;
    if let Some(m) = &mesh {
        let mesh_key = ResourceKey::new(Kind::Mesh, "", m);
        if state.store.get(&mesh_key).await.map_err(|e| ApiError::from_store(e, None))?.is_none() {
            return Err(ApiError::mesh_not_found(m, None));
        }
    }
    let filter = ListFilter { mesh, labels: q.labels.clone() };
    let all = state.store.list(kind, &filter).await.map_err(|e| ApiError::from_store(e, None))?;
    let total = all.len();
    let items: Vec<Value> = all.iter().skip(q.offset).take(q.size).map(Resource::to_json).collect();
    // `offset` is the caller's number: past the end (even near usize::MAX)
    // there is simply no next page.
    let next_offset = q.offset.checked_add(q.size).filter(|&n| n < total);
    let next = next_offset.map(|next_offset| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("offset", &next_offset.to_string()).append_pair("size", &q.size.to_string());
        for (k, v) in &q.labels {
            query.append_pair("filter", &format!("label.{k}={v}"));
        }
        format!("{path}?{}", query.finish())
    });
    Ok(Json(json!({"total": total, "items": items, "next": next})).into_response())
}

pub async fn list_in_mesh<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    Path((mesh, plural)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let kind = kind_of(&plural)?;
    list(&state, kind, Some(mesh.clone()), format!("/meshes/{mesh}/{plural}"), raw).await
}

pub async fn list_all_meshes<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    Path(plural): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let kind =
        Kind::from_plural(&plural).ok_or_else(|| ApiError::not_found(format!("unknown resource type {plural:?}")))?;
    list(&state, kind, None, format!("/{plural}"), raw).await
}

pub async fn list_meshes<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    list(&state, Kind::Mesh, None, "/meshes".into(), raw).await
}

fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    if let Some(v) = headers.get(header::IF_MATCH) {
        let text = v.to_str().unwrap_or("").trim();
        // RFC 9110: `*` matches any current representation.
        if text == "*" {
            return Ok(Precondition::MustExist);
        }
        return text.trim_matches('"').parse().map(Precondition::Version).map_err(|_| {
            ApiError::bad_request(
                "Could not process a resource",
                "If-Match must be * or a version returned in an ETag",
                vec![],
            )
        });
    }
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some("*") {
        return Ok(Precondition::MustNotExist);
    }
    Ok(Precondition::None)
}

/// Fills `type`, `mesh` and `name` from the URL when the body leaves them
/// out, and refuses a body that names something else.
fn reconcile_body(body: &mut Value, key: &ResourceKey) -> Result<(), ApiError> {
    let Value::Object(fields) = body else {
        return Err(ApiError::bad_request("Could not process a resource", "body must be a JSON object", vec![]));
    };
    let mut wanted = vec![("type", key.kind.name().to_string()), ("name", key.name.clone())];
    if key.kind.is_mesh_scoped() {
        wanted.push(("mesh", key.mesh.clone()));
    }
    let mut invalid = Vec::new();
    for (field, value) in wanted {
        match fields.get(field).and_then(Value::as_str) {
            None => {
                fields.insert(field.into(), Value::from(value));
            }
            Some(given) if given != value => invalid.push(InvalidParameter {
                field: field.into(),
                reason: format!("{field} from the URL has to be the same as in body"),
                document: None,
            }),
            Some(_) => {}
        }
    }
    if invalid.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request("Could not process a resource", "Resource is not valid", invalid))
    }
}

async fn put<S: ResourceStore>(
    state: &ApiState<S>,
    key: ResourceKey,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    if key.kind.is_read_only() {
        return Err(read_only(key.kind));
    }
    let mut doc: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("Could not process a resource", format!("body is not valid JSON: {e}"), vec![])
    })?;
    reconcile_body(&mut doc, &key)?;
    let exists = state.store.get(&key).await.map_err(|e| ApiError::from_store(e, None))?.is_some();
    let parsed = resource_from_document(&doc).map_err(|e| {
        let title = if exists { "Failed to update a resource" } else { "Failed to create a resource" };
        ApiError::invalid(title, &e.violations, None)
    })?;
    let pre = precondition(headers)?;
    let write = Write { resource: parsed.resource, precondition: pre };
    let outcome = state.store.apply(vec![write]).await.map_err(|e| match e {
        // Like a stale version, a resource that `If-Match` expected but that
        // is gone is a conflict, not a missing path.
        tern_store::StoreError::NotFound(k) if pre != Precondition::None => ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("{k} does not exist, and If-Match needs a current version"),
        ),
        e => ApiError::from_store(e, None),
    })?;
    let outcome = outcome[0];
    let status = match outcome {
        WriteOutcome::Created { .. } => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    for w in &parsed.warnings {
        tracing::warn!(resource = %key, warning = %w, "accepted with a warning");
    }
    let body = if parsed.warnings.is_empty() { json!({}) } else { json!({"warnings": parsed.warnings}) };
    Ok(with_etag((status, Json(body)).into_response(), outcome.version()))
}

pub async fn put_resource<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&plural)?;
    put(&state, ResourceKey::new(kind, &mesh, &name), &headers, &body?).await
}

pub async fn put_mesh<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    put(&state, ResourceKey::new(Kind::Mesh, "", &name), &headers, &body?).await
}

fn read_only(kind: Kind) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        format!("{kind} is written by the control plane only"),
    )
}

async fn delete<S: ResourceStore>(
    state: &ApiState<S>,
    key: ResourceKey,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if key.kind.is_read_only() {
        return Err(read_only(key.kind));
    }
    let pre = precondition(headers)?;
    state.store.delete(&key, pre).await.map_err(|e| match e {
        tern_store::StoreError::NotFound(k) => {
            ApiError::new(StatusCode::NOT_FOUND, "Could not delete a resource", format!("{k} not found"))
        }
        e => ApiError::from_store(e, None),
    })?;
    Ok(Json(json!({})).into_response())
}

pub async fn delete_resource<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let kind = kind_of(&plural)?;
    delete(&state, ResourceKey::new(kind, &mesh, &name), &headers).await
}

pub async fn delete_mesh<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    delete(&state, ResourceKey::new(Kind::Mesh, "", &name), &headers).await
}

/// `GET /meshes/{mesh}/dataplanes/{name}/_runtime` (Tern): delivery counts
/// and xDS state, live from the control plane's memory (and, with several
/// replicas, from whichever replica the data plane talks to).
pub async fn dataplane_runtime<S: ResourceStore>(
    State(state): State<Arc<ApiState<S>>>,
    Path((mesh, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = ResourceKey::new(Kind::Dataplane, &mesh, &name);
    if state.store.get(&key).await.map_err(|e| ApiError::from_store(e, None))?.is_none() {
        return Err(ApiError::not_found(format!("{key} not found")));
    }
    let view = match &state.runtime {
        Some(runtime) => runtime
            .dataplane(&mesh, &name)
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Runtime state unavailable", e))?,
        None => Default::default(),
    };
    Ok(Json(view).into_response())
}

#[cfg(test)]
mod tests {
    use crate::{router, ErrorBody, WriteAuth};
    use axum::body::Body;
    use axum::http::{header, Method, Request, StatusCode};
    use axum::Router;
    use serde_json::{json, Value};
    use std::sync::Arc;
    use tern_store::SqlStore;
    use tower::ServiceExt;

    async fn api(token: Option<&str>) -> (Router, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("tern.db").display());
        let store = Arc::new(SqlStore::open(&url).await.expect("store opens"));
        (router(store, WriteAuth { token: token.map(str::to_string), resources_read_only: None }, None), dir)
    }

    async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
        let resp = app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn request(method: Method, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Request<Body> {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        match body {
            Some(b) => req.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .expect("request")
    }

    /// Parses an answer as Kuma's error body, failing the test if it is not one.
    fn kuma_error(status: StatusCode, body: &Value) -> ErrorBody {
        let err: ErrorBody = serde_json::from_value(body.clone())
            .unwrap_or_else(|e| panic!("answer {status} is not Kuma's error shape ({e}): {body}"));
        assert_eq!(err.status, status.as_u16());
        assert_eq!(err.type_, "/std-errors");
        err
    }

    async fn put_backend(app: &Router, name: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
        let body = json!({"spec": {"endpoint": {"port": 4317}}});
        let path = format!("/meshes/default/meshopentelemetrybackends/{name}");
        call(app, request(Method::PUT, &path, headers, Some(&body))).await
    }

    #[tokio::test]
    async fn deleting_a_mesh_with_dataplanes_is_refused_as_kuma_does() {
        let (app, _dir) = api(None).await;
        let (status, _) = call(&app, request(Method::PUT, "/meshes/busy", &[], Some(&json!({})))).await;
        assert_eq!(status, StatusCode::CREATED);
        let dataplane = json!({"networking": {"address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}});
        let (status, _) =
            call(&app, request(Method::PUT, "/meshes/busy/dataplanes/web-1", &[], Some(&dataplane))).await;
        assert_eq!(status, StatusCode::CREATED);

        let (status, body) = call(&app, request(Method::DELETE, "/meshes/busy", &[], None)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let err = kuma_error(status, &body);
        assert_eq!((err.title.as_str(), err.detail.as_str()), ("Could not delete a resource", "Resource is not valid"));
        assert_eq!(err.invalid_parameters.len(), 1);
        assert_eq!(err.invalid_parameters[0].field, "mesh");
        assert_eq!(err.invalid_parameters[0].reason, "unable to delete mesh, there are still some dataplanes attached");
        let (status, _) = call(&app, request(Method::GET, "/meshes/busy/dataplanes/web-1", &[], None)).await;
        assert_eq!(status, StatusCode::OK, "nothing was deleted");

        let (status, _) = call(&app, request(Method::DELETE, "/meshes/busy/dataplanes/web-1", &[], None)).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = call(&app, request(Method::DELETE, "/meshes/busy", &[], None)).await;
        assert_eq!(status, StatusCode::OK, "a mesh without dataplanes can go");
    }

    #[tokio::test]
    async fn huge_offsets_never_wrap_to_the_first_page() {
        let (app, _dir) = api(None).await;
        for offset in [u64::MAX, u64::MAX - 50] {
            let path = format!("/meshes?offset={offset}&size=100");
            let (status, body) = call(&app, request(Method::GET, &path, &[], None)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["items"], json!([]), "offset {offset}");
            assert_eq!(body["next"], Value::Null, "offset {offset}");
            assert_eq!(body["total"], 1);
        }
        let (_, body) = call(&app, request(Method::GET, "/meshes?offset=0&size=1", &[], None)).await;
        assert_eq!(body["next"], Value::Null, "one mesh fits one page");
    }

    #[tokio::test]
    async fn if_match_star_means_any_current_version() {
        let (app, _dir) = api(None).await;
        let (status, body) = put_backend(&app, "missing", &[("if-match", "*")]).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        kuma_error(status, &body);
        assert_eq!(put_backend(&app, "b", &[]).await.0, StatusCode::CREATED);
        let (status, body) = put_backend(&app, "b", &[("if-match", "*")]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = put_backend(&app, "b", &[("if-match", "\"1\"")]).await;
        assert_eq!(status, StatusCode::OK, "an unchanged write keeps version 1: {body}");
        let (status, body) = put_backend(&app, "b", &[("if-match", "nonsense")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        kuma_error(status, &body);
        let path = "/meshes/default/meshopentelemetrybackends/b";
        let (status, _) = call(&app, request(Method::DELETE, path, &[("if-match", "*")], None)).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn bearer_scheme_is_case_insensitive() {
        let (app, _dir) = api(Some("s3cret")).await;
        for (auth, want) in [
            ("Bearer s3cret", StatusCode::CREATED),
            ("bearer s3cret", StatusCode::OK),
            ("BEARER  s3cret", StatusCode::OK),
            ("Bearer wrong", StatusCode::UNAUTHORIZED),
            ("Basic s3cret", StatusCode::UNAUTHORIZED),
            ("s3cret", StatusCode::UNAUTHORIZED),
        ] {
            let (status, body) = put_backend(&app, "b", &[("authorization", auth)]).await;
            assert_eq!(status, want, "{auth}: {body}");
        }
        let (status, body) = put_backend(&app, "b", &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        kuma_error(status, &body);
    }

    #[tokio::test]
    async fn body_rejections_answer_in_kumas_shape() {
        let (app, _dir) = api(None).await;
        let plain = Request::builder()
            .method(Method::POST)
            .uri("/_apply")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("{}"))
            .expect("request");
        let (status, body) = call(&app, plain).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(kuma_error(status, &body).title, "Could not process a resource");

        let (status, body) = call(&app, request(Method::POST, "/_apply", &[], Some(&json!({"documents": 5})))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(kuma_error(status, &body).detail.contains("documents"), "{body}");

        let broken = Request::builder()
            .method(Method::POST)
            .uri("/_apply")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{not json"))
            .expect("request");
        let (status, body) = call(&app, broken).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        kuma_error(status, &body);

        // Larger than axum's default body limit (2 MiB), on both kinds of body.
        let huge = json!({"spec": {"endpoint": {"address": "a".repeat(3 << 20)}}});
        let path = "/meshes/default/meshopentelemetrybackends/b";
        let (status, body) = call(&app, request(Method::PUT, path, &[], Some(&huge))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        kuma_error(status, &body);
        let (status, body) =
            call(&app, request(Method::POST, "/_apply", &[], Some(&json!({"documents": [huge]})))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        kuma_error(status, &body);
    }

    #[tokio::test]
    async fn router_fallbacks_answer_in_kumas_shape() {
        let (app, _dir) = api(None).await;
        let (status, body) =
            call(&app, request(Method::GET, "/meshes/default/dataplanes/x/_nothing/here", &[], None)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        kuma_error(status, &body);
        let resp = app.clone().oneshot(request(Method::PATCH, "/meshes/default", &[], None)).await.expect("infallible");
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(resp.headers().contains_key(header::ALLOW), "the Allow header survives");
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
        kuma_error(StatusCode::METHOD_NOT_ALLOWED, &serde_json::from_slice(&bytes).unwrap_or(Value::Null));
    }

    /// On Kubernetes, resources are written with kubectl: the API refuses
    /// resource writes with Kuma's explanation, and still serves reads and
    /// data-plane tokens.
    #[tokio::test]
    async fn resources_are_read_only_on_kubernetes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("tern.db").display());
        let store = Arc::new(SqlStore::open(&url).await.expect("store opens"));
        let auth = WriteAuth { token: None, resources_read_only: Some(crate::KUBERNETES_READ_ONLY.into()) };
        let app = router(store, auth, None);
        let mesh = json!({"type": "Mesh", "name": "m"});
        for req in [
            request(Method::PUT, "/meshes/m", &[], Some(&mesh)),
            request(Method::DELETE, "/meshes/default", &[], None),
            request(Method::POST, "/_apply", &[], Some(&json!({"resources": []}))),
        ] {
            let (status, body) = call(&app, req).await;
            let err = kuma_error(status, &body);
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
            assert!(err.detail.contains("'kubectl apply'"), "{}", err.detail);
        }
        let (status, _) = call(&app, request(Method::GET, "/meshes/default", &[], None)).await;
        assert_eq!(status, StatusCode::OK);
        let token = json!({"name": "web", "mesh": "default"});
        let (status, body) = call(&app, request(Method::POST, "/tokens/dataplane", &[], Some(&token))).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    }
}
