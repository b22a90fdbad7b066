//! gRPC plumbing shared by the operators and the coordinator: server
//! reflection (both `grpc.reflection.v1` and `v1alpha`, since the grpcurl
//! people have may speak only the older one) and `grpc.health.v1`.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use infra_proto::bus::v1::Event;
use infra_proto::operator::v1::operator_service_server::{OperatorService, OperatorServiceServer};
use infra_proto::operator::v1::{GetStatusRequest, GetStatusResponse, WatchEventsRequest};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::reconcile::Ctx;

pub use infra_runtime::grpc::{bind, reflection};

/// The operator's inspection service.
pub struct OperatorGrpc {
    ctx: Arc<Ctx>,
    version: String,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl OperatorService for OperatorGrpc {
    async fn get_status(&self, _req: Request<GetStatusRequest>) -> Result<Response<GetStatusResponse>, Status> {
        Ok(Response::new(GetStatusResponse {
            host: self.ctx.host.clone(),
            tier: self.ctx.tier.clone(),
            version: self.version.clone(),
            services: self.ctx.observed().await,
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        req: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let want = req.into_inner().service;
        let rx = self.ctx.events.subscribe();
        let stream = BroadcastStream::new(rx).filter_map(move |r| match r {
            Ok(ev) if want.is_empty() || ev.service == want => Some(Ok(ev)),
            _ => None,
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves the operator's gRPC API on `addr` until `shutdown`.
pub async fn serve_operator(
    ctx: Arc<Ctx>,
    version: String,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<OperatorServiceServer<OperatorGrpc>>().await;
    let (v1, v1alpha) = reflection().expect("embedded descriptor sets are valid");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Server::builder()
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(OperatorServiceServer::new(OperatorGrpc { ctx, version }))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}
