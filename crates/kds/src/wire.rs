//! The sync service on the wire: `tern.kds.v1.KdsSync`, two bidirectional
//! streams of Envoy's delta xDS messages, as Kuma's `KDSSyncService`, plus a
//! unary health check. Written out by hand (no code generation), with the
//! protobuf codec tonic uses for every generated service.

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use http::uri::PathAndQuery;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_stream::Stream;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, StdError};
use tonic::server::{NamedService, StreamingService, UnaryService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

pub const SERVICE: &str = "tern.kds.v1.KdsSync";
const GLOBAL_TO_ZONE: &str = "/tern.kds.v1.KdsSync/GlobalToZoneSync";
const ZONE_TO_GLOBAL: &str = "/tern.kds.v1.KdsSync/ZoneToGlobalSync";
const HEALTH_CHECK: &str = "/tern.kds.v1.KdsSync/HealthCheck";
/// Kuma's limit for one sync message.
pub const MAX_MESSAGE: usize = 10 * 1024 * 1024;

/// A zone's periodic proof of life.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {}

/// How often the global wants to hear from the zone.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(uint64, tag = "1")]
    pub interval_ms: u64,
}

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;
type Answer<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;

/// What the global control plane does with each call.
pub trait KdsHandler: Send + Sync + 'static {
    /// The zone subscribes (requests, ACKs) and the global sends its resources.
    fn global_to_zone(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Answer<BoxStream<DeltaDiscoveryResponse>>;
    /// The zone sends its resources and the global answers (subscribe, ACK/NACK).
    fn zone_to_global(
        &self,
        request: Request<Streaming<DeltaDiscoveryResponse>>,
    ) -> Answer<BoxStream<DeltaDiscoveryRequest>>;
    fn health_check(&self, request: Request<HealthCheckRequest>) -> Answer<HealthCheckResponse>;
}

/// The gRPC service over a [`KdsHandler`].
pub struct KdsServer<H> {
    handler: Arc<H>,
}

impl<H> KdsServer<H> {
    pub fn new(handler: Arc<H>) -> Self {
        KdsServer { handler }
    }
}

impl<H> Clone for KdsServer<H> {
    fn clone(&self) -> Self {
        KdsServer { handler: self.handler.clone() }
    }
}

impl<H> NamedService for KdsServer<H> {
    const NAME: &'static str = SERVICE;
}

struct GlobalToZone<H>(Arc<H>);
impl<H: KdsHandler> StreamingService<DeltaDiscoveryRequest> for GlobalToZone<H> {
    type Response = DeltaDiscoveryResponse;
    type ResponseStream = BoxStream<DeltaDiscoveryResponse>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;
    fn call(&mut self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        self.0.global_to_zone(request)
    }
}

struct ZoneToGlobal<H>(Arc<H>);
impl<H: KdsHandler> StreamingService<DeltaDiscoveryResponse> for ZoneToGlobal<H> {
    type Response = DeltaDiscoveryRequest;
    type ResponseStream = BoxStream<DeltaDiscoveryRequest>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;
    fn call(&mut self, request: Request<Streaming<DeltaDiscoveryResponse>>) -> Self::Future {
        self.0.zone_to_global(request)
    }
}

struct Health<H>(Arc<H>);
impl<H: KdsHandler> UnaryService<HealthCheckRequest> for Health<H> {
    type Response = HealthCheckResponse;
    type Future = BoxFuture<Response<HealthCheckResponse>, Status>;
    fn call(&mut self, request: Request<HealthCheckRequest>) -> Self::Future {
        self.0.health_check(request)
    }
}

fn grpc<A, B>() -> tonic::server::Grpc<ProstCodec<A, B>>
where
    A: prost::Message + Send + 'static,
    B: prost::Message + Default + Send + 'static,
{
    tonic::server::Grpc::new(ProstCodec::default()).apply_max_message_size_config(Some(MAX_MESSAGE), Some(MAX_MESSAGE))
}

impl<H, B> tower_service::Service<http::Request<B>> for KdsServer<H>
where
    H: KdsHandler,
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let handler = self.handler.clone();
        match req.uri().path() {
            GLOBAL_TO_ZONE => Box::pin(async move { Ok(grpc().streaming(GlobalToZone(handler), req).await) }),
            ZONE_TO_GLOBAL => Box::pin(async move { Ok(grpc().streaming(ZoneToGlobal(handler), req).await) }),
            HEALTH_CHECK => Box::pin(async move { Ok(grpc().unary(Health(handler), req).await) }),
            _ => {
                Box::pin(async move { Ok(Status::unimplemented("no such method in tern.kds.v1.KdsSync").into_http()) })
            }
        }
    }
}

/// The zone's side of the service.
#[derive(Clone)]
pub struct KdsClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

impl KdsClient {
    pub fn new(channel: tonic::transport::Channel) -> Self {
        let inner = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        KdsClient { inner }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("the global control plane is not reachable: {e}")))
    }

    pub async fn global_to_zone(
        &mut self,
        request: Request<impl Stream<Item = DeltaDiscoveryRequest> + Send + 'static>,
    ) -> Result<Streaming<DeltaDiscoveryResponse>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static(GLOBAL_TO_ZONE);
        Ok(self.inner.streaming(request, path, ProstCodec::default()).await?.into_inner())
    }

    pub async fn zone_to_global(
        &mut self,
        request: Request<impl Stream<Item = DeltaDiscoveryResponse> + Send + 'static>,
    ) -> Result<Streaming<DeltaDiscoveryRequest>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static(ZONE_TO_GLOBAL);
        Ok(self.inner.streaming(request, path, ProstCodec::default()).await?.into_inner())
    }

    pub async fn health_check(&mut self, request: Request<HealthCheckRequest>) -> Result<HealthCheckResponse, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static(HEALTH_CHECK);
        Ok(self.inner.unary(request, path, ProstCodec::default()).await?.into_inner())
    }
}
