//! Tern's resource model: the Kuma kinds Tern stores (`kuma.io/v1alpha1`),
//! how documents in Kubernetes or Universal form become one stored
//! [`Resource`], and Kuma-compatible validation that reports every violation
//! with its field path.
//!
//! Start at [`document::resource_from_document`]; typed specs live in [`spec`].

pub mod document;
pub mod kind;
pub mod label;
pub mod resource;
pub mod spec;
pub mod violation;

pub use document::{
    parse_documents, resource_from_document, DocumentError, ParsedResource, SourceDocument, SyntaxError,
};
pub use kind::Kind;
pub use resource::{Meta, Resource, ResourceKey, DEFAULT_MESH};
pub use violation::{FieldPath, Violation, Violations};
