//! The coordinator: holds the whole picture (the Compose catalog, which
//! host runs what, which service needs which to be healthy first) and
//! sequences bring-up across tiers and hosts. Operators never talk to it
//! directly: it writes desired state to the bus and reads observed state
//! and heartbeats back, so either side can restart without losing anything.

pub mod convert;
pub mod coordinator;
pub mod hosts;
pub mod placement;
pub mod rollout;
pub mod selections;
pub mod service;
pub mod state;

use std::path::PathBuf;
use std::time::Duration;

use infra_bus::Bus;
use infra_proto::coordinator::v1::coordinator_service_server::CoordinatorServiceServer;
use operator_core::app::{self, ConfigError, LogFormat};
use operator_core::config::NatsConfig;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use coordinator::{Coordinator, Settings};
pub use state::ObservedCache;

/// Coordinator configuration (see `operators/coordinator.example.toml`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Id on the bus.
    pub id: String,
    /// Compose project name: prefix of container, network and volume names.
    pub project: String,
    /// NATS connection.
    pub nats: NatsConfig,
    /// gRPC listen address.
    pub grpc_listen: String,
    /// The catalog root.
    pub compose_dir: PathBuf,
    /// Override files merged onto the catalog, in order.
    pub overrides: Vec<PathBuf>,
    /// `.env` for interpolation (default: `<compose_dir>/.env` if present).
    pub env_file: Option<PathBuf>,
    /// Per-service deploy deadline, seconds.
    pub deploy_timeout_secs: u64,
    /// How long an operator's heartbeat counts (the hosts bucket's max age),
    /// seconds; must match the operators' `heartbeat_ttl_secs`.
    pub heartbeat_ttl_secs: u64,
    /// A host none of whose operators heartbeated for this long is lost:
    /// its replicated stateless services start elsewhere. Seconds.
    pub host_lost_secs: u64,
    /// Bounded drain on shutdown, seconds.
    pub shutdown_grace_secs: u64,
    /// Logging.
    pub log: operator_core::config::LogConfig,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            id: "coordinator".into(),
            project: convert::PROJECT.into(),
            nats: NatsConfig::default(),
            grpc_listen: "127.0.0.1:50051".into(),
            compose_dir: PathBuf::from("compose"),
            overrides: Vec::new(),
            env_file: None,
            deploy_timeout_secs: 300,
            heartbeat_ttl_secs: 20,
            host_lost_secs: 30,
            shutdown_grace_secs: 10,
            log: operator_core::config::LogConfig {
                format: LogFormat::Json,
                filter: "info".into(),
            },
        }
    }
}

impl CoordinatorConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<std::net::SocketAddr, ConfigError> {
        infra_bus::Token::new("id", &self.id).map_err(|e| ConfigError(format!("id: {e}")))?;
        infra_bus::Token::new("project", &self.project).map_err(|e| ConfigError(format!("project: {e}")))?;
        if !self.compose_dir.is_dir() {
            return Err(ConfigError(format!(
                "compose_dir: {} is not a directory",
                self.compose_dir.display()
            )));
        }
        for o in &self.overrides {
            if !o.is_file() {
                return Err(ConfigError(format!("overrides: {} does not exist", o.display())));
            }
        }
        if self.deploy_timeout_secs == 0 {
            return Err(ConfigError("deploy_timeout_secs must be at least 1".into()));
        }
        if self.heartbeat_ttl_secs == 0 {
            return Err(ConfigError("heartbeat_ttl_secs must be at least 1".into()));
        }
        if self.host_lost_secs == 0 {
            return Err(ConfigError("host_lost_secs must be at least 1".into()));
        }
        self.grpc_listen.parse().map_err(|e| {
            ConfigError(format!(
                "grpc_listen: {:?} is not a socket address ({e})",
                self.grpc_listen
            ))
        })
    }

    /// The settings the logic needs.
    pub fn settings(&self) -> Settings {
        Settings {
            id: self.id.clone(),
            project: self.project.clone(),
            compose_dir: app::absolute(&self.compose_dir),
            overrides: self.overrides.iter().map(|p| app::absolute(p)).collect(),
            env_file: self.env_file.as_ref().map(|p| app::absolute(p)),
            deploy_timeout: Duration::from_secs(self.deploy_timeout_secs),
            host_lost_after: Duration::from_secs(self.host_lost_secs),
            heartbeat_ttl: Duration::from_secs(self.heartbeat_ttl_secs),
        }
    }
}

/// Runs the coordinator until `shutdown`, then drains within the grace.
pub async fn run(
    settings: Settings,
    bus: Bus,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), tonic::transport::Error> {
    let cache = ObservedCache::default();
    let tasks = TaskTracker::new();
    tasks.spawn(cache.clone().follow(bus.clone(), shutdown.clone()));
    let coordinator = Coordinator::new(settings, bus, cache);
    tasks.spawn(coordinator.clone().watch_hosts(shutdown.clone()));

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<CoordinatorServiceServer<service::Api>>().await;
    let (v1, v1alpha) = operator_core::grpc::reflection().expect("embedded descriptor sets are valid");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let served = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(CoordinatorServiceServer::new(service::Api { coordinator }))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
        .await;
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!("drain did not finish within {}s", grace.as_secs());
    }
    served
}
