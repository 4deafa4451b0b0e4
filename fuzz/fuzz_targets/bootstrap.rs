//! The body of `POST /bootstrap`, as the data-plane server reads it: JSON
//! into `BootstrapRequest`, then the checks that need no store: the
//! inventory's closed set of messages and the Dataplane document through
//! the one validator.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_model::resource_from_document;
use tern_otlp_config::Inventory;
use tern_protocol::BootstrapRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<BootstrapRequest>(data) else { return };
    let accepted = request.otel_env.check_received().is_ok();
    let json = serde_json::to_vec(&request.otel_env).expect("an inventory always encodes");
    let back: Inventory = serde_json::from_slice(&json).expect("an encoded inventory decodes");
    assert_eq!(back, request.otel_env, "the inventory survives a round trip");
    assert_eq!(back.check_received().is_ok(), accepted, "the round trip does not change the verdict");
    if let Some(doc) = &request.dataplane {
        if let Ok(parsed) = resource_from_document(doc) {
            let stored = parsed.resource;
            let again = resource_from_document(&stored.to_json())
                .unwrap_or_else(|e| panic!("a stored {} does not decode again: {e}", stored.kind));
            assert_eq!(again.resource.key(), stored.key(), "the key survives a round trip");
        }
    }
});
