//! Causes across the control plane's task boundaries. A write made inside
//! an API request's span records that span as the [`Cause`] of its store
//! change; the reconcile pass that the change triggers continues it, and so
//! does every xDS push carrying the pass's result. Without an OpenTelemetry
//! layer installed (tracing off), [`current`] is `None` and nothing is linked.

use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The span that caused a piece of work: its trace, span id and sampling.
pub type Cause = SpanContext;

/// At most this many causes are linked from one span (a batch may gather
/// thousands of changes; the first ones are representative).
pub const MAX_LINKS: usize = 32;

/// The current span as a cause, when it is recorded by OpenTelemetry.
pub fn current() -> Option<Cause> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let cause = span.span_context();
    cause.is_valid().then(|| cause.clone())
}

/// Adds `cause` to `causes` unless present or the list is full.
pub fn gather(causes: &mut Vec<Cause>, cause: Option<&Cause>) {
    if let Some(c) = cause {
        if causes.len() < MAX_LINKS && !causes.contains(c) {
            causes.push(c.clone());
        }
    }
}

/// Continues `causes` in `span`: the first becomes its parent (so a single
/// request and all it causes form one trace), every other one a link.
pub fn continues(span: &tracing::Span, causes: &[Cause]) {
    let Some((first, rest)) = causes.split_first() else { return };
    let parent = opentelemetry::Context::new().with_remote_span_context(first.clone());
    // Fails only when the span is disabled; then there is nothing to link.
    let _ = span.set_parent(parent);
    for cause in rest {
        span.add_link(cause.clone());
    }
}
