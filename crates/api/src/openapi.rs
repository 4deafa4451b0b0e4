//! The OpenAPI 3.0 document served at `/openapi.json`. Written by hand (as
//! JSON built in code) rather than derived with a macro crate: the API is a
//! handful of generic paths over a kind parameter, which derive macros model
//! poorly, and a test checks the document against the router.

use serde_json::{json, Value};
use tern_model::Kind;

/// Every path the router serves, for the test that keeps this document true.
pub const PATHS: &[&str] = &[
    "/",
    "/openapi.json",
    "/_apply",
    "/meshes",
    "/meshes/{name}",
    "/{plural}",
    "/meshes/{mesh}/{plural}",
    "/meshes/{mesh}/{plural}/{name}",
    "/meshes/{mesh}/dataplanes/{name}/_runtime",
    "/tokens/dataplane",
    "/tokens/dataplane/revocations",
    "/tokens/dataplane/signing-keys",
    "/tokens/dataplane/signing-keys/{serial}",
];

pub fn document() -> Value {
    let plurals: Vec<&str> = Kind::ALL.iter().filter(|k| k.is_mesh_scoped()).map(|k| k.plural()).collect();
    let all_plurals: Vec<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
    let param = |name: &str, values: Option<&Vec<&str>>| {
        let mut schema = json!({"type": "string"});
        if let Some(v) = values {
            schema["enum"] = json!(v);
        }
        json!({"name": name, "in": "path", "required": true, "schema": schema})
    };
    let list_params = json!([
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "size", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        {"name": "filter", "in": "query", "description": "label.<key>=<value>, repeatable, ANDed",
         "schema": {"type": "string", "pattern": "^label\\..+=.*$"}}
    ]);
    let conditional = json!([
        {"name": "If-Match", "in": "header", "description": "only write if the stored version is this ETag",
         "schema": {"type": "string"}},
        {"name": "If-None-Match", "in": "header", "description": "`*`: only create", "schema": {"type": "string"}}
    ]);
    let error = |desc: &str| json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let ok = |desc: &str, schema: &str| json!({"description": desc, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let get_one = json!({"summary": "Get one resource", "responses": {"200": ok("the resource", "Resource"), "404": error("not found")}});
    let put_one = json!({
        "summary": "Create or replace a resource",
        "parameters": conditional,
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Resource"}}}},
        "responses": {"200": ok("updated", "Warnings"), "201": ok("created", "Warnings"),
                      "400": error("invalid: every violation listed"), "401": error("token required"),
                      "405": error("read-only kind"), "409": error("version conflict")}
    });
    let delete_one = json!({"summary": "Delete a resource", "parameters": conditional,
        "responses": {"200": {"description": "deleted"}, "404": error("not found"), "409": error("version conflict")}});
    let list = json!({"summary": "List resources", "parameters": list_params,
        "responses": {"200": ok("a page of resources", "List"), "400": error("bad query or unknown mesh")}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Tern control plane API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Kuma-compatible resource API of tern-cp. Writes need a bearer token when the API listens beyond loopback."},
        "paths": {
            "/": {"get": {"summary": "Control plane identity", "responses": {"200": {"description": "product and version"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.0"}}}},
            "/_apply": {"post": {
                "summary": "Validate every document, then write all of them in one transaction (or none)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApplyRequest"}}}},
                "responses": {"200": ok("what happened to each document", "ApplyResponse"),
                              "400": error("invalid documents or unknown mesh; nothing applied"), "401": error("token required")}}},
            "/meshes": {"get": list},
            "/meshes/{name}": {"parameters": [param("name", None)], "get": get_one, "put": put_one, "delete": delete_one},
            "/{plural}": {"parameters": [param("plural", Some(&all_plurals))], "get": list},
            "/meshes/{mesh}/{plural}": {"parameters": [param("mesh", None), param("plural", Some(&plurals))], "get": list},
            "/meshes/{mesh}/dataplanes/{name}/_runtime": {
                "parameters": [param("mesh", None), param("name", None)],
                "get": {"summary": "Live delivery counts reported by the data plane, and the xDS version its Envoy accepted or the config it refused",
                        "responses": {"200": {"description": "runtime view"}, "404": error("no such dataplane")}}},
            "/meshes/{mesh}/{plural}/{name}": {
                "parameters": [param("mesh", None), param("plural", Some(&plurals)), param("name", None)],
                "get": get_one, "put": put_one, "delete": delete_one},
            "/tokens/dataplane": {"post": {
                "summary": "A data-plane token for one dataplane (Kuma's path), as text",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object",
                    "required": ["mesh", "name"], "properties": {"mesh": {"type": "string"}, "name": {"type": "string"},
                    "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                    "validFor": {"type": "string", "description": "a duration, e.g. 24h (default)"}}}}}},
                "responses": {"200": {"description": "the token", "content": {"text/plain": {"schema": {"type": "string"}}}},
                              "400": error("invalid request"), "401": error("token required")}}},
            "/tokens/dataplane/revocations": {"post": {
                "summary": "Refuse a data-plane token from now on, by its id (`jti`)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object",
                    "required": ["id"], "properties": {"id": {"type": "string"}}}}}},
                "responses": {"204": {"description": "revoked"}, "400": error("invalid id"), "401": error("token required")}}},
            "/tokens/dataplane/signing-keys": {
                "get": {"summary": "Signing keys' serials (never their material)", "responses": {"200": {"description": "items: serial, active"}}},
                "post": {"summary": "Add a signing key; new tokens are signed with it",
                         "responses": {"201": {"description": "the new serial"}, "401": error("token required")}}},
            "/tokens/dataplane/signing-keys/{serial}": {"parameters": [param("serial", None)], "delete": {
                "summary": "Remove a signing key: tokens it signed are refused",
                "responses": {"204": {"description": "removed"}, "400": error("the only key"), "404": error("no such key")}}}
        },
        "components": {"schemas": {
            "Resource": {"type": "object", "required": ["type", "name"], "properties": {
                "type": {"type": "string", "enum": Kind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>()},
                "mesh": {"type": "string"}, "name": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "creationTime": {"type": "string", "format": "date-time", "readOnly": true},
                "modificationTime": {"type": "string", "format": "date-time", "readOnly": true},
                "spec": {"type": "object"}, "status": {"type": "object", "readOnly": true}},
                "additionalProperties": true},
            "List": {"type": "object", "properties": {"total": {"type": "integer"},
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/Resource"}},
                "next": {"type": "string", "nullable": true}}},
            "Warnings": {"type": "object", "properties": {"warnings": {"type": "array", "items": {"type": "string"}}}},
            "ApplyRequest": {"type": "object", "required": ["documents"], "properties": {
                "documents": {"type": "array", "items": {"type": "object"}}, "dryRun": {"type": "boolean"}}},
            "ApplyResponse": {"type": "object", "properties": {"results": {"type": "array", "items": {"type": "object", "properties": {
                "type": {"type": "string"}, "mesh": {"type": "string"}, "name": {"type": "string"},
                "outcome": {"type": "string", "enum": ["created", "updated", "unchanged", "valid"]},
                "version": {"type": "integer"}, "warnings": {"type": "array", "items": {"type": "string"}}}}}}},
            "Error": {"type": "object", "required": ["type", "status", "title", "detail"], "properties": {
                "type": {"type": "string"}, "status": {"type": "integer"}, "title": {"type": "string"},
                "detail": {"type": "string"}, "details": {"type": "string"},
                "invalid_parameters": {"type": "array", "items": {"type": "object", "properties": {
                    "field": {"type": "string"}, "reason": {"type": "string"}, "document": {"type": "integer"}}}},
                "causes": {"type": "array", "items": {"type": "object", "properties": {
                    "field": {"type": "string"}, "message": {"type": "string"}}}}}}
        }}
    })
}
