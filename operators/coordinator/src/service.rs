//! The gRPC face of the coordinator.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use infra_proto::bus::v1::Event;
use infra_proto::coordinator::v1 as api;
use infra_proto::coordinator::v1::coordinator_service_server::CoordinatorService;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::coordinator::Coordinator;

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

type Progress = tokio::sync::mpsc::Sender<Result<api::DeployProgress, Status>>;

/// Runs `work` in its own task and streams what it sends. A call refused
/// before any progress (not deployed, stateful, no previous revision) is an
/// error status, not a stream that fails.
async fn progress_stream<F, Fut>(work: F) -> Result<Response<Streamed<api::DeployProgress>>, Status>
where
    F: FnOnce(Progress) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Status>> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        if let Err(status) = work(tx.clone()).await {
            let _ = tx.send(Err(status)).await;
        }
    });
    let first = match rx.recv().await {
        Some(Err(status)) => return Err(status),
        Some(Ok(p)) => p,
        None => return Err(Status::internal("the call ended without a word")),
    };
    let rest = ReceiverStream::new(rx);
    Ok(Response::new(Box::pin(
        futures::stream::once(async move { Ok(first) }).chain(rest),
    )))
}

/// Implements `infra.coordinator.v1.CoordinatorService`.
pub struct Api {
    /// The logic.
    pub coordinator: Coordinator,
}

#[tonic::async_trait]
impl CoordinatorService for Api {
    async fn list_services(
        &self,
        req: Request<api::ListServicesRequest>,
    ) -> Result<Response<api::ListServicesResponse>, Status> {
        self.coordinator
            .list(req.into_inner().selection.as_ref())
            .await
            .map(Response::new)
    }

    async fn describe_service(
        &self,
        req: Request<api::DescribeServiceRequest>,
    ) -> Result<Response<api::DescribeServiceResponse>, Status> {
        self.coordinator
            .describe(&req.into_inner().name)
            .await
            .map(Response::new)
    }

    async fn plan(&self, req: Request<api::PlanRequest>) -> Result<Response<api::PlanResponse>, Status> {
        self.coordinator
            .plan(req.into_inner().selection.as_ref())
            .await
            .map(Response::new)
    }

    type DeployStream = Streamed<api::DeployProgress>;

    async fn deploy(&self, req: Request<api::DeployRequest>) -> Result<Response<Self::DeployStream>, Status> {
        let req = req.into_inner();
        // Validate everything before answering: a bad catalog or selection
        // is an error status, not a stream.
        let catalog = self.coordinator.load()?;
        self.coordinator.resolve(&catalog, req.selection.as_ref())?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let c = self.coordinator.clone();
        tokio::spawn(async move {
            if let Err(status) = c.deploy(req, tx.clone()).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ScaleStream = Streamed<api::DeployProgress>;

    async fn scale(&self, req: Request<api::ScaleRequest>) -> Result<Response<Self::ScaleStream>, Status> {
        let c = self.coordinator.clone();
        progress_stream(move |tx| async move { c.scale(req.into_inner(), tx).await }).await
    }

    type DrainStream = Streamed<api::DeployProgress>;

    async fn drain(&self, req: Request<api::DrainRequest>) -> Result<Response<Self::DrainStream>, Status> {
        let c = self.coordinator.clone();
        progress_stream(move |tx| async move { c.drain(req.into_inner(), tx).await }).await
    }

    type RolloutStream = Streamed<api::DeployProgress>;

    async fn rollout(&self, req: Request<api::RolloutRequest>) -> Result<Response<Self::RolloutStream>, Status> {
        let c = self.coordinator.clone();
        progress_stream(move |tx| async move { c.rollout_service(req.into_inner(), tx).await }).await
    }

    type RollbackStream = Streamed<api::DeployProgress>;

    async fn rollback(&self, req: Request<api::RollbackRequest>) -> Result<Response<Self::RollbackStream>, Status> {
        let c = self.coordinator.clone();
        progress_stream(move |tx| async move { c.rollback_service(req.into_inner(), tx).await }).await
    }

    async fn get_status(
        &self,
        req: Request<api::GetStatusRequest>,
    ) -> Result<Response<api::GetStatusResponse>, Status> {
        self.coordinator
            .status(req.into_inner().selection.as_ref())
            .await
            .map(Response::new)
    }

    async fn remove(&self, req: Request<api::RemoveRequest>) -> Result<Response<api::RemoveResponse>, Status> {
        self.coordinator.remove(req.into_inner()).await.map(Response::new)
    }

    async fn list_hosts(
        &self,
        _req: Request<api::ListHostsRequest>,
    ) -> Result<Response<api::ListHostsResponse>, Status> {
        self.coordinator.hosts().await.map(Response::new)
    }

    async fn lint(&self, req: Request<api::LintRequest>) -> Result<Response<api::LintResponse>, Status> {
        self.coordinator.lint(&req.into_inner()).map(Response::new)
    }

    type WatchEventsStream = Streamed<Event>;

    async fn watch_events(
        &self,
        req: Request<api::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let r = req.into_inner();
        fn opt(s: &str) -> Option<&str> {
            (!s.is_empty()).then_some(s)
        }
        let stream = self
            .coordinator
            .bus()
            .subscribe_events(opt(&r.host), opt(&r.tier), opt(&r.service))
            .await
            .map_err(|e| {
                if e.kind() == infra_bus::BusErrorKind::InvalidName {
                    Status::invalid_argument(e.to_string())
                } else {
                    Status::unavailable(e.to_string())
                }
            })?;
        Ok(Response::new(Box::pin(stream.map(Ok))))
    }
}
