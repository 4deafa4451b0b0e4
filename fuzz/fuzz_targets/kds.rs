//! What a zone (or the global) sends over the sync stream, as the receiver
//! reads it before touching the store: the protobuf delta response, then
//! each resource through `tern_kds::decode` (JSON, names, the validator) for
//! every kind. A resource that decodes survives a round trip.
#![no_main]

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tern_kds::mapping::{key_of_wire, WireResource};
use tern_model::Kind;

fuzz_target!(|data: &[u8]| {
    let Ok(response) = DeltaDiscoveryResponse::decode(data) else { return };
    let _ = tern_kds::kind_of_type_url(&response.type_url);
    for kind in Kind::ALL {
        for name in &response.removed_resources {
            let _ = key_of_wire(kind, name);
        }
        for item in &response.resources {
            let Ok(resource) = tern_kds::decode(kind, item) else { continue };
            let mut again = item.clone();
            if let Some(any) = again.resource.as_mut() {
                any.value = serde_json::to_vec(&WireResource::from_resource(&resource)).expect("a resource encodes");
            }
            let back = tern_kds::decode(kind, &again).expect("a decoded resource decodes again");
            assert_eq!(back.key(), resource.key(), "the key survives a round trip");
        }
    }
});
