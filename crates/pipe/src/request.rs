//! One OTLP export request of any signal, as it travels through the pipe.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use prost::Message;
use tern_otlp_config::Signal;

#[derive(Debug, Clone, PartialEq)]
pub enum OtlpRequest {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
    Logs(ExportLogsServiceRequest),
}

/// The data points of one metric, whatever its kind.
pub fn data_points(m: &Metric) -> usize {
    match &m.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

impl OtlpRequest {
    pub fn signal(&self) -> Signal {
        match self {
            OtlpRequest::Traces(_) => Signal::Traces,
            OtlpRequest::Metrics(_) => Signal::Metrics,
            OtlpRequest::Logs(_) => Signal::Logs,
        }
    }

    /// Spans, metric data points or log records in the request.
    pub fn items(&self) -> u64 {
        let n: usize = match self {
            OtlpRequest::Traces(r) => {
                r.resource_spans.iter().flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len()).sum()
            }
            OtlpRequest::Logs(r) => {
                r.resource_logs.iter().flat_map(|rl| &rl.scope_logs).map(|sl| sl.log_records.len()).sum()
            }
            OtlpRequest::Metrics(r) => r
                .resource_metrics
                .iter()
                .flat_map(|rm| &rm.scope_metrics)
                .flat_map(|sm| &sm.metrics)
                .map(data_points)
                .sum(),
        };
        n as u64
    }

    /// Appends `other` (of the same signal) to this request; gives it back
    /// when the signals differ. (The pipe batches bytes; tests check that
    /// this is what the concatenation means.)
    #[cfg(test)]
    pub fn absorb(&mut self, other: OtlpRequest) -> Result<(), OtlpRequest> {
        match (self, other) {
            (OtlpRequest::Traces(a), OtlpRequest::Traces(b)) => a.resource_spans.extend(b.resource_spans),
            (OtlpRequest::Metrics(a), OtlpRequest::Metrics(b)) => a.resource_metrics.extend(b.resource_metrics),
            (OtlpRequest::Logs(a), OtlpRequest::Logs(b)) => a.resource_logs.extend(b.resource_logs),
            (_, other) => return Err(other),
        }
        Ok(())
    }

    /// Calls `f` with every resource of the request.
    #[cfg(test)]
    pub fn each_resource(
        &mut self,
        mut f: impl FnMut(&mut Option<opentelemetry_proto::tonic::resource::v1::Resource>),
    ) {
        match self {
            OtlpRequest::Traces(r) => r.resource_spans.iter_mut().for_each(|x| f(&mut x.resource)),
            OtlpRequest::Metrics(r) => r.resource_metrics.iter_mut().for_each(|x| f(&mut x.resource)),
            OtlpRequest::Logs(r) => r.resource_logs.iter_mut().for_each(|x| f(&mut x.resource)),
        }
    }

    /// Decodes an encoded request of `signal`.
    #[cfg(test)]
    pub fn decode(signal: Signal, bytes: &[u8]) -> Result<OtlpRequest, prost::DecodeError> {
        Ok(match signal {
            Signal::Traces => OtlpRequest::Traces(ExportTraceServiceRequest::decode(bytes)?),
            Signal::Metrics => OtlpRequest::Metrics(ExportMetricsServiceRequest::decode(bytes)?),
            Signal::Logs => OtlpRequest::Logs(ExportLogsServiceRequest::decode(bytes)?),
        })
    }

    /// The request as the pipe carries it: encoded once, with its item count.
    pub fn to_payload(&self) -> crate::wire::Payload {
        crate::wire::Payload { signal: self.signal(), items: self.items(), bytes: self.encode().into() }
    }

    /// The protobuf encoding (OTLP/HTTP's body).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            OtlpRequest::Traces(r) => r.encode_to_vec(),
            OtlpRequest::Metrics(r) => r.encode_to_vec(),
            OtlpRequest::Logs(r) => r.encode_to_vec(),
        }
    }
}
