//! The gRPC face of the coordinator.
//!
//! Reads (ListServices, DescribeService, Plan, GetStatus, ListHosts,
//! WatchEvents, Lint) are answered by every coordinator. Writes (Deploy,
//! Remove, Scale, Rollout, Rollback, Drain) only by the leader: a follower
//! refuses them with `FAILED_PRECONDITION` naming the leader and its
//! address, or `UNAVAILABLE` while nobody leads. A write in progress stops
//! when its coordinator stops leading; what it left is taken up by the next
//! leader (rollouts from their records, deploys from the deployments
//! bucket).

use std::pin::Pin;

use futures::{Stream, StreamExt};
use infra_bus::history::{EventFilter, EventsFrom};
use infra_proto::bus::v1::{DeploymentInProgress, Event};
use infra_proto::coordinator::v1 as api;
use infra_proto::coordinator::v1::coordinator_service_server::CoordinatorService;
use prost::Message;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::{Error, ErrorKind};
use tracing::Instrument;

use crate::coordinator::Coordinator;
use crate::leader::{Election, Leadership};

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

type Progress = crate::coordinator::ProgressTx;

/// The gRPC status of a logic error: its kind picks the code, its message
/// is the status message.
impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match e.kind() {
            ErrorKind::Invalid => tonic::Code::InvalidArgument,
            ErrorKind::Precondition => tonic::Code::FailedPrecondition,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Internal => tonic::Code::Internal,
        };
        Status::new(code, e.message())
    }
}

/// A progress channel's messages as a gRPC stream.
fn streamed(rx: tokio::sync::mpsc::Receiver<Result<api::DeployProgress, Error>>) -> Streamed<api::DeployProgress> {
    Box::pin(ReceiverStream::new(rx).map(|r| r.map_err(Status::from)))
}

/// Runs `work` in its own task and streams what it sends. A call refused
/// before any progress (not deployed, stateful, no previous revision) is an
/// error status, not a stream that fails.
async fn progress_stream<F, Fut>(
    coordinator: &Coordinator,
    leading: Option<watch::Receiver<bool>>,
    work: F,
) -> Result<Response<Streamed<api::DeployProgress>>, Status>
where
    F: FnOnce(Progress) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Error>> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    // The work outlives the call's future: it stays in the call's trace,
    // and the coordinator tracks it.
    coordinator.spawn(
        async move {
            match while_leading(leading, work(tx.clone())).await {
                Some(Ok(())) => {}
                Some(Err(status)) => {
                    let _ = tx.send(Err(status)).await;
                }
                None => {
                    let _ = tx.send(Err(lost_lead())).await;
                }
            }
        }
        .instrument(tracing::Span::current()),
    );
    let first = match rx.recv().await {
        Some(Err(e)) => return Err(e.into()),
        Some(Ok(p)) => p,
        None => return Err(Status::internal("the call ended without a word")),
    };
    let rest = streamed(rx);
    Ok(Response::new(Box::pin(
        futures::stream::once(async move { Ok(first) }).chain(rest),
    )))
}

/// Runs `work` while this coordinator leads: `None` when it stopped
/// leading first (the work is dropped at its next await, so it writes
/// nothing more). Without an election it just runs.
pub(crate) async fn while_leading<F: Future>(leading: Option<watch::Receiver<bool>>, work: F) -> Option<F::Output> {
    let Some(mut leading) = leading else {
        return Some(work.await);
    };
    tokio::select! {
        out = work => Some(out),
        _ = leading.wait_for(|l| !*l) => None,
    }
}

fn lost_lead() -> Error {
    Error::unavailable("this coordinator stopped leading during the call; the new leader takes up what it left")
}

/// Who may call the writes (Deploy, Remove, Scale, Rollout, Rollback,
/// Drain). Reads are open to anyone who can connect.
#[derive(Clone, Default)]
pub struct Auth {
    /// SHA-256 of the bearer token, when one is configured (kept hashed so
    /// comparisons take the same time whatever the guess, and the token
    /// itself is not held).
    token_sha: Option<[u8; 32]>,
    /// A verified client certificate authorises writes.
    client_certs: bool,
    /// No credential is asked for: plain text on loopback.
    open: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("token", &self.token_sha.map(|_| "<redacted>"))
            .field("client_certs", &self.client_certs)
            .field("open", &self.open)
            .finish()
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

impl Auth {
    /// No credential needed (plain text on a loopback address).
    pub fn open() -> Self {
        Self {
            open: true,
            ..Self::default()
        }
    }

    /// Writes need the bearer `token`, or a verified client certificate
    /// when `client_certs`.
    pub fn credentials(token: Option<String>, client_certs: bool) -> Self {
        Self {
            token_sha: token.map(|t| sha256(t.as_bytes())),
            client_certs,
            open: false,
        }
    }

    /// One line for the startup log.
    pub fn describe(&self) -> &'static str {
        match (self.open, self.token_sha.is_some(), self.client_certs) {
            (true, _, _) => "plain text on loopback: no credential is asked for (local use only)",
            (false, true, true) => "TLS with client certificates: writes need the bearer token or a client certificate",
            (false, true, false) => "TLS: writes need the bearer token",
            (false, false, _) => "TLS with client certificates: writes need a client certificate",
        }
    }

    /// Refuses a write without a credential, with UNAUTHENTICATED. The
    /// message never repeats what was presented.
    pub fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.open {
            return Ok(());
        }
        if self.client_certs && req.peer_certs().is_some_and(|c| !c.is_empty()) {
            // tonic only hands over certificates the client CA verified.
            return Ok(());
        }
        if let Some(want) = &self.token_sha {
            let presented = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
            if let Some(p) = presented {
                let got = sha256(p.trim().as_bytes());
                // Constant time: every byte is compared, whatever differs.
                let diff = got.iter().zip(want.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
                if diff == 0 {
                    return Ok(());
                }
                return Err(Status::unauthenticated("the bearer token is not the coordinator's"));
            }
        }
        Err(Status::unauthenticated(
            "this call changes the platform and needs a credential: send the metadata 'authorization: Bearer <token>' (the coordinator's api_token_file) or a client certificate",
        ))
    }
}

/// Implements `infra.coordinator.v1.CoordinatorService`.
pub struct Api {
    /// The logic.
    pub coordinator: Coordinator,
    /// The lease this coordinator leads by; `None`: it leads alone, always
    /// (tests in-process).
    pub election: Option<Election>,
    /// Who may write.
    pub auth: Auth,
}

impl Api {
    /// What the operators of `tier` report of `service` as a cluster member
    /// (their heartbeat facts `member.<service>`), one per host, by host.
    /// Empty for a service that is no cluster member, and while the
    /// heartbeats cannot be read.
    async fn members(&self, service: &str, tier: &str) -> Vec<api::MemberStatus> {
        let key = format!("{}{service}", infra_bus::facts::MEMBER_PREFIX);
        let mut out: Vec<api::MemberStatus> = self
            .coordinator
            .bus()
            .list_heartbeats()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|b| b.tier == tier)
            .filter_map(|b| b.labels.get(&key).map(|f| crate::convert::member_status(&b.host, f)))
            .collect();
        out.sort_by(|a, b| a.host.cmp(&b.host));
        out
    }

    /// Refuses a write without a credential (UNAUTHENTICATED), or unless
    /// this coordinator leads, naming who does.
    fn may_write<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.auth.check(req)?;
        let Some(election) = &self.election else {
            return Ok(());
        };
        match election.leadership() {
            Leadership::Me { .. } => Ok(()),
            Leadership::Other {
                holder,
                term,
                expires_in,
                earlier_self: true,
                ..
            } => Err(Status::unavailable(format!(
                "not the leader yet: the lease is held by an earlier run of this coordinator ({holder}, term {term}) \
                 that stopped without releasing it; it expires in {}s, and this coordinator takes over then: retry \
                 after that",
                expires_in.as_secs() + 1
            ))),
            Leadership::Other {
                holder, address, term, ..
            } => Err(Status::failed_precondition(format!(
                "not the leader: {holder} at {address} leads (term {term}); send writes there"
            ))),
            Leadership::Nobody | Leadership::Unknown => Err(Status::unavailable(
                "no coordinator leads now (the lease is free or expired and not yet taken over); retry in a few seconds",
            )),
        }
    }

    fn leading(&self) -> Option<watch::Receiver<bool>> {
        self.election.as_ref().map(Election::leading)
    }
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
            .map_err(Status::from)
    }

    async fn describe_service(
        &self,
        req: Request<api::DescribeServiceRequest>,
    ) -> Result<Response<api::DescribeServiceResponse>, Status> {
        let name = req.into_inner().name;
        let mut resp = self.coordinator.describe(&name).await?;
        resp.members = self
            .members(&name, resp.spec.as_ref().map_or("", |s| s.tier.as_str()))
            .await;
        Ok(Response::new(resp))
    }

    async fn plan(&self, req: Request<api::PlanRequest>) -> Result<Response<api::PlanResponse>, Status> {
        self.coordinator
            .plan(req.into_inner().selection.as_ref())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    type DeployStream = Streamed<api::DeployProgress>;

    async fn deploy(&self, req: Request<api::DeployRequest>) -> Result<Response<Self::DeployStream>, Status> {
        self.may_write(&req)?;
        let req = req.into_inner();
        // Validate everything before answering: a bad catalog or selection
        // is an error status, not a stream.
        let (catalog, head) = self.coordinator.load_revision().await?;
        self.coordinator.resolve(&catalog, req.selection.as_ref())?;
        // Recorded before the first write, so a successor can finish it.
        let record = DeploymentInProgress {
            id: nuid::next().to_string(),
            request: req.encode_to_vec(),
            started_at: Some(infra_proto::now()),
            holder: self.coordinator.settings().id.clone(),
            catalog_revision: head.number,
        };
        self.coordinator
            .bus()
            .put_deployment(&record)
            .await
            .map_err(|e| Status::unavailable(format!("cannot record the deploy: {e}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let c = self.coordinator.clone();
        let leading = self.leading();
        self.coordinator.spawn(
            async move {
                let work = {
                    let (c, tx, id) = (c.clone(), tx.clone(), record.id.clone());
                    async move { c.deploy_as(id, req, tx).await }
                };
                let Some(result) = while_leading(leading, work).await else {
                    // Left recorded: the next leader runs it again.
                    let _ = tx.send(Err(lost_lead())).await;
                    return;
                };
                if let Err(e) = c.bus().delete_deployment(&record.id).await {
                    tracing::warn!(deployment = %record.id, error = %e, "cannot forget a finished deploy");
                }
                if let Err(status) = result {
                    let _ = tx.send(Err(status)).await;
                }
            }
            .instrument(tracing::Span::current()),
        );
        Ok(Response::new(streamed(rx)))
    }

    type ScaleStream = Streamed<api::DeployProgress>;

    async fn scale(&self, req: Request<api::ScaleRequest>) -> Result<Response<Self::ScaleStream>, Status> {
        self.may_write(&req)?;
        let c = self.coordinator.clone();
        progress_stream(&self.coordinator, self.leading(), move |tx| async move {
            c.scale(req.into_inner(), tx).await
        })
        .await
    }

    async fn add_host(&self, req: Request<api::AddHostRequest>) -> Result<Response<api::AddHostResponse>, Status> {
        self.may_write(&req)?;
        self.coordinator
            .add_host(req.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    type RemoveHostStream = Streamed<api::DeployProgress>;

    async fn remove_host(
        &self,
        req: Request<api::RemoveHostRequest>,
    ) -> Result<Response<Self::RemoveHostStream>, Status> {
        self.may_write(&req)?;
        let c = self.coordinator.clone();
        progress_stream(&self.coordinator, self.leading(), move |tx| async move {
            c.remove_host(req.into_inner(), tx).await
        })
        .await
    }

    type UpgradeOperatorsStream = Streamed<api::DeployProgress>;

    async fn upgrade_operators(
        &self,
        req: Request<api::UpgradeOperatorsRequest>,
    ) -> Result<Response<Self::UpgradeOperatorsStream>, Status> {
        self.may_write(&req)?;
        let c = self.coordinator.clone();
        progress_stream(&self.coordinator, self.leading(), move |tx| async move {
            c.upgrade_operators(req.into_inner(), tx).await
        })
        .await
    }

    type DrainStream = Streamed<api::DeployProgress>;

    async fn drain(&self, req: Request<api::DrainRequest>) -> Result<Response<Self::DrainStream>, Status> {
        self.may_write(&req)?;
        let c = self.coordinator.clone();
        progress_stream(&self.coordinator, self.leading(), move |tx| async move {
            c.drain(req.into_inner(), tx).await
        })
        .await
    }

    type RolloutStream = Streamed<api::DeployProgress>;

    async fn rollout(&self, req: Request<api::RolloutRequest>) -> Result<Response<Self::RolloutStream>, Status> {
        self.may_write(&req)?;
        let c = self.coordinator.clone();
        progress_stream(&self.coordinator, self.leading(), move |tx| async move {
            c.rollout_service(req.into_inner(), tx).await
        })
        .await
    }

    type RollbackStream = Streamed<api::DeployProgress>;

    async fn rollback(&self, req: Request<api::RollbackRequest>) -> Result<Response<Self::RollbackStream>, Status> {
        self.may_write(&req)?;
        let c = self.coordinator.clone();
        progress_stream(&self.coordinator, self.leading(), move |tx| async move {
            c.rollback_service(req.into_inner(), tx).await
        })
        .await
    }

    async fn get_status(
        &self,
        req: Request<api::GetStatusRequest>,
    ) -> Result<Response<api::GetStatusResponse>, Status> {
        self.coordinator
            .status(req.into_inner().selection.as_ref())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn remove(&self, req: Request<api::RemoveRequest>) -> Result<Response<api::RemoveResponse>, Status> {
        self.may_write(&req)?;
        let c = self.coordinator.clone();
        while_leading(self.leading(), async move { c.remove(req.into_inner()).await })
            .await
            .unwrap_or_else(|| Err(lost_lead()))
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn backup(&self, req: Request<api::BackupRequest>) -> Result<Response<api::BackupResponse>, Status> {
        self.may_write(&req)?;
        self.coordinator
            .backup(req.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn list_backups(
        &self,
        req: Request<api::ListBackupsRequest>,
    ) -> Result<Response<api::ListBackupsResponse>, Status> {
        self.coordinator
            .list_backups(req.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn restore(&self, req: Request<api::RestoreRequest>) -> Result<Response<api::RestoreResponse>, Status> {
        self.may_write(&req)?;
        self.coordinator
            .restore(req.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn list_hosts(
        &self,
        _req: Request<api::ListHostsRequest>,
    ) -> Result<Response<api::ListHostsResponse>, Status> {
        self.coordinator.hosts().await.map(Response::new).map_err(Status::from)
    }

    async fn push_catalog(
        &self,
        req: Request<api::PushCatalogRequest>,
    ) -> Result<Response<api::PushCatalogResponse>, Status> {
        // Any coordinator may publish: the store numbers revisions by
        // compare-and-set, and nothing runs differently until a deploy.
        self.auth.check(&req)?;
        let (head, new) = self.coordinator.push_catalog(req.into_inner()).await?;
        Ok(Response::new(api::PushCatalogResponse {
            catalog: Some(head),
            unchanged: !new,
        }))
    }

    async fn get_catalog(
        &self,
        _req: Request<api::GetCatalogRequest>,
    ) -> Result<Response<api::GetCatalogResponse>, Status> {
        let (current, history) = self.coordinator.catalog_history().await?;
        Ok(Response::new(api::GetCatalogResponse { current, history }))
    }

    async fn lint(&self, req: Request<api::LintRequest>) -> Result<Response<api::LintResponse>, Status> {
        self.coordinator
            .lint(&req.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    type LogsStream = Streamed<infra_proto::bus::v1::LogLine>;

    async fn logs(&self, req: Request<api::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let req = req.into_inner();
        // A service deployed nowhere is an error status, not a stream.
        let targets = self.coordinator.log_targets(&req.services).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let c = self.coordinator.clone();
        self.coordinator.spawn(async move { c.logs(targets, req, tx).await });
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).map(|r| r.map_err(Status::from)),
        )))
    }

    type WatchEventsStream = Streamed<Event>;

    async fn watch_events(
        &self,
        req: Request<api::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let r = req.into_inner();
        let from = match (r.start_sequence, r.start_time.as_ref()) {
            (0, None) => EventsFrom::Now,
            (n, None) => EventsFrom::Sequence(n),
            (0, Some(t)) => EventsFrom::Time(
                std::time::SystemTime::try_from(*t)
                    .map_err(|e| Status::invalid_argument(format!("start_time: {e}")))?,
            ),
            (_, Some(_)) => {
                return Err(Status::invalid_argument(
                    "start_sequence and start_time: give one of them, not both",
                ));
            }
        };
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let filter = EventFilter {
            host: opt(&r.host),
            tier: opt(&r.tier),
            service: opt(&r.service),
            kinds: r.kinds().collect(),
        };
        let stream = self.coordinator.bus().watch_events(&filter, from).await.map_err(|e| {
            if e.kind() == infra_bus::BusErrorKind::InvalidName {
                Status::invalid_argument(e.to_string())
            } else {
                Status::unavailable(e.to_string())
            }
        })?;
        Ok(Response::new(Box::pin(stream.map(Ok))))
    }
}
