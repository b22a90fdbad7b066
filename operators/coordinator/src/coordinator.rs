//! The coordinator's logic, apart from gRPC. This file holds what every
//! use case shares (settings, the handle, events); each use case has a
//! file of its own: `catalog.rs` (load, select, lint), `plan.rs`,
//! `deploy.rs`, `scale.rs`, `status.rs`, `remove.rs`, `reach.rs`,
//! `rollout/` and `hosts.rs` (drain, host loss).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use infra_bus::Bus;
use infra_proto::bus::v1::{Event, EventKind};
use tokio::sync::watch;

use crate::state::ObservedCache;

/// What the coordinator needs to run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This coordinator's id (a bus token).
    pub id: String,
    /// Compose project name: prefix of container, network and volume names.
    pub project: String,
    /// A catalog folder this coordinator publishes as a new revision
    /// whenever its files change (`None`: it reads only what was pushed).
    pub compose_dir: Option<PathBuf>,
    /// Override files published with `compose_dir` (the local image map).
    pub overrides: Vec<PathBuf>,
    /// `.env` file published with `compose_dir`; default
    /// `<compose_dir>/.env` when it exists.
    pub env_file: Option<PathBuf>,
    /// JetStream replicas of the catalog's bucket and object store.
    pub catalog_replicas: usize,
    /// Directories beside the catalog that secret and config files may
    /// come from.
    pub secret_dirs: Vec<PathBuf>,
    /// Default per-service deadline of a deploy.
    pub deploy_timeout: Duration,
    /// The most replicas one service may have.
    pub max_replicas: u32,
    /// A host silent for this long is lost (its stateless replicas move).
    pub host_lost_after: Duration,
    /// How long a heartbeat counts (the hosts bucket's max age).
    pub heartbeat_ttl: Duration,
    /// Joining hosts by token (`None`: not configured).
    pub join: Option<Arc<crate::join::JoinSettings>>,
}

impl Settings {
    /// How long after its last heartbeat an operator disappears from view.
    pub fn heartbeat_grace(&self) -> Duration {
        self.heartbeat_ttl
    }
}

/// The coordinator. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    pub(crate) settings: Arc<Settings>,
    pub(crate) bus: Bus,
    pub(crate) cache: ObservedCache,
    pub(crate) leader: watch::Receiver<bool>,
    /// The call that owns each service's replica count now; a newer one
    /// cancels the older one's wait.
    pub(crate) owners: Arc<std::sync::Mutex<HashMap<String, tokio_util::sync::CancellationToken>>>,
    /// The long calls in flight (deploys, rollouts, scales, drains and what
    /// a new leader takes up): shutdown waits for them, bounded.
    pub(crate) work: tokio_util::task::TaskTracker,
    /// Bus writes that failed after their retries without failing their
    /// call (a metric).
    pub(crate) failed_writes: prometheus_client::metrics::counter::Counter,
    /// The catalog revisions unpacked here.
    pub(crate) revisions: Arc<crate::catalog::revision::Revisions>,
}

/// Where a long call (Deploy, Scale, Rollout, Rollback, Drain) streams its
/// progress; an `Err` ends the call with that error.
pub type ProgressTx = tokio::sync::mpsc::Sender<Result<infra_proto::coordinator::v1::DeployProgress, Error>>;

pub(crate) fn invalid(e: impl std::fmt::Display) -> Error {
    Error::invalid(e.to_string())
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::unavailable(e.to_string())
}

impl Coordinator {
    /// A coordinator over `bus`, with `cache` kept current by the caller.
    ///
    /// # Panics
    /// When no temporary folder can be made for the catalog revisions.
    pub fn new(settings: Settings, bus: Bus, cache: ObservedCache) -> Self {
        let revisions = crate::catalog::revision::Revisions::new(settings.catalog_replicas.max(1))
            .expect("a temporary folder for the catalog revisions");
        Self {
            revisions,
            settings: Arc::new(settings),
            bus,
            cache,
            // Alone, a coordinator leads; `with_leadership` makes it follow
            // a lease.
            leader: watch::channel(true).1,
            owners: Arc::default(),
            work: tokio_util::task::TaskTracker::new(),
            failed_writes: prometheus_client::metrics::counter::Counter::default(),
        }
    }

    /// Counts failed bus writes on `counter` (the metrics' one).
    #[must_use]
    pub fn with_write_failures(mut self, counter: prometheus_client::metrics::counter::Counter) -> Self {
        self.failed_writes = counter;
        self
    }

    /// A bus write that must happen for the call to go on: tried three
    /// times (200 ms, then 400 ms apart); the error names `what`.
    pub(crate) async fn write<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = infra_bus::Result<T>>,
    {
        let mut wait = Duration::from_millis(200);
        let mut tries = 0;
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) if e.kind() == infra_bus::BusErrorKind::InvalidName => return Err(Error::invalid(e)),
                Err(e) if tries >= 2 => {
                    return Err(Error::unavailable(format!("{what}: {e}")));
                }
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }

    /// A bus write whose failure does not stop the call (the state it
    /// records is made again by the next step, or is only a record):
    /// retried as [`Coordinator::write`], then logged with `what` and why,
    /// and counted (`infra_coordinator_bus_write_failures_total`).
    pub(crate) async fn write_or_log<T, F, Fut>(&self, what: &str, attempt: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = infra_bus::Result<T>>,
    {
        if let Err(e) = self.write(what, attempt).await {
            self.failed_writes.inc();
            tracing::warn!(what, error = %e, "a bus write failed; going on without it");
        }
    }

    /// Runs a long call (a deploy, a rollout, what a new leader takes up)
    /// as a task the coordinator tracks, so shutdown can wait for it.
    pub(crate) fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.work.spawn(work)
    }

    /// Waits, at most `grace`, for the long calls in flight to end (they
    /// end on their own when this coordinator stops leading); false when
    /// some did not.
    pub async fn finish_work(&self, grace: Duration) -> bool {
        self.work.close();
        tokio::time::timeout(grace, self.work.wait()).await.is_ok()
    }

    /// Makes the caller the owner of `service`'s replica count: the
    /// previous owner's token is cancelled (its wait stops at once), and
    /// the returned one is cancelled when a later call claims the service.
    pub(crate) fn claim(&self, service: &str) -> tokio_util::sync::CancellationToken {
        let token = tokio_util::sync::CancellationToken::new();
        let mut owners = self.owners.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = owners.insert(service.to_owned(), token.clone()) {
            old.cancel();
        }
        token
    }

    /// Leads only while `leader` says so (the lease task keeps it current).
    pub fn with_leadership(mut self, leader: watch::Receiver<bool>) -> Self {
        self.leader = leader;
        self
    }

    /// Whether this coordinator leads now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// What it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Observed state, as the operators last reported it.
    pub(crate) fn cache(&self) -> &ObservedCache {
        &self.cache
    }

    pub(crate) async fn event(&self, kind: EventKind, service: &str, tier: &str, deployment: &str, reason: String) {
        let ev = Event {
            kind: kind as i32,
            host: self.settings.id.clone(),
            tier: if tier.is_empty() {
                "coordinator".into()
            } else {
                tier.to_owned()
            },
            service: service.to_owned(),
            reason,
            source: "coordinator".into(),
            deployment_id: deployment.to_owned(),
            ..Default::default()
        };
        if let Err(e) = self.bus.publish_event(&ev).await {
            tracing::warn!(error = %e, "could not publish coordinator event");
        }
    }
}

pub use infra_bus::facts::ADDR as ADDR_LABEL;
