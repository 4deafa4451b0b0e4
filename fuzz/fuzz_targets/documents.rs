//! Resource documents as `ternctl apply` and the REST API read them: any
//! text through `parse_documents`, every document through the one
//! validator, and what it accepts back through it again ("what is stored
//! always decodes").
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_model::{parse_documents, resource_from_document};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let documents = match parse_documents(text) {
        Ok(documents) => documents,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    for doc in &documents {
        match resource_from_document(&doc.value) {
            Ok(parsed) => {
                let stored = parsed.resource;
                let again = resource_from_document(&stored.to_json())
                    .unwrap_or_else(|e| panic!("a stored {} does not decode again: {e}", stored.kind));
                assert_eq!(again.resource.key(), stored.key(), "the key survives a round trip");
                assert_eq!(again.resource.spec, stored.spec, "the canonical spec survives a round trip");
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
