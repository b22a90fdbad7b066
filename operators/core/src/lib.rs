//! The shared operator library.
//!
//! Every tier operator is this library plus its [`Tier`]: the reconcile
//! loop ([`reconcile`]), the Docker driver ([`docker`]), health and
//! decisions ([`decide`]), events ([`events`]) and the gRPC inspection
//! service ([`grpc`]) are written once. A tier binary's `main` is one call
//! to [`main`].

pub mod addr;
pub mod backup;
pub mod changes;
pub mod config;
pub mod decide;
pub mod docker;
pub mod events;
pub mod grpc;
pub mod images;
pub mod labels;
pub mod logs;
pub mod metrics;
pub mod reconcile;
pub mod s3;
pub mod spec;
pub mod upgrade;
pub use infra_runtime::{app, trace};

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use infra_bus::Bus;
use infra_proto::bus::v1::Heartbeat;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::OperatorConfig;

/// Version reported in heartbeats.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What differs between tiers.
#[derive(Clone, Copy)]
pub struct Tier {
    /// Name on the bus and in labels (`data`).
    pub name: &'static str,
    /// Default port of the local gRPC inspection service.
    pub grpc_port: u16,
    /// What the tier does beyond running its containers (the gateway
    /// renders routes, the ai operator reads GPUs, ...): tasks started
    /// beside the reconcile loop, given the operator's shared parts, that
    /// run until shutdown. Empty for most tiers.
    pub extensions: &'static [Extension],
}

impl Tier {
    /// The same tier with `extensions`.
    pub const fn with(self, extensions: &'static [Extension]) -> Self {
        Self { extensions, ..self }
    }
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("name", &self.name)
            .field("grpc_port", &self.grpc_port)
            .field("extensions", &self.extensions.len())
            .finish()
    }
}

/// A tier extension: a task over the operator's shared parts (see
/// [`Tier::extensions`]). It must return when `ctx.shutdown` is cancelled
/// and must not stop the operator on its own errors: it reports them
/// (events, logs) and goes on.
pub type Extension = fn(TierContext) -> futures::future::BoxFuture<'static, ()>;

/// What an extension gets.
#[derive(Clone)]
pub struct TierContext {
    /// The bus.
    pub bus: Bus,
    /// The Docker engine of this host.
    pub docker: docker::DockerClient,
    /// This host's id.
    pub host: String,
    /// This tier.
    pub tier: &'static str,
    /// The operator's state directory (an extension keeps its files under
    /// `<state_dir>/<tier>/`).
    pub state_dir: PathBuf,
    /// The configured host labels (`addr` is the private address).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Facts this extension adds to the host's heartbeats (`gpus`, ...).
    pub facts: Facts,
    /// The reconcile loop's shared state (observed services, desired ones).
    pub reconcile: Arc<reconcile::Ctx>,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
}

/// Host facts an extension publishes in every heartbeat of its operator,
/// over the detected ones and under the configured labels. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Facts(Arc<std::sync::RwLock<std::collections::BTreeMap<String, String>>>);

impl Facts {
    /// Sets one fact (published from the next heartbeat on).
    pub fn set(&self, key: impl Into<String>, value: impl Into<String>) {
        if let Ok(mut m) = self.0.write() {
            m.insert(key.into(), value.into());
        }
    }

    /// Drops a fact (a GPU that is gone).
    pub fn remove(&self, key: &str) {
        if let Ok(mut m) = self.0.write() {
            m.remove(key);
        }
    }

    /// Every fact now.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, String> {
        self.0.read().map(|m| m.clone()).unwrap_or_default()
    }
}

/// The nine tiers, with their default gRPC ports, from the one list
/// ([`infra_proto::tiers::ALL`], catalog folder order).
pub mod tiers {
    use super::Tier;
    use infra_proto::tiers::ALL as LIST;

    const fn tier(i: usize) -> Tier {
        Tier {
            name: LIST[i].name,
            grpc_port: LIST[i].grpc_port,
            extensions: &[],
        }
    }

    /// Traefik / Nginx.
    pub const GATEWAY: Tier = tier(0);
    /// Keycloak, OAuth2 Proxy and (03-security) Vault.
    pub const AUTH: Tier = tier(1);
    /// Databases, caches, object storage.
    pub const DATA: Tier = tier(2);
    /// Kafka, RabbitMQ.
    pub const MESSAGING: Tier = tier(3);
    /// Prometheus and the LGTM stack.
    pub const OBSERVABILITY: Tier = tier(4);
    /// n8n, Airflow.
    pub const WORKFLOW: Tier = tier(5);
    /// Ollama, Open WebUI.
    pub const AI: Tier = tier(6);
    /// Terraform, SonarQube, Harbor, Jenkins, ...
    pub const TOOLING: Tier = tier(7);
    /// MailHog, Stalwart.
    pub const COMMUNICATION: Tier = tier(8);
    /// All of them, in catalog folder order.
    pub const ALL: [Tier; 9] = [
        GATEWAY,
        AUTH,
        DATA,
        MESSAGING,
        OBSERVABILITY,
        WORKFLOW,
        AI,
        TOOLING,
        COMMUNICATION,
    ];
}

/// Command-line flags of every operator binary. Each overrides the file
/// and the environment.
#[derive(Debug, Parser, Serialize)]
#[command(version, about = "Infra tier operator: runs this tier's containers on this host.")]
pub struct Cli {
    /// TOML config file (also INFRA_CONFIG).
    #[arg(long, env = "INFRA_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Host id on the bus.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// gRPC listen address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_listen: Option<String>,
    /// State directory.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// NATS URL(s).
    #[arg(long = "nats-url")]
    #[serde(skip)]
    pub nats_url: Option<String>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
}

/// Errors that stop an operator.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Docker could not be reached.
    #[error(transparent)]
    Docker(#[from] docker::DockerError),
    /// NATS could not be reached.
    #[error(transparent)]
    Bus(#[from] infra_bus::BusError),
    /// The gRPC listener could not be bound.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Entry point of a tier binary: reads config (exit 64 if bad), starts
/// logging, runs until SIGTERM.
pub fn main(tier: Tier) -> ExitCode {
    let cli = Cli::parse();
    let mut cfg: OperatorConfig = match app::load_config(cli.config.as_deref(), &cli) {
        Ok(c) => c,
        Err(e) => return app::config_exit(&format!("{}-operator", tier.name), e),
    };
    if let Some(url) = &cli.nats_url {
        cfg.nats.url.clone_from(url);
    }
    cfg.state_dir = app::absolute(&cfg.state_dir);
    let metrics_addr = cfg.metrics_addr(tier.grpc_port).ok().flatten();
    let listen = match cfg.validate(tier.grpc_port) {
        Ok(a) => a,
        Err(e) => return app::config_exit(&format!("{}-operator", tier.name), e),
    };
    let configured = cfg.labels.get(infra_bus::facts::ADDR).cloned();
    match addr::choose(
        configured.as_deref(),
        &addr::interfaces(),
        addr::default_route(),
        cfg.allow_public_addr,
    ) {
        Ok(Some(ip)) => {
            cfg.labels.insert(infra_bus::facts::ADDR.into(), ip.to_string());
        }
        Ok(None) => {}
        Err(e) => return app::config_exit(&format!("{}-operator", tier.name), e),
    }
    let mut bus_cfg = match cfg.nats.bus_config(
        format!("operator-{}@{}", tier.name, cfg.host),
        Duration::from_secs(cfg.heartbeat_ttl_secs),
    ) {
        Ok(b) => b,
        Err(e) => return app::config_exit(&format!("{}-operator", tier.name), e),
    };
    // Replies come to this host's own inbox prefix: the only one a host's
    // credential may subscribe to (infra_bus::auth).
    match infra_bus::Token::new("host", &cfg.host) {
        Ok(h) => bus_cfg.inbox_prefix = Some(infra_bus::auth::inbox_prefix(&h)),
        Err(e) => return app::config_exit(&format!("{}-operator", tier.name), format!("host: {e}")),
    }
    if cli.print_config {
        println!("{}", sanitized(&cfg));
        return ExitCode::SUCCESS;
    }
    let who = format!("{}-operator", tier.name);
    let (rt, telemetry) = match app::start(&who, &cfg.log, &format!("operator-{}", tier.name), &cfg.host) {
        Ok(started) => started,
        Err(code) => return code,
    };
    tracing::info!(
        tier = tier.name,
        config = %sanitized(&cfg),
        grpc = %listen,
        metrics = %metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        traces = telemetry.exporting(),
        "starting operator"
    );
    let result = rt.block_on(async move {
        let shutdown = CancellationToken::new();
        app::cancel_on_signals(shutdown.clone());
        let docker = docker::DockerClient::connect().await?;
        let bus = Bus::connect(&bus_cfg).await?.with_trace_context(trace::current);
        let listener = grpc::bind(listen).await?;
        let metrics = match metrics_addr {
            Some(a) => Metrics::Listener(metrics::bind("metrics_listen", a).await?),
            None => Metrics::Off,
        };
        run_with(tier, cfg, docker, bus, listener, metrics, shutdown).await
    });
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "operator stopped");
            eprintln!("{}-operator: {e}", tier.name);
            ExitCode::FAILURE
        }
    }
}

/// The configuration as JSON with credentials redacted, for the start log.
pub fn sanitized(cfg: &OperatorConfig) -> String {
    let mut c = cfg.clone();
    if c.nats.token.is_some() {
        c.nats.token = Some("<redacted>".into());
    }
    serde_json::to_string(&c).unwrap_or_default()
}

/// How [`run_with`] serves metrics.
#[derive(Debug)]
pub enum Metrics {
    /// Bind `metrics_listen` (or the tier's default); if that fails, warn
    /// and run without metrics (in-process tests run many operators of one
    /// tier on one machine, and metrics must never stop an operator).
    FromConfig,
    /// Serve on this listener (the binary binds it first, so a taken port
    /// is a start-up error that names the key).
    Listener(tokio::net::TcpListener),
    /// No metrics server.
    Off,
}

/// Runs an operator with everything it needs passed in, until `shutdown`;
/// then drains within `shutdown_grace_secs`. Containers keep running when
/// the operator stops. Metrics as [`Metrics::FromConfig`].
pub async fn run(
    tier: Tier,
    cfg: OperatorConfig,
    docker: docker::DockerClient,
    bus: Bus,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    run_with(tier, cfg, docker, bus, listener, Metrics::FromConfig, shutdown).await
}

/// As [`run`], with the metrics server chosen by the caller.
pub async fn run_with(
    tier: Tier,
    cfg: OperatorConfig,
    docker: docker::DockerClient,
    bus: Bus,
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let events = events::EventSink::new(bus.clone(), &cfg.host, tier.name, &format!("operator/{}", tier.name));
    let ctx = Arc::new(
        reconcile::Ctx::new(
            docker,
            bus.clone(),
            events,
            cfg.host.clone(),
            tier.name.to_owned(),
            cfg.state_dir.clone(),
            cfg.restart.policy(),
            Duration::from_secs(cfg.image_pull_timeout_secs),
            Duration::from_secs(cfg.stop_grace_secs),
            Duration::from_secs(cfg.resync_secs),
        )
        .with_addr(cfg.labels.get(infra_bus::facts::ADDR).cloned())
        .with_route_drain(Duration::from_millis(cfg.route_drain_ms)),
    );
    let grpc_addr = listener.local_addr()?.to_string();
    let tasks = TaskTracker::new();
    let facts = Facts::default();
    let metrics_listener = match metrics {
        Metrics::Listener(l) => Some(l),
        Metrics::Off => None,
        Metrics::FromConfig => match cfg.metrics_addr(tier.grpc_port) {
            Ok(Some(a)) => match metrics::bind("metrics_listen", a).await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "running without metrics");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "running without metrics");
                None
            }
        },
    };
    if let Some(l) = metrics_listener {
        let bound = l.local_addr()?;
        let at = metrics::advertised(bound, cfg.labels.get(infra_bus::facts::ADDR).map(String::as_str));
        tracing::info!(listen = %bound, advertised = %at, "metrics: serving /metrics");
        facts.set(infra_bus::facts::METRICS, at);
        let m = ctx.events.metrics().clone();
        tasks.spawn(metrics::serve(l, move || m.render(), shutdown.clone()));
        tasks.spawn(metrics::refresh_loop(
            ctx.clone(),
            ctx.events.metrics().clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(reconcile::run_controller(ctx.clone(), shutdown.clone()));
    tasks.spawn(images::answer_checks(ctx.clone(), shutdown.clone()));
    tasks.spawn(backup::answer_calls(ctx.clone(), shutdown.clone()));
    tasks.spawn(logs::answer_pulls(
        ctx.clone(),
        logs::Sessions::default(),
        shutdown.clone(),
    ));
    tasks.spawn(upgrade::answer_upgrades(ctx.clone(), shutdown.clone()));
    tasks.spawn(heartbeat_loop(
        ctx.clone(),
        cfg.clone(),
        grpc_addr,
        facts.clone(),
        shutdown.clone(),
    ));
    for ext in tier.extensions {
        tasks.spawn(ext(TierContext {
            bus: bus.clone(),
            docker: ctx.docker.clone(),
            host: cfg.host.clone(),
            tier: tier.name,
            state_dir: cfg.state_dir.clone(),
            labels: cfg.labels.clone(),
            facts: facts.clone(),
            reconcile: ctx.clone(),
            shutdown: shutdown.clone(),
        }));
    }
    let server = tasks.spawn(grpc::serve_operator(
        ctx.clone(),
        VERSION.to_owned(),
        listener,
        shutdown.clone(),
    ));
    tasks.close();

    shutdown.cancelled().await;
    if tokio::time::timeout(Duration::from_secs(cfg.shutdown_grace_secs), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "drain did not finish within {}s; exiting anyway",
            cfg.shutdown_grace_secs
        );
    }
    if server.is_finished()
        && let Ok(Err(e)) = server.await
    {
        tracing::warn!(error = %e, "gRPC server ended with an error");
    }
    tracing::info!("operator stopped");
    Ok(())
}

/// Host facts detected at start, merged under the configured labels.
pub fn host_facts() -> std::collections::BTreeMap<String, String> {
    let mut facts = std::collections::BTreeMap::new();
    if let Ok(n) = std::thread::available_parallelism() {
        facts.insert(infra_bus::facts::CPUS.into(), n.get().to_string());
    }
    if let Ok(info) = std::fs::read_to_string("/proc/meminfo")
        && let Some(kb) = info
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    {
        facts.insert(infra_bus::facts::MEMORY_BYTES.into(), (kb * 1024).to_string());
    }
    facts
}

async fn heartbeat_loop(
    ctx: Arc<reconcile::Ctx>,
    cfg: OperatorConfig,
    grpc_addr: String,
    facts: Facts,
    shutdown: CancellationToken,
) {
    let started_at = infra_proto::now();
    let detected = host_facts();
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.heartbeat_secs));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Detected facts, then the extensions' facts, then the configured
        // labels: a person's word wins.
        let mut labels = detected.clone();
        labels.extend(facts.snapshot());
        labels.extend(cfg.labels.clone());
        let hb = Heartbeat {
            host: ctx.host.clone(),
            tier: ctx.tier.clone(),
            version: VERSION.to_owned(),
            labels,
            started_at: Some(started_at),
            sent_at: Some(infra_proto::now()),
            grpc_addr: grpc_addr.clone(),
            services: ctx.desired_count().await as u32,
        };
        if let Err(e) = ctx.bus.heartbeat(&hb).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
    }
}
