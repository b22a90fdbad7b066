//! The coordinator: holds the whole picture (the Compose catalog, which
//! host runs what, which service needs which to be healthy first) and
//! sequences bring-up across tiers and hosts. Operators never talk to it
//! directly: it writes desired state to the bus and reads observed state
//! and heartbeats back, so either side can restart without losing anything.

pub mod backup;
pub mod catalog;
pub mod convert;
pub mod coordinator;
pub mod deploy;
mod diff;
pub mod error;
mod follow;
pub mod hosts;
pub mod join;
pub mod leader;
mod leave;
pub mod logs;
pub mod metrics;
pub mod placement;
mod plan;
mod pull;
mod reach;
pub mod remove;
pub mod rollout;
mod scale;
pub mod selections;
pub mod service;
pub mod state;
mod status;
mod upgrade;

use std::path::PathBuf;
use std::time::Duration;

/// This coordinator's version; operators heartbeating another one are
/// reported (`ListHosts`, `infra_coordinator_operators_version_skew`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

use infra_bus::Bus;
use infra_proto::bus::v1::EventKind;
use infra_proto::coordinator::v1::coordinator_service_server::CoordinatorServiceServer;
use infra_runtime::app::{self, ConfigError};
use infra_runtime::config::NatsConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::leader::{Election, Leadership, LeaseSettings};

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
    /// The address other coordinators name when they refuse a write and
    /// send the caller to the leader. Empty: `grpc_listen`.
    pub advertise_grpc: String,
    /// TLS for the gRPC API. Unset: plain text, allowed only on a loopback
    /// `grpc_listen`, where no credential is asked for.
    pub grpc_tls: GrpcTlsConfig,
    /// File holding the bearer token that writes (Deploy, Remove, Scale,
    /// Rollout, Rollback, Drain) must present as `authorization: Bearer
    /// <token>` when TLS is on. Never logged.
    pub api_token_file: Option<PathBuf>,
    /// The leader lease, seconds: a leader that cannot renew for this long
    /// is replaced (it stops leading a little before). Every coordinator
    /// on one bus should use the same value.
    pub lease_secs: u64,
    /// A catalog folder this coordinator publishes as a new revision on the
    /// bus whenever its files change (one machine, or a folder kept in
    /// step by other means). Unset: it plans and deploys only from what
    /// `infractl catalog push` published.
    pub compose_dir: Option<PathBuf>,
    /// Override files merged onto the catalog, in order.
    pub overrides: Vec<PathBuf>,
    /// `.env` for interpolation (default: `<compose_dir>/.env` if present).
    pub env_file: Option<PathBuf>,
    /// Directories outside the catalog that secret and config `file:`
    /// sources may name (the catalog itself always may). Anything else is
    /// refused at load, symlinks resolved.
    pub secret_dirs: Vec<PathBuf>,
    /// Per-service deploy deadline, seconds.
    pub deploy_timeout_secs: u64,
    /// The most replicas one service may be scaled or deployed to.
    pub max_replicas: u32,
    /// How long an operator's heartbeat counts (the hosts bucket's max age),
    /// seconds; must match the operators' `heartbeat_ttl_secs`.
    pub heartbeat_ttl_secs: u64,
    /// A host none of whose operators heartbeated for this long is lost:
    /// its replicated stateless services start elsewhere. Seconds.
    pub host_lost_secs: u64,
    /// Bounded drain on shutdown, seconds.
    pub shutdown_grace_secs: u64,
    /// Where Prometheus scrapes the coordinator's metrics (`GET /metrics`:
    /// deploy and rollout steps, services by health, hosts by state,
    /// leader). `""` turns the server off.
    pub metrics_listen: String,
    /// Joining hosts by token (`AddHost`).
    pub join: join::JoinConfig,
    /// Logging.
    pub log: infra_runtime::config::LogConfig,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            id: "coordinator".into(),
            project: convert::PROJECT.into(),
            nats: NatsConfig::default(),
            grpc_listen: "127.0.0.1:50051".into(),
            advertise_grpc: String::new(),
            grpc_tls: GrpcTlsConfig::default(),
            api_token_file: None,
            lease_secs: 10,
            compose_dir: None,
            overrides: Vec::new(),
            env_file: None,
            secret_dirs: Vec::new(),
            deploy_timeout_secs: 300,
            max_replicas: 100,
            heartbeat_ttl_secs: 20,
            host_lost_secs: 30,
            shutdown_grace_secs: 10,
            metrics_listen: format!("127.0.0.1:{}", infra_runtime::metrics::COORDINATOR_PORT),
            join: join::JoinConfig::default(),
            log: infra_runtime::config::LogConfig::default(),
        }
    }
}

/// TLS for the coordinator's gRPC API (PEM files).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcTlsConfig {
    /// The server's certificate chain.
    pub cert_file: Option<PathBuf>,
    /// The server's private key.
    pub key_file: Option<PathBuf>,
    /// CA of the client certificates: when set, every client must present
    /// a certificate it signed, and such a certificate authorises writes.
    pub client_ca_file: Option<PathBuf>,
}

impl GrpcTlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }
}

impl CoordinatorConfig {
    /// How the gRPC API is secured: the TLS config to serve with (`None`:
    /// plain text) and who may write. Reads the files; errors name the
    /// key and the file, never a content.
    pub fn security(&self) -> Result<(Option<tonic::transport::ServerTlsConfig>, service::Auth), ConfigError> {
        let read = |field: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| ConfigError(format!("{field}: cannot read {}: {e}", p.display())))
        };
        let tls = &self.grpc_tls;
        if !tls.enabled() {
            if tls.client_ca_file.is_some() || self.api_token_file.is_some() {
                return Err(ConfigError(
                    "grpc_tls.client_ca_file and api_token_file need TLS: set grpc_tls.cert_file and grpc_tls.key_file (a token over plain text would travel in the clear)".into(),
                ));
            }
            return Ok((None, service::Auth::open()));
        }
        let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
            return Err(ConfigError(
                "grpc_tls.cert_file and grpc_tls.key_file go together: set both or neither".into(),
            ));
        };
        let identity =
            tonic::transport::Identity::from_pem(read("grpc_tls.cert_file", cert)?, read("grpc_tls.key_file", key)?);
        let mut server = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &tls.client_ca_file {
            server = server.client_ca_root(tonic::transport::Certificate::from_pem(read(
                "grpc_tls.client_ca_file",
                ca,
            )?));
        }
        let token = self
            .api_token_file
            .as_ref()
            .map(|f| app::read_secret_file("api_token_file", f))
            .transpose()?;
        if token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(ConfigError(
                "api_token_file: the token must be at least 16 characters".into(),
            ));
        }
        if token.is_none() && tls.client_ca_file.is_none() {
            return Err(ConfigError(
                "grpc_tls is set but neither api_token_file nor grpc_tls.client_ca_file is: no write could ever be authorised".into(),
            ));
        }
        Ok((
            Some(server),
            service::Auth::credentials(token, tls.client_ca_file.is_some()),
        ))
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<std::net::SocketAddr, ConfigError> {
        infra_bus::Token::new("id", &self.id).map_err(|e| ConfigError(format!("id: {e}")))?;
        infra_bus::Token::new("project", &self.project).map_err(|e| ConfigError(format!("project: {e}")))?;
        if let Some(dir) = self.compose_dir.as_ref().filter(|d| !d.is_dir()) {
            return Err(ConfigError(format!(
                "compose_dir: {} is not a directory",
                dir.display()
            )));
        }
        for o in &self.overrides {
            if !o.is_file() {
                return Err(ConfigError(format!("overrides: {} does not exist", o.display())));
            }
        }
        for d in &self.secret_dirs {
            if !d.is_dir() {
                return Err(ConfigError(format!("secret_dirs: {} is not a directory", d.display())));
            }
        }
        if self.deploy_timeout_secs == 0 {
            return Err(ConfigError("deploy_timeout_secs must be at least 1".into()));
        }
        if self.max_replicas == 0 {
            return Err(ConfigError("max_replicas must be at least 1".into()));
        }
        if self.heartbeat_ttl_secs == 0 {
            return Err(ConfigError("heartbeat_ttl_secs must be at least 1".into()));
        }
        if self.host_lost_secs == 0 {
            return Err(ConfigError("host_lost_secs must be at least 1".into()));
        }
        if self.lease_secs == 0 {
            return Err(ConfigError("lease_secs must be at least 1".into()));
        }
        self.metrics_addr()?;
        let listen: std::net::SocketAddr = self.grpc_listen.parse().map_err(|e| {
            ConfigError(format!(
                "grpc_listen: {:?} is not a socket address ({e})",
                self.grpc_listen
            ))
        })?;
        if !listen.ip().is_loopback() && !self.grpc_tls.enabled() {
            return Err(ConfigError(format!(
                "grpc_listen: {listen} is not a loopback address and grpc_tls is not configured: \
                 set grpc_tls.cert_file, grpc_tls.key_file and api_token_file (or grpc_tls.client_ca_file), \
                 or listen on 127.0.0.1 for local use"
            )));
        }
        Ok(listen)
    }

    /// The metrics address; `None` when turned off (`metrics_listen = ""`).
    pub fn metrics_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        infra_runtime::metrics::parse_listen("metrics_listen", &self.metrics_listen)
    }

    /// The election's settings: this coordinator's id, the address it
    /// advertises, the lease time.
    pub fn lease(&self) -> LeaseSettings {
        LeaseSettings {
            id: self.id.clone(),
            address: if self.advertise_grpc.is_empty() {
                self.grpc_listen.clone()
            } else {
                self.advertise_grpc.clone()
            },
            lease: Duration::from_secs(self.lease_secs),
        }
    }

    /// The settings the logic needs.
    pub fn settings(&self) -> Settings {
        Settings {
            id: self.id.clone(),
            project: self.project.clone(),
            compose_dir: self.compose_dir.as_ref().map(|d| app::absolute(d)),
            catalog_replicas: self.nats.replicas.max(1),
            overrides: self.overrides.iter().map(|p| app::absolute(p)).collect(),
            env_file: self.env_file.as_ref().map(|p| app::absolute(p)),
            secret_dirs: self.secret_dirs.iter().map(|p| app::absolute(p)).collect(),
            deploy_timeout: Duration::from_secs(self.deploy_timeout_secs),
            max_replicas: self.max_replicas,
            host_lost_after: Duration::from_secs(self.host_lost_secs),
            heartbeat_ttl: Duration::from_secs(self.heartbeat_ttl_secs),
            join: None,
        }
    }
}

/// How the coordinator serves, beside what the logic needs.
pub struct Serving {
    /// The leader election.
    pub lease: LeaseSettings,
    /// Bounded drain on shutdown.
    pub grace: Duration,
    /// TLS to serve with; `None`: plain text (loopback only, checked by
    /// [`CoordinatorConfig::validate`]).
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Who may write.
    pub auth: service::Auth,
    /// Where to serve metrics (see [`metrics`]); `None`: no metrics.
    pub metrics: Option<tokio::net::TcpListener>,
}

/// Runs the coordinator until `shutdown`, then drains within the grace.
///
/// It leads only while it holds the lease (see [`leader`]); when it becomes
/// leader it says so on the bus (`leader_elected`) and takes up the
/// rollouts and deploys a former leader left unfinished.
pub async fn run(
    settings: Settings,
    bus: Bus,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
    serving: Serving,
) -> Result<(), tonic::transport::Error> {
    let cache = ObservedCache::default();
    let tasks = TaskTracker::new();
    tasks.spawn(cache.clone().follow(bus.clone(), shutdown.clone()));
    let (election, lease_task) = Election::start(bus.clone(), serving.lease.clone(), shutdown.clone()).await;
    let metered = std::sync::Arc::new(metrics::CoordinatorMetrics::new());
    if let Some(l) = serving.metrics {
        tasks.spawn(metrics::run(
            metered.clone(),
            bus.clone(),
            settings.id.clone(),
            election.leading(),
            l,
            shutdown.clone(),
        ));
    }
    let coordinator = Coordinator::new(settings, bus, cache)
        .with_leadership(election.leading())
        .with_write_failures(metered.bus_write_failures());
    tasks.spawn(coordinator.clone().watch_hosts(shutdown.clone()));
    tasks.spawn(join::serve(coordinator.clone(), shutdown.clone()));
    tasks.spawn(remove::reap(coordinator.clone(), shutdown.clone()));
    tasks.spawn(coordinator.clone().backup_schedule(shutdown.clone()));
    tasks.spawn(on_elected(coordinator.clone(), election.clone(), shutdown.clone()));

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<CoordinatorServiceServer<service::Api>>().await;
    let (v1, v1alpha) = infra_runtime::grpc::reflection().expect("embedded descriptor sets are valid");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let drained = coordinator.clone();
    let api = service::Api {
        coordinator,
        election: Some(election),
        auth: serving.auth.clone(),
    };
    let mut server = tonic::transport::Server::builder().trace_fn(|req| {
        let tp = req.headers().get(infra_runtime::trace::TRACEPARENT);
        infra_runtime::trace::grpc_span(req.uri().path(), tp.and_then(|v| v.to_str().ok()))
    });
    if let Some(tls) = serving.tls.clone() {
        server = server.tls_config(tls)?;
    }
    let served = server
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        // A pushed catalog is one message: allow a large one (the catalog
        // store caps it at 64 MiB).
        .add_service(CoordinatorServiceServer::new(api).max_decoding_message_size(
            usize::try_from(infra_bus::catalog::MAX_BYTES).unwrap_or(usize::MAX) + 1024 * 1024,
        ))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
        .await;
    tasks.close();
    let grace = serving.grace;
    // The lease is released first, so a successor starts while this one
    // drains.
    if tokio::time::timeout(grace, lease_task).await.is_err() {
        tracing::warn!("the lease was not released within {}s", grace.as_secs());
    }
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!("drain did not finish within {}s", grace.as_secs());
    }
    // Deploys and rollouts stop at their next step once the lease is gone;
    // a successor takes them up from their records.
    if !drained.finish_work(grace).await {
        tracing::warn!("deploys or rollouts were still running after {}s", grace.as_secs());
    }
    served
}

/// Every time this coordinator becomes leader: says so on the bus, then
/// resumes interrupted rollouts and deploys in tasks of their own, which
/// stop if it stops leading.
async fn on_elected(coordinator: Coordinator, election: Election, shutdown: CancellationToken) {
    let mut leading = election.leading();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = leading.wait_for(|l| *l) => if r.is_err() { return },
        }
        let term = match election.leadership() {
            Leadership::Me { term } => term,
            _ => 0,
        };
        let id = coordinator.settings().id.clone();
        tracing::info!(term, "leading: resuming interrupted rollouts and deploys");
        coordinator
            .event(
                EventKind::LeaderElected,
                "",
                "",
                "",
                format!("{id} leads (term {term})"),
            )
            .await;
        // Desired state written before the directory existed (an upgrade
        // from an older coordinator) gets its directory entry, so that the
        // other hosts keep reaching it. Beside the rest, not before it.
        let c = coordinator.clone();
        coordinator.spawn(async move {
            match c.bus().sync_directory().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    entries = n,
                    "directory: wrote the entries desired state had and it lacked"
                ),
                Err(e) => tracing::warn!(error = %e, "directory: cannot bring it up to date with desired state"),
            }
        });
        let c = coordinator.clone();
        let l = leading.clone();
        coordinator.spawn(async move {
            let work = {
                let c = c.clone();
                async move { c.resume_rollouts().await }
            };
            if let Some(done) = service::while_leading(Some(l), work).await {
                for (service, end) in done {
                    match end {
                        Ok(()) => tracing::info!(%service, "resumed rollout finished"),
                        Err(e) => tracing::warn!(%service, error = %e, "resumed rollout did not finish"),
                    }
                }
            }
        });
        let c = coordinator.clone();
        let l: watch::Receiver<bool> = leading.clone();
        coordinator.spawn(async move {
            for (id, end) in deploy::resume_deploys(&c, l).await {
                match end {
                    Ok(()) => tracing::info!(deployment = %id, "resumed deploy finished"),
                    Err(e) => tracing::warn!(deployment = %id, error = %e, "resumed deploy did not finish"),
                }
            }
        });
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = leading.wait_for(|l| !*l) => if r.is_err() { return },
        }
    }
}
