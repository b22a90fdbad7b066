//! The coordinator's logic, apart from gRPC. This file holds what every
//! use case shares (settings, the handle, events); each use case has a
//! file of its own: `catalog.rs` (load, select, lint), `plan.rs`,
//! `deploy.rs`, `scale.rs`, `status.rs`, `remove.rs`, `reach.rs`,
//! `rollout/` and `hosts.rs` (drain, host loss).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use infra_bus::Bus;
use infra_proto::bus::v1::{Event, EventKind};
use tokio::sync::watch;
use tonic::Status;

use crate::state::ObservedCache;

/// What the coordinator needs to run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This coordinator's id (a bus token).
    pub id: String,
    /// Compose project name: prefix of container, network and volume names.
    pub project: String,
    /// The catalog root (`compose/`).
    pub compose_dir: PathBuf,
    /// Override files merged onto the catalog (the local image map).
    pub overrides: Vec<PathBuf>,
    /// `.env` file; default `<compose_dir>/.env` when it exists.
    pub env_file: Option<PathBuf>,
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
}

pub(crate) fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

impl Coordinator {
    /// A coordinator over `bus`, with `cache` kept current by the caller.
    pub fn new(settings: Settings, bus: Bus, cache: ObservedCache) -> Self {
        Self {
            settings: Arc::new(settings),
            bus,
            cache,
            // Alone, a coordinator leads; `with_leadership` makes it follow
            // a lease.
            leader: watch::channel(true).1,
            owners: Arc::default(),
        }
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

/// Label of a host that holds its private address: the address other
/// hosts reach it on (never a public one).
pub const ADDR_LABEL: &str = "addr";
