//! The pipe's protobuf framing walker, on any bytes, for each signal: no
//! panic; a request it accepts counts twice when sent twice (batches are
//! concatenations); and on whatever prost can decode, once re-encoded, it
//! counts what the decoded request holds. Adding a resource attribute to a
//! request (refused only when a resource's own framing is broken) keeps the
//! count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tern_otlp_config::Signal;
use tern_pipe::wire::{count_items, Payload, ResourceAttribute};
use tern_pipe::OtlpRequest;

fn decode(signal: Signal, data: &[u8]) -> Option<OtlpRequest> {
    Some(match signal {
        Signal::Traces => OtlpRequest::Traces(ExportTraceServiceRequest::decode(data).ok()?),
        Signal::Metrics => OtlpRequest::Metrics(ExportMetricsServiceRequest::decode(data).ok()?),
        Signal::Logs => OtlpRequest::Logs(ExportLogsServiceRequest::decode(data).ok()?),
    })
}

fuzz_target!(|data: &[u8]| {
    for signal in Signal::ALL {
        let counted = count_items(signal, data);
        if let Ok(items) = counted {
            let twice = [data, data].concat();
            assert_eq!(count_items(signal, &twice), Ok(2 * items), "{signal}: a batch of two");
            let host = ResourceAttribute::string("host.name", "fuzz");
            if let Ok(added) = host.add_to(data) {
                assert_eq!(count_items(signal, &added), Ok(items), "{signal}: the attribute adds no item");
            }
        }
        let payload = Payload::parse(signal, data.to_vec().into());
        assert_eq!(payload.map(|p| p.items), counted, "{signal}: Payload::parse counts as count_items");
        if let Some(request) = decode(signal, data) {
            let encoded = request.encode();
            assert_eq!(count_items(signal, &encoded), Ok(request.items()), "{signal}: decoded count");
        }
    }
});
