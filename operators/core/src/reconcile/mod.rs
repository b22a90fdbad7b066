//! The reconcile loop, written once for every tier.
//!
//! One worker per service owns that service's containers on this host and
//! converges them to the desired state: level-triggered (it starts from what
//! is desired and what runs, whatever events it missed), woken by desired
//! state changes, Docker events and a periodic resync.
//!
//! # Guarantees
//! - Only containers labelled as owned by this tier are ever touched.
//! - Named volumes are removed only when the desired state is marked absent
//!   with `remove_volumes` set.
//! - Until desired state has been read from the bus once, nothing is
//!   removed: an operator that starts while NATS is away leaves running
//!   containers alone.
//! - A reconcile error is reported (event `reconcile_failed`) and retried
//!   with backoff; it never stops the loop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use infra_bus::{Bus, Change};
use infra_proto::bus::v1::{DesiredService, EventKind, Health, ObservedService, ServiceSpec};
use tokio::sync::{RwLock, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::decide::{ContainerState, RestartHistory, RestartPolicy};
use crate::docker::{DockerClient, DockerError};
use crate::events::{EventSink, short};

mod configs;
mod make;
mod observed;
mod pass;
mod probes;
mod pull;
mod secrets;

#[allow(unused_imports)]
use configs::*;
use make::*;
use observed::*;
use pass::*;
use probes::*;
pub(crate) use pull::credentials;
pub(crate) use secrets::root_only_tree;
use secrets::*;

/// What the workers share.
pub struct Ctx {
    /// Docker driver.
    pub docker: DockerClient,
    /// The bus.
    pub bus: Bus,
    /// Event sink.
    pub events: EventSink,
    /// This host's id.
    pub host: String,
    /// This operator's tier.
    pub tier: String,
    /// Where secret files are written.
    pub state_dir: PathBuf,
    /// Restart budget.
    pub restart: RestartPolicy,
    /// Image pull timeout.
    pub pull_timeout: Duration,
    /// Default stop grace.
    pub stop_grace: Duration,
    /// Resync interval.
    pub resync: Duration,
    desired: RwLock<HashMap<String, DesiredService>>,
    desired_loaded: AtomicBool,
    observed: RwLock<BTreeMap<String, ObservedService>>,
    /// Early health probes, by service and container run: `true` once one
    /// passed.
    probes: ProbeResults,
    trigger: std::sync::OnceLock<mpsc::Sender<String>>,
    /// This host's private address (its `addr` label): what `@addr` in a
    /// port binding stands for.
    pub addr: Option<String>,
    /// How long a routed container is out of the observed state before it
    /// stops, so the gateway stops sending it requests first.
    pub route_drain: Duration,
    /// Every host's private address as its heartbeats last said it: a host
    /// that is down keeps its address (it comes back there), so a spec
    /// that names it still resolves.
    known_addrs: std::sync::Mutex<HashMap<String, String>>,
}

impl Ctx {
    /// Builds the shared context.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        docker: DockerClient,
        bus: Bus,
        events: EventSink,
        host: String,
        tier: String,
        state_dir: PathBuf,
        restart: RestartPolicy,
        pull_timeout: Duration,
        stop_grace: Duration,
        resync: Duration,
    ) -> Self {
        Self {
            docker,
            bus,
            events,
            host,
            tier,
            state_dir,
            restart,
            pull_timeout,
            stop_grace,
            resync,
            desired: RwLock::default(),
            desired_loaded: AtomicBool::new(false),
            observed: RwLock::default(),
            probes: Arc::default(),
            trigger: std::sync::OnceLock::new(),
            addr: None,
            route_drain: Duration::from_millis(1000),
            known_addrs: std::sync::Mutex::default(),
        }
    }

    /// Sets [`Ctx::route_drain`].
    #[must_use]
    pub fn with_route_drain(mut self, d: Duration) -> Self {
        self.route_drain = d;
        self
    }

    /// Sets this host's private address (see [`Ctx::addr`]).
    #[must_use]
    pub fn with_addr(mut self, addr: Option<String>) -> Self {
        self.addr = addr.filter(|a| !a.is_empty());
        self
    }

    /// The spec with its cross-host placeholders resolved: `@addr` in a
    /// port binding becomes this host's private address, `@host:<name>` in
    /// `extra_hosts` that host's (from its operators' heartbeats). The
    /// coordinator writes placeholders so that every host of a service
    /// gets the same spec (and spec hash). The environment gets this
    /// host's name ([`infra_proto::reach::HOST_NAME_ENV`]) and, when the
    /// service publishes ports on the private address (other hosts reach
    /// it there), that address ([`infra_proto::reach::HOST_ADDR_ENV`]),
    /// unless the spec sets them.
    pub async fn resolve(&self, spec: &ServiceSpec) -> Result<ServiceSpec, DockerError> {
        use infra_proto::reach::{HOST_ADDR_ENV, HOST_NAME_ENV, HostRef, is_private_addr};
        let mut out = spec.clone();
        out.environment
            .entry(HOST_NAME_ENV.to_owned())
            .or_insert_with(|| self.host.clone());
        let published_here = spec.ports.iter().any(|p| is_private_addr(&p.host_ip));
        if let (true, Some(addr)) = (published_here, &self.addr) {
            out.environment
                .entry(HOST_ADDR_ENV.to_owned())
                .or_insert_with(|| addr.clone());
        }
        let needs = published_here || spec.extra_hosts.iter().any(|e| HostRef::parse(e).is_some());
        if !needs {
            return Ok(out);
        }
        for p in out.ports.iter_mut().filter(|p| is_private_addr(&p.host_ip)) {
            p.host_ip = self.addr.clone().ok_or_else(|| {
                DockerError::Prepare(format!(
                    "service {:?}: port {} is to be published on this host's private address, but host {} has no \
                     `labels.addr` in its operator config",
                    spec.name, p.target, self.host
                ))
            })?;
        }
        if out.extra_hosts.iter().any(|e| HostRef::parse(e).is_some()) {
            let beats = self.bus.list_heartbeats().await.unwrap_or_default();
            let known = {
                let mut known = self
                    .known_addrs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for b in &beats {
                    if let Some(a) = b.labels.get(infra_bus::facts::ADDR).filter(|a| !a.is_empty()) {
                        known.insert(b.host.clone(), a.clone());
                    }
                }
                known.clone()
            };
            let mut running: Option<Vec<String>> = None;
            for e in out.extra_hosts.iter_mut() {
                let Some(HostRef { name, host }) = HostRef::parse(e) else {
                    continue;
                };
                // This host's own; else the host's as its heartbeats say
                // (or last said, while it is down); else the address this
                // service's running container has for the name (an
                // operator started while that host is down).
                let mut addr = if host == self.host {
                    self.addr.clone()
                } else {
                    known.get(&host).cloned()
                };
                if addr.is_none() && host != self.host {
                    if running.is_none() {
                        running = Some(self.running_extra_hosts(&spec.name).await);
                    }
                    addr = running
                        .iter()
                        .flatten()
                        .find_map(|x| x.strip_prefix(&format!("{name}:")).map(str::to_owned));
                }
                let addr = addr.ok_or_else(|| {
                    DockerError::Prepare(format!(
                        "service {:?}: cannot reach {name:?} on host {host}: no operator there publishes \
                         `labels.addr` (is the host up?)",
                        spec.name
                    ))
                })?;
                *e = format!("{name}:{addr}");
            }
        }
        Ok(out)
    }

    /// The `extra_hosts` of `service`'s containers here, as the engine has
    /// them (resolved: `name:address`).
    async fn running_extra_hosts(&self, service: &str) -> Vec<String> {
        let Ok(list) = self.docker.list_owned(&self.host, &self.tier, Some(service)).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for c in list {
            if let Ok(Some(full)) = self.docker.inspect_full(&c.id).await {
                out.extend(full.host_config.and_then(|h| h.extra_hosts).unwrap_or_default());
            }
        }
        out
    }

    /// Observed state of every service this operator owns, as last computed.
    pub async fn observed(&self) -> Vec<ObservedService> {
        self.observed.read().await.values().cloned().collect()
    }

    /// How many services are desired here.
    pub async fn desired_count(&self) -> usize {
        self.desired.read().await.values().filter(|d| !d.absent).count()
    }
}

/// Runs the controller until `shutdown` is cancelled.
pub async fn run_controller(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let (trigger_tx, mut trigger_rx) = mpsc::channel::<String>(1024);
    let _ = ctx.trigger.set(trigger_tx.clone());
    let tasks = TaskTracker::new();

    tasks.spawn(watch_desired(ctx.clone(), trigger_tx.clone(), shutdown.clone()));
    tasks.spawn(watch_docker(ctx.clone(), trigger_tx.clone(), shutdown.clone()));
    tasks.spawn(resync_loop(ctx.clone(), trigger_tx.clone(), shutdown.clone()));

    let mut workers: HashMap<String, mpsc::Sender<()>> = HashMap::new();
    loop {
        let service = tokio::select! {
            _ = shutdown.cancelled() => break,
            s = trigger_rx.recv() => match s { Some(s) => s, None => break },
        };
        let tx = workers.entry(service.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(1);
            tasks.spawn(worker(ctx.clone(), service.clone(), rx, shutdown.clone()));
            tx
        });
        // A full channel means a reconcile is already pending: coalesce.
        let _ = tx.try_send(());
    }
    drop(workers);
    tasks.close();
    tasks.wait().await;
}

async fn watch_desired(ctx: Arc<Ctx>, trigger: mpsc::Sender<String>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        // Watch first, then list, so no change falls between the two.
        let watch = ctx.bus.watch_desired(&ctx.host, &ctx.tier).await;
        let listed = ctx.bus.list_desired(Some((&ctx.host, &ctx.tier))).await;
        match (watch, listed) {
            (Ok(mut watch), Ok(list)) => {
                backoff = Duration::from_millis(200);
                let mut fresh: HashMap<String, DesiredService> = HashMap::new();
                for d in list {
                    if let Some(s) = d.spec.as_ref() {
                        fresh.insert(s.name.clone(), d);
                    }
                }
                let names: HashSet<String> = {
                    let mut cache = ctx.desired.write().await;
                    let mut names: HashSet<String> = cache.keys().cloned().collect();
                    names.extend(fresh.keys().cloned());
                    *cache = fresh;
                    names
                };
                ctx.desired_loaded.store(true, Ordering::SeqCst);
                for n in names {
                    let _ = trigger.send(n).await;
                }
                loop {
                    let change = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        c = watch.next() => c,
                    };
                    match change {
                        Some(Ok(Change::Put { value, .. })) => {
                            let Some(name) = value.spec.as_ref().map(|s| s.name.clone()) else {
                                continue;
                            };
                            ctx.desired.write().await.insert(name.clone(), value);
                            let _ = trigger.send(name).await;
                        }
                        Some(Ok(Change::Delete { key })) => {
                            if let Some((_, _, name)) = infra_bus::subject::parse_service_key(&key) {
                                ctx.desired.write().await.remove(name);
                                let _ = trigger.send(name.to_owned()).await;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "desired-state watch failed; re-listing");
                            break;
                        }
                        None => {
                            tracing::warn!("desired-state watch ended; re-listing");
                            break;
                        }
                    }
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot read desired state; keeping the last one seen");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        // Short: after a NATS restart the watch must be back within a
        // couple of seconds of the server, and a retry costs one request.
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn watch_docker(ctx: Arc<Ctx>, trigger: mpsc::Sender<String>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut events = Box::pin(ctx.docker.events(&ctx.host, &ctx.tier));
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = events.next() => e,
            };
            match ev {
                Some(Ok(ev)) => {
                    backoff = Duration::from_millis(200);
                    tracing::debug!(service = %ev.service, container = short(&ev.id), action = %ev.action, "docker event");
                    let _ = trigger.send(ev.service).await;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "docker event stream failed; reconnecting");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
        // Events may have been missed while disconnected: look at everything.
        resync_once(&ctx, &trigger).await;
    }
}

async fn resync_once(ctx: &Ctx, trigger: &mpsc::Sender<String>) {
    let mut names: HashSet<String> = ctx.desired.read().await.keys().cloned().collect();
    match ctx.docker.list_owned(&ctx.host, &ctx.tier, None).await {
        Ok(list) => {
            for c in list {
                if let Some(name) = c
                    .name
                    .strip_prefix("infra-")
                    .and_then(|n| n.rsplit_once('-'))
                    .map(|(s, _)| s.to_owned())
                {
                    names.insert(name);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "resync: cannot list containers"),
    }
    names.extend(ctx.observed.read().await.keys().cloned());
    for n in names {
        let _ = trigger.send(n).await;
    }
}

async fn resync_loop(ctx: Arc<Ctx>, trigger: mpsc::Sender<String>, shutdown: CancellationToken) {
    // The first pass adopts whatever already runs.
    resync_once(&ctx, &trigger).await;
    let mut tick = tokio::time::interval(ctx.resync);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => resync_once(&ctx, &trigger).await,
        }
    }
}

/// What a worker remembers between reconciles.
#[derive(Default)]
struct WorkerState {
    restarts: HashMap<u32, RestartHistory>,
    exhausted: HashSet<u32>,
    /// Last seen (state, health) per container id, to turn changes into events.
    seen: HashMap<String, (ContainerState, Option<String>)>,
    /// Why the service cannot be brought up, when it cannot.
    failure: Option<String>,
    last_published: Option<ObservedService>,
    health_since: Option<(Health, prost_types::Timestamp)>,
    reconcile_errors: u32,
    /// Containers already reported as strays.
    warned: HashSet<String>,
    /// The desired generation whose trace the reconciles join, and how many
    /// passes have joined it (bounded: a service that never settles must
    /// not grow its deploy's trace forever).
    traced: Option<(u64, u32)>,
    /// The removed entry's generation whose deletion this worker tried.
    tombstone_tried: Option<u64>,
}

/// Passes of one desired write that join its trace.
const TRACED_PASSES: u32 = 64;

enum Next {
    /// Nothing to do until something changes (the resync still looks).
    Idle,
    /// Look again after this long.
    After(Duration),
}

async fn worker(ctx: Arc<Ctx>, service: String, mut rx: mpsc::Receiver<()>, shutdown: CancellationToken) {
    let mut st = WorkerState::default();
    let mut wake: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rx.recv() => if r.is_none() { return },
            _ = async { match wake { Some(w) => tokio::time::sleep_until(w).await, None => std::future::pending().await } } => {}
        }
        let t0 = Instant::now();
        let span = reconcile_span(&ctx, &service, &mut st).await;
        let result = reconcile_once(&ctx, &service, &mut st).instrument(span.clone()).await;
        ctx.events.metrics().reconciled(t0.elapsed(), result.is_ok());
        // Settled: later passes (resyncs) are not part of the write's trace.
        if matches!(result, Ok(Next::Idle))
            && let Some((generation, _)) = st.traced
        {
            st.traced = Some((generation, TRACED_PASSES));
        }
        match result {
            Ok(Next::Idle) => {
                st.reconcile_errors = 0;
                wake = None;
            }
            Ok(Next::After(d)) => {
                st.reconcile_errors = 0;
                wake = Some(tokio::time::Instant::now() + d);
            }
            Err(e) => {
                st.reconcile_errors += 1;
                let delay = Duration::from_millis(500 * (1 << st.reconcile_errors.min(6)));
                let msg = e.to_string();
                ctx.events
                    .emit(EventKind::ReconcileFailed, &service, "", 0, msg.clone())
                    .await;
                publish_error(&ctx, &service, &mut st, msg).await;
                wake = Some(tokio::time::Instant::now() + delay);
            }
        }
    }
}

/// The span of one reconcile pass: a child of the trace of the desired
/// write it acts on (the coordinator's deploy, rollout step or scale),
/// from its first pass until it settles. Passes outside such a write get
/// no span, so resyncs do not make a trace each.
async fn reconcile_span(ctx: &Ctx, service: &str, st: &mut WorkerState) -> tracing::Span {
    let Some((generation, traceparent)) = ctx
        .desired
        .read()
        .await
        .get(service)
        .filter(|d| !d.traceparent.is_empty())
        .map(|d| (d.generation, d.traceparent.clone()))
    else {
        return tracing::Span::none();
    };
    let passes = match st.traced {
        Some((g, n)) if g == generation => n,
        _ => 0,
    };
    if passes >= TRACED_PASSES {
        return tracing::Span::none();
    }
    st.traced = Some((generation, passes + 1));
    let span = tracing::info_span!(
        "reconcile",
        service,
        host = %ctx.host,
        tier = %ctx.tier,
        generation,
        pass = passes + 1
    );
    crate::trace::set_parent(&span, &traceparent);
    span
}
