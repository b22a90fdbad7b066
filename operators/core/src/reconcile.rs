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
use infra_proto::bus::v1::{
    ContainerStatus, DesiredService, EventKind, Health, MountKind, ObservedService, ServiceSpec,
};
use tokio::sync::{RwLock, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::decide::{self, Container, ContainerState, Op, RestartHistory, RestartPolicy, RestartVerdict};
use crate::docker::{DockerClient, DockerError};
use crate::events::{EventSink, short};
use crate::spec;

/// One run of a container: its id and when it last started. A container
/// that Docker restarts is a new run, whose health is not known until a
/// probe passes again.
type Run = (String, Option<(i64, i32)>);

fn run_of(c: &Container) -> Run {
    (c.id.clone(), c.started_at.map(|t| (t.seconds, t.nanos)))
}

/// Early-probe results by service, then run.
type ProbeResults = Arc<std::sync::Mutex<HashMap<String, HashMap<Run, bool>>>>;

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
    /// gets the same spec (and spec hash).
    pub async fn resolve(&self, spec: &ServiceSpec) -> Result<ServiceSpec, DockerError> {
        use infra_proto::reach::{HostRef, is_private_addr};
        let needs = spec.ports.iter().any(|p| is_private_addr(&p.host_ip))
            || spec.extra_hosts.iter().any(|e| HostRef::parse(e).is_some());
        if !needs {
            return Ok(spec.clone());
        }
        let mut out = spec.clone();
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
            for e in out.extra_hosts.iter_mut() {
                let Some(HostRef { name, host }) = HostRef::parse(e) else {
                    continue;
                };
                let addr = if host == self.host {
                    self.addr.clone()
                } else {
                    beats
                        .iter()
                        .filter(|h| h.host == host)
                        .find_map(|h| h.labels.get(infra_bus::facts::ADDR).cloned())
                };
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

fn to_status(spec: Option<&ServiceSpec>, c: &Container, restarts: u32) -> ContainerStatus {
    ContainerStatus {
        id: c.id.clone(),
        name: c.name.clone(),
        replica: c.replica,
        state: c.state.as_str().to_owned(),
        health: decide::container_health(spec, c) as i32,
        started_at: c.started_at,
        image: c.image.clone(),
        spec_hash: c.spec_hash.clone(),
        restarts,
        exit_code: c.exit_code,
    }
}

/// What one pass acts on, read once at its start.
struct Pass {
    service: String,
    desired: Option<DesiredService>,
    /// The desired spec, when the service is wanted here.
    spec: Option<ServiceSpec>,
    /// Desired state has been read from the bus at least once: only then
    /// may anything be removed.
    loaded: bool,
    containers: Vec<Container>,
    now: Instant,
}

impl Pass {
    /// The spec replica `replica` must run (the previous one for replicas
    /// a rolling update has not reached).
    fn target(&self, replica: u32) -> Option<&ServiceSpec> {
        self.desired.as_ref().and_then(|d| decide::target_spec(d, replica))
    }

    fn grace(&self, ctx: &Ctx) -> Duration {
        self.spec.as_ref().map_or(ctx.stop_grace, |s| grace(ctx, s))
    }

    fn running(&self, id: &str) -> bool {
        self.containers
            .iter()
            .any(|c| c.id == id && c.state == ContainerState::Running)
    }
}

/// What the ops of a pass leave for its end.
struct Outcome {
    next: Next,
    /// Stopped in a stop-first handover: removed once the successor started.
    stopped: Vec<String>,
    /// Surplus, strays and what is no longer wanted: removed together at
    /// the end of the pass, a few at a time, so scaling down a hundred
    /// replicas does not take a hundred stop grace periods.
    surplus: Vec<(String, u32, decide::Removal)>,
    creates: usize,
}

async fn reconcile_once(ctx: &Ctx, service: &str, st: &mut WorkerState) -> Result<Next, DockerError> {
    let desired = ctx.desired.read().await.get(service).cloned();
    let spec = desired.as_ref().filter(|d| !d.absent).and_then(|d| d.spec.clone());
    let mut containers = ctx.docker.list_owned(&ctx.host, &ctx.tier, Some(service)).await?;
    apply_probes(ctx, service, spec.as_ref(), &mut containers);
    let pass = Pass {
        service: service.to_owned(),
        desired,
        spec,
        loaded: ctx.desired_loaded.load(Ordering::SeqCst),
        containers,
        now: Instant::now(),
    };
    emit_changes(ctx, service, &pass.containers, st).await;

    let mut ops = decide::decide(pass.desired.as_ref(), &pass.containers);
    if !pass.loaded {
        ops.retain(|op| !matches!(op, Op::Remove { .. }));
    }
    drain_routes(ctx, &pass, &ops, st).await;
    warn_strays(ctx, service, pass.desired.as_ref(), &pass.containers, &ops, st).await;
    let acted = !ops.is_empty();
    let mut out = Outcome {
        next: Next::Idle,
        stopped: Vec::new(),
        surplus: Vec::new(),
        creates: 0,
    };
    for op in ops {
        match op {
            Op::Create { replica, start } => create_replica(ctx, &pass, st, &mut out, replica, start).await?,
            Op::CreateNext { replica, beside, start } => {
                create_beside(ctx, &pass, st, &mut out, replica, &beside, start).await?;
            }
            Op::Recreate { id, replica } => recreate(ctx, &pass, st, &mut out, &id, replica).await?,
            Op::Start {
                id,
                replica,
                restart: false,
            } => {
                ctx.docker.start(&id).await?;
                ctx.events.emit(EventKind::Started, service, &id, replica, "").await;
            }
            Op::Start { id, replica, .. } | Op::Restart { id, replica } => {
                restart(ctx, &pass, st, &mut out, &id, replica).await?;
            }
            Op::Remove { id, replica, why } => remove(ctx, &pass, st, &mut out, id, replica, why).await?,
        }
    }
    for id in &out.stopped {
        ctx.docker.remove_stopped(id).await?;
    }
    remove_surplus(ctx, &pass, st, std::mem::take(&mut out.surplus)).await?;
    settle(ctx, pass, st, out.next, acted).await
}

/// The one failure path of a pass's ops: a container could not be made
/// (an image that cannot be had, a secret that cannot be written, a
/// config Docker refuses). Said once per distinct reason, kept as the
/// service's failure in observed state, tried again in 15 s.
async fn could_not_make(
    ctx: &Ctx,
    pass: &Pass,
    st: &mut WorkerState,
    out: &mut Outcome,
    id: &str,
    replica: u32,
    e: DockerError,
) {
    let msg = e.to_string();
    if st.failure.as_deref() != Some(msg.as_str()) {
        ctx.events
            .emit(EventKind::ReconcileFailed, &pass.service, id, replica, msg.clone())
            .await;
    }
    st.failure = Some(msg);
    out.next = Next::After(Duration::from_secs(15));
}

/// Running containers about to stop, of a service the gateway routes to:
/// taken out of the observed state first (the gateway renders routes from
/// it), and the gateway given time to reload, so no request is sent to a
/// container that is going away.
async fn drain_routes(ctx: &Ctx, pass: &Pass, ops: &[Op], st: &mut WorkerState) {
    let leaving: Vec<&str> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Remove { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .filter(|id| pass.running(id))
        .collect();
    if leaving.is_empty() || ctx.route_drain.is_zero() || !has_routes(pass.desired.as_ref()) {
        return;
    }
    let staying: Vec<Container> = pass
        .containers
        .iter()
        .filter(|c| !leaving.contains(&c.id.as_str()))
        .cloned()
        .collect();
    publish_observed(
        ctx,
        &pass.service,
        pass.desired.as_ref(),
        pass.spec.as_ref(),
        &staying,
        st,
    )
    .await;
    tokio::time::sleep(ctx.route_drain).await;
}

/// A new replica: created (and started, unless held). A few per pass, then
/// the worker looks again: the observed state is published in between,
/// and a newer desired state (a scale back down) takes over at once.
async fn create_replica(
    ctx: &Ctx,
    pass: &Pass,
    st: &mut WorkerState,
    out: &mut Outcome,
    replica: u32,
    start: bool,
) -> Result<(), DockerError> {
    let Some(spec) = pass.target(replica) else {
        return Ok(());
    };
    if out.creates >= CREATES_PER_PASS || superseded(ctx, &pass.service, pass.desired.as_ref()).await {
        out.next = Next::After(Duration::ZERO);
        return Ok(());
    }
    out.creates += 1;
    let id = match create(ctx, spec, replica, None).await {
        Ok(id) => id,
        Err(e) => {
            could_not_make(ctx, pass, st, out, "", replica, e).await;
            return Ok(());
        }
    };
    st.failure = None;
    st.seen.insert(id.clone(), (ContainerState::Created, None));
    let why = if start {
        ""
    } else {
        "held until its dependencies are ready"
    };
    ctx.events
        .emit(EventKind::Created, &pass.service, &id, replica, why)
        .await;
    if start {
        ctx.docker.start(&id).await?;
        ctx.events
            .emit(EventKind::Started, &pass.service, &id, replica, "")
            .await;
    }
    Ok(())
}

/// An update of a running replica: its new container made beside the old
/// one, which serves meanwhile; started now (start-first), or left created
/// so only `start` is left once the old one stops (stop-first).
async fn create_beside(
    ctx: &Ctx,
    pass: &Pass,
    st: &mut WorkerState,
    out: &mut Outcome,
    replica: u32,
    beside: &str,
    start: bool,
) -> Result<(), DockerError> {
    let Some(spec) = pass.target(replica) else {
        return Ok(());
    };
    // The new container needs a name of its own while the old one runs:
    // the plain name when the old one has the other.
    let plain = spec::container_name(spec, replica);
    let name = if beside == plain {
        format!("{plain}-{}", &infra_proto::spec::spec_hash(spec)[..6])
    } else {
        plain
    };
    let id = match create(ctx, spec, replica, Some(name)).await {
        Ok(id) => id,
        Err(e) => {
            could_not_make(ctx, pass, st, out, "", replica, e).await;
            return Ok(());
        }
    };
    st.failure = None;
    st.seen.insert(id.clone(), (ContainerState::Created, None));
    let why = if start {
        format!("start-first: beside {beside}")
    } else {
        format!("stop-first: created beside {beside}, starts once it stops")
    };
    ctx.events
        .emit(EventKind::Created, &pass.service, &id, replica, why)
        .await;
    if start {
        ctx.docker.start(&id).await?;
        ctx.events
            .emit(EventKind::Started, &pass.service, &id, replica, "")
            .await;
    }
    // Stop-first: the next pass removes the old one and starts this one.
    out.next = Next::After(Duration::from_millis(10));
    Ok(())
}

/// A container whose spec changed and that does not run: made again. The
/// image is pulled before anything stops, so a bad image never takes the
/// old one down.
async fn recreate(
    ctx: &Ctx,
    pass: &Pass,
    st: &mut WorkerState,
    out: &mut Outcome,
    id: &str,
    replica: u32,
) -> Result<(), DockerError> {
    let Some(spec) = pass.target(replica) else {
        return Ok(());
    };
    if let Err(e) = ctx.docker.ensure_image(&spec.image, ctx.pull_timeout).await {
        could_not_make(ctx, pass, st, out, id, replica, e).await;
        return Ok(());
    }
    let service = &pass.service;
    ctx.docker.remove(id, grace(ctx, spec)).await?;
    ctx.events
        .emit(EventKind::Removed, service, id, replica, "spec changed")
        .await;
    st.seen.remove(id);
    let new_id = create(ctx, spec, replica, None).await?;
    st.seen.insert(new_id.clone(), (ContainerState::Created, None));
    st.failure = None;
    st.restarts.remove(&replica);
    st.exhausted.remove(&replica);
    ctx.events
        .emit(
            EventKind::Recreated,
            service,
            &new_id,
            replica,
            format!("replaces {}", short(id)),
        )
        .await;
    ctx.docker.start(&new_id).await?;
    ctx.events.emit(EventKind::Started, service, &new_id, replica, "").await;
    Ok(())
}

/// An exited container started again, or an unhealthy one restarted,
/// within the restart budget and its backoff.
async fn restart(
    ctx: &Ctx,
    pass: &Pass,
    st: &mut WorkerState,
    out: &mut Outcome,
    id: &str,
    replica: u32,
) -> Result<(), DockerError> {
    let service = &pass.service;
    let unhealthy = pass.running(id);
    let history = st.restarts.entry(replica).or_default();
    match history.verdict(&ctx.restart, pass.now) {
        RestartVerdict::Now => {
            history.record(pass.now);
            let n = history.count();
            let reason = if unhealthy {
                format!("unhealthy; restart {n} of {} allowed", ctx.restart.budget)
            } else {
                let code = pass.containers.iter().find(|c| c.id == id).map_or(0, |c| c.exit_code);
                format!("exited with code {code}; restart {n} of {} allowed", ctx.restart.budget)
            };
            if unhealthy {
                ctx.docker.restart(id, pass.grace(ctx)).await?;
            } else {
                ctx.docker.start(id).await?;
            }
            ctx.events
                .emit(EventKind::Restarted, service, id, replica, reason)
                .await;
            out.next = Next::After(Duration::from_secs(2));
        }
        RestartVerdict::NotBefore(at) => {
            out.next = Next::After(at.saturating_duration_since(pass.now) + Duration::from_millis(10));
        }
        RestartVerdict::Exhausted => {
            if st.exhausted.insert(replica) {
                let reason = format!(
                    "{} restarts within {}s; not restarting until the window frees up",
                    ctx.restart.budget,
                    ctx.restart.window.as_secs()
                );
                ctx.events
                    .emit(EventKind::RestartBudgetExhausted, service, id, replica, reason)
                    .await;
            }
            out.next = Next::After(Duration::from_secs(30));
        }
    }
    Ok(())
}

/// A container to go. In a stop-first update the container created beside
/// it takes its place now (it is started next in this pass): the old one
/// is only stopped here and removed after that start, so the gap is a stop
/// and a start. Anything else joins the surplus removed at the end.
async fn remove(
    ctx: &Ctx,
    pass: &Pass,
    st: &mut WorkerState,
    out: &mut Outcome,
    id: String,
    replica: u32,
    why: decide::Removal,
) -> Result<(), DockerError> {
    let successor = pass
        .containers
        .iter()
        .find(|c| c.replica == replica && c.id != id && c.state == ContainerState::Created && !c.spec_hash.is_empty())
        .filter(|_| pass.running(&id));
    let Some(n) = successor else {
        out.surplus.push((id, replica, why));
        return Ok(());
    };
    ctx.docker.stop(&id, pass.grace(ctx)).await?;
    st.seen.remove(&id);
    ctx.events
        .emit(EventKind::Removed, &pass.service, &id, replica, why.to_string())
        .await;
    st.restarts.remove(&replica);
    st.exhausted.remove(&replica);
    ctx.events
        .emit(
            EventKind::Recreated,
            &pass.service,
            &n.id,
            replica,
            format!("replaces {}", short(&id)),
        )
        .await;
    out.stopped.push(id);
    Ok(())
}

/// Removes the surplus, [`PARALLEL_REMOVALS`] at a time, each with its
/// anonymous volumes; the first error is the pass's, after every removal
/// was tried.
async fn remove_surplus(
    ctx: &Ctx,
    pass: &Pass,
    st: &mut WorkerState,
    surplus: Vec<(String, u32, decide::Removal)>,
) -> Result<(), DockerError> {
    if surplus.is_empty() {
        return Ok(());
    }
    let g = pass.grace(ctx);
    let done: Vec<(String, u32, decide::Removal, Result<(), DockerError>)> =
        futures::stream::iter(surplus.into_iter().map(|(id, replica, why)| async move {
            let r = ctx.docker.remove(&id, g).await;
            (id, replica, why, r)
        }))
        .buffer_unordered(PARALLEL_REMOVALS)
        .collect()
        .await;
    let mut first_error = None;
    for (id, replica, why, r) in done {
        match r {
            Ok(()) => {
                st.seen.remove(&id);
                ctx.events
                    .emit(EventKind::Removed, &pass.service, &id, replica, why.to_string())
                    .await;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The end of a pass: what runs now, reported; for a service no longer
/// wanted whose containers are gone, its volumes (only if asked), secrets
/// and keys cleaned up; when to look again.
async fn settle(ctx: &Ctx, pass: Pass, st: &mut WorkerState, mut next: Next, acted: bool) -> Result<Next, DockerError> {
    let service = pass.service.as_str();
    let containers = if acted {
        let now = ctx.docker.list_owned(&ctx.host, &ctx.tier, Some(service)).await?;
        emit_changes(ctx, service, &now, st).await;
        now
    } else {
        pass.containers
    };
    if let Some(d) = pass.desired.as_ref().filter(|d| d.absent)
        && containers.is_empty()
    {
        if d.remove_volumes {
            for m in d
                .spec
                .iter()
                .flat_map(|s| s.mounts.iter())
                .filter(|m| m.kind() == MountKind::Volume)
            {
                ctx.docker.remove_volume(&m.source).await?;
                tracing::info!(service, volume = %m.source, "removed volume as requested");
            }
        }
        prune_secrets(ctx, service, None, &containers);
        if let Err(e) = ctx.bus.delete_desired(&ctx.host, &ctx.tier, service).await {
            tracing::warn!(error = %e, "could not delete desired state");
        }
    }
    if pass.loaded {
        prune_secrets(ctx, service, pass.desired.as_ref(), &containers);
    }
    publish_observed(ctx, service, pass.desired.as_ref(), pass.spec.as_ref(), &containers, st).await;
    let settling = containers.iter().any(|c| {
        matches!(decide::container_health(pass.spec.as_ref(), c), Health::Starting)
            || c.state == ContainerState::Restarting
    });
    if matches!(next, Next::Idle) && (settling || acted) {
        next = Next::After(Duration::from_secs(if settling { 5 } else { 1 }));
    }
    Ok(next)
}

/// Containers created in one pass before the worker looks again.
const CREATES_PER_PASS: usize = 8;
/// Containers stopped and removed at once when a pass removes several.
const PARALLEL_REMOVALS: usize = 8;

/// Whether the desired state this pass acts on has been replaced since it
/// was read: the pass stops creating, and the next one acts on the new
/// one.
async fn superseded(ctx: &Ctx, service: &str, read: Option<&DesiredService>) -> bool {
    let now = ctx.desired.read().await.get(service).map(|d| d.generation);
    now != read.map(|d| d.generation)
}

/// Says so, once per container, when a container carries this platform's
/// labels but was not made by it, or duplicates a replica: a warning event
/// (`stray_container`) and log naming it, its spec hash (and whether any
/// desired state here has that hash) and what is done with it.
async fn warn_strays(
    ctx: &Ctx,
    service: &str,
    desired: Option<&DesiredService>,
    containers: &[Container],
    ops: &[Op],
    st: &mut WorkerState,
) {
    let known: Vec<String> = desired
        .into_iter()
        .flat_map(|d| d.spec.iter().chain(d.previous.iter()))
        .map(infra_proto::spec::spec_hash)
        .collect();
    for op in ops {
        let (id, done) = match op {
            Op::Remove { id, why, .. } => (id, format!("removed ({why})")),
            Op::Recreate { id, .. } => (id, "replaced by a container made from the desired spec".to_owned()),
            _ => continue,
        };
        let Some(c) = containers.iter().find(|c| &c.id == id) else {
            continue;
        };
        let duplicate = matches!(
            op,
            Op::Remove {
                why: decide::Removal::Duplicate { .. },
                ..
            }
        );
        if (decide::made_here(c) && !duplicate) || !st.warned.insert(c.id.clone()) {
            continue;
        }
        let hash = if c.spec_hash.is_empty() {
            "no spec hash".to_owned()
        } else if known.contains(&c.spec_hash) {
            format!("spec hash {}", c.spec_hash)
        } else {
            format!("spec hash {}, which no desired state on this host has", c.spec_hash)
        };
        let origin = if decide::made_here(c) {
            "duplicates a replica this operator runs"
        } else {
            "carries this platform's labels but was not made by it"
        };
        let reason = format!(
            "container {} ({}) {origin} (replica {}, {hash}): {done}",
            c.name.trim_start_matches('/'),
            short(&c.id),
            c.replica
        );
        tracing::warn!(service, container = %c.name, spec_hash = %c.spec_hash, "{reason}");
        ctx.events
            .emit(EventKind::StrayContainer, service, &c.id, c.replica, reason)
            .await;
    }
}

/// Early health probes.
///
/// Docker Engine 20.10 runs a container's first health check one full
/// `interval` after start (Engine 25 added `start_interval` for this). So
/// while Docker still says `starting`, the operator runs the service's own
/// health test itself, every `start_interval` (500 ms when unset), and
/// counts the container healthy as soon as it passes: the same command,
/// the same verdict Docker would reach at its first check, without waiting
/// for it. Once Docker has a result of its own, Docker's result counts.
fn apply_probes(ctx: &Ctx, service: &str, spec: Option<&ServiceSpec>, containers: &mut [Container]) {
    let Some(hc) = spec.and_then(|s| s.healthcheck.as_ref()) else {
        return;
    };
    let cmd: Vec<String> = match hc.test.first().map(String::as_str) {
        Some("CMD") => hc.test[1..].to_vec(),
        Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), hc.test[1..].join(" ")],
        _ => return,
    };
    if cmd.is_empty() {
        return;
    }
    let every = hc
        .start_interval
        .as_ref()
        .map(|d| Duration::from_secs(d.seconds.max(0) as u64) + Duration::from_nanos(d.nanos.max(0) as u64))
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_millis(500));
    let timeout = hc
        .timeout
        .as_ref()
        .map(|d| Duration::from_secs(d.seconds.max(1) as u64))
        .unwrap_or(Duration::from_secs(10))
        .min(Duration::from_secs(30));
    let mut all = ctx.probes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let probes = all.entry(service.to_owned()).or_default();
    // A result holds for the run it was taken in: a container Docker
    // restarted is starting again until a probe of the new run passes.
    let live: HashSet<Run> = containers.iter().map(run_of).collect();
    probes.retain(|run, _| live.contains(run));
    for c in containers.iter_mut() {
        let starting = c.state == ContainerState::Running && c.health.as_deref() == Some("starting");
        if !starting {
            continue;
        }
        let run = run_of(c);
        match probes.get(&run) {
            Some(true) => c.health = Some("healthy".into()),
            Some(false) => {}
            None => {
                probes.insert(run.clone(), false);
                let (docker, cmd, service) = (ctx.docker.clone(), cmd.clone(), service.to_owned());
                let (trigger, results) = (ctx.trigger.get().cloned(), ctx.probes.clone());
                tokio::spawn(probe(docker, run, cmd, every, timeout, service, trigger, results));
            }
        }
    }
}

/// Runs the health test every `every` until it passes (then records it
/// and wakes the service's worker) or the run is over (the container is
/// no longer starting, or it was restarted: a new run gets a probe of its
/// own).
#[allow(clippy::too_many_arguments)]
async fn probe(
    docker: DockerClient,
    run: Run,
    cmd: Vec<String>,
    every: Duration,
    timeout: Duration,
    service: String,
    trigger: Option<mpsc::Sender<String>>,
    results: ProbeResults,
) {
    let id = run.0.clone();
    loop {
        match docker.inspect(&id).await {
            Ok(Some(c))
                if c.state == ContainerState::Running
                    && c.health.as_deref() == Some("starting")
                    && run_of(&c) == run => {}
            _ => return,
        }
        if let Ok(Some(0)) = docker.exec(&id, cmd.clone(), timeout).await {
            // Passed in this run only if the container was not restarted
            // while the test ran.
            match docker.inspect(&id).await {
                Ok(Some(c)) if run_of(&c) == run => {}
                _ => return,
            }
            {
                let mut map = results.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(passed) = map.get_mut(&service).and_then(|m| m.get_mut(&run)) {
                    *passed = true;
                }
            }
            if let Some(t) = trigger {
                let _ = t.send(service).await;
            }
            return;
        }
        tokio::time::sleep(every).await;
    }
}

fn grace(ctx: &Ctx, spec: &ServiceSpec) -> Duration {
    spec.stop_grace_period
        .as_ref()
        .filter(|d| d.seconds > 0)
        .map_or(ctx.stop_grace, |d| Duration::from_secs(d.seconds as u64))
}

async fn emit_changes(ctx: &Ctx, service: &str, containers: &[Container], st: &mut WorkerState) {
    for c in containers {
        let now = (c.state, c.health.clone());
        let before = st.seen.insert(c.id.clone(), now.clone());
        match before {
            None => {
                // First sight of a container this process did not create:
                // adopted (after an operator restart).
                if c.state == ContainerState::Running {
                    ctx.events.emit(EventKind::Adopted, service, &c.id, c.replica, "").await;
                }
                if c.health.as_deref() == Some("healthy") {
                    ctx.events.emit(EventKind::Healthy, service, &c.id, c.replica, "").await;
                }
            }
            Some(prev) if prev == now => {}
            Some((prev_state, prev_health)) => {
                if prev_state == ContainerState::Running && c.state != ContainerState::Running {
                    ctx.events
                        .emit(
                            EventKind::Died,
                            service,
                            &c.id,
                            c.replica,
                            format!("exit code {}", c.exit_code),
                        )
                        .await;
                }
                if c.state == ContainerState::Running && prev_health != c.health {
                    match c.health.as_deref() {
                        Some("healthy") => ctx.events.emit(EventKind::Healthy, service, &c.id, c.replica, "").await,
                        Some("unhealthy") => {
                            ctx.events
                                .emit(EventKind::Unhealthy, service, &c.id, c.replica, "health check failing")
                                .await;
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let live: HashSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
    st.seen.retain(|id, _| live.contains(id.as_str()));
    st.warned.retain(|id| live.contains(id.as_str()));
}

/// Makes a reconcile error visible in observed state (with the health it
/// had), so status and a waiting deploy say why instead of "no report".
async fn publish_error(ctx: &Ctx, service: &str, st: &mut WorkerState, msg: String) {
    let mut obs = st.last_published.clone().unwrap_or_else(|| ObservedService {
        host: ctx.host.clone(),
        tier: ctx.tier.clone(),
        service: service.to_owned(),
        health: Health::Starting as i32,
        ..Default::default()
    });
    obs.message = format!("reconcile failed (retrying): {msg}");
    // The report answers the write being worked on, so a waiting deploy
    // sees this failure as its own.
    if let Some(d) = ctx.desired.read().await.get(service) {
        obs.generation = d.generation;
    }
    if st.last_published.as_ref() == Some(&obs) {
        return;
    }
    let mut stamped = obs.clone();
    stamped.updated_at = Some(infra_proto::now());
    if ctx.bus.put_observed(&stamped).await.is_ok() {
        st.last_published = Some(obs);
    }
}

async fn publish_observed(
    ctx: &Ctx,
    service: &str,
    desired: Option<&DesiredService>,
    spec: Option<&ServiceSpec>,
    containers: &[Container],
    st: &mut WorkerState,
) {
    let gone = desired.is_none_or(|d| d.absent) && containers.is_empty();
    if gone {
        ctx.observed.write().await.remove(service);
        if st.last_published.take().is_some()
            && let Err(e) = ctx.bus.delete_observed(&ctx.host, &ctx.tier, service).await
        {
            tracing::warn!(error = %e, "could not delete observed state");
        }
        return;
    }
    let want = spec.map_or(0, |s| s.replicas.max(1));
    let statuses: Vec<ContainerStatus> = containers
        .iter()
        .map(|c| to_status(spec, c, st.restarts.get(&c.replica).map_or(0, RestartHistory::count)))
        .collect();
    let mut health = decide::service_health(spec, want, &statuses);
    let mut message = String::new();
    if let Some(f) = &st.failure {
        health = Health::Failed;
        message.clone_from(f);
    } else if !st.exhausted.is_empty() {
        health = Health::Failed;
        message = format!("restart budget exhausted for replica(s) {:?}", st.exhausted);
    }
    let since = match &st.health_since {
        Some((h, t)) if *h == health => *t,
        _ => {
            let t = infra_proto::now();
            st.health_since = Some((health, t));
            t
        }
    };
    let obs = ObservedService {
        host: ctx.host.clone(),
        tier: ctx.tier.clone(),
        service: service.to_owned(),
        spec_hash: spec.map(infra_proto::spec::spec_hash).unwrap_or_default(),
        generation: desired.map_or(0, |d| d.generation),
        desired_replicas: want,
        running_replicas: containers.iter().filter(|c| c.state == ContainerState::Running).count() as u32,
        healthy_replicas: statuses
            .iter()
            .filter(|s| matches!(s.health(), Health::Healthy | Health::Running | Health::Completed))
            .count() as u32,
        health: health as i32,
        containers: statuses,
        message,
        since: Some(since),
        updated_at: None,
    };
    ctx.observed.write().await.insert(service.to_owned(), obs.clone());
    if st.last_published.as_ref() == Some(&obs) {
        return;
    }
    let mut stamped = obs.clone();
    stamped.updated_at = Some(infra_proto::now());
    match ctx.bus.put_observed(&stamped).await {
        Ok(_) => st.last_published = Some(obs),
        Err(e) => tracing::warn!(error = %e, "could not publish observed state; will retry"),
    }
}

/// Whether the gateway routes to this service (it carries Traefik router
/// labels or `traefik.enable=true`).
fn has_routes(desired: Option<&DesiredService>) -> bool {
    desired
        .and_then(|d| d.spec.as_ref().or(d.previous.as_ref()))
        .is_some_and(|s| {
            s.labels.get("traefik.enable").is_some_and(|v| v == "true")
                || s.labels.keys().any(|k| k.starts_with("traefik.http.routers."))
        })
}

/// Creates one replica's container, named `name` or by
/// [`spec::container_name`].
async fn create(ctx: &Ctx, spec: &ServiceSpec, replica: u32, name: Option<String>) -> Result<String, DockerError> {
    ctx.docker.ensure_image(&spec.image, ctx.pull_timeout).await?;
    let mut network_ids = Vec::with_capacity(spec.networks.len());
    for n in &spec.networks {
        network_ids.push(ensure_network(ctx, &n.name).await?);
    }
    for m in spec
        .mounts
        .iter()
        .filter(|m| m.kind() == MountKind::Volume && !m.source.is_empty())
    {
        ctx.docker.ensure_volume(&m.source).await?;
    }
    write_secrets(ctx, spec).await?;
    let name = name.unwrap_or_else(|| spec::container_name(spec, replica));
    let resolved = ctx.resolve(spec).await?;
    let mut body = spec::container_config(&resolved, &ctx.host, replica, &ctx.state_dir);
    // The hash is the desired spec's, placeholders and all.
    if let Some(l) = body.labels.as_mut() {
        l.insert(crate::labels::SPEC_HASH.into(), infra_proto::spec::spec_hash(spec));
    }
    // Attach by network id (see `ensure_network`).
    if let (Some(first), Some(id)) = (spec.networks.first(), network_ids.first()) {
        if let Some(hc) = body.host_config.as_mut() {
            hc.network_mode = Some(id.clone());
        }
        if let Some(eps) = body
            .networking_config
            .as_mut()
            .and_then(|n| n.endpoints_config.as_mut())
            && let Some(ep) = eps.remove(&first.name)
        {
            eps.insert(id.clone(), ep);
        }
    }
    let extra: Vec<(String, Vec<String>)> = spec
        .networks
        .iter()
        .zip(&network_ids)
        .skip(1)
        .map(|(n, id)| {
            let mut aliases = vec![spec.name.clone()];
            aliases.extend(n.aliases.iter().cloned());
            (id.clone(), aliases)
        })
        .collect();
    // A leftover container of that name that we do not track (created by a
    // crashed earlier attempt) is in the way: it is ours by name and label.
    if let Some(old) = ctx.docker.inspect(&name).await? {
        ctx.docker.remove(&old.id, Duration::from_secs(1)).await?;
    }
    let id = ctx.docker.create(&name, body, &extra).await?;
    if let Err(e) = own_secrets(ctx, spec, &id).await {
        // Not started, and not left behind half-made.
        let _ = ctx.docker.remove_stopped(&id).await;
        return Err(e);
    }
    Ok(id)
}

/// Creates a network under a host-wide lock on the bus: the Docker engine
/// does not refuse a second network of the same name, and the operators of
/// every tier on a host create the shared networks at the same moment. A
/// container started on a duplicate keeps it alive and makes the name
/// ambiguous for everyone, so creation must be one at a time. Without the
/// bus (a partition) it goes ahead after a bounded wait; `ensure_network`
/// still removes a duplicate nobody uses.
async fn ensure_network(ctx: &Ctx, name: &str) -> Result<String, DockerError> {
    if let Some(id) = ctx.docker.network_id(name).await? {
        return Ok(id);
    }
    let what = format!("network-{name}");
    let holder = format!("{}/{}", ctx.host, ctx.tier);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ctx.bus.try_lock(&ctx.host, &what, &holder).await {
            Ok(true) => {
                let made = ctx.docker.ensure_network(name).await;
                if let Err(e) = ctx.bus.unlock(&ctx.host, &what).await {
                    tracing::warn!(error = %e, network = name, "could not release the network lock");
                }
                return made;
            }
            Ok(false) => {
                if let Some(id) = ctx.docker.network_id(name).await? {
                    return Ok(id);
                }
            }
            // Names the bus cannot carry, or no bus: do without the lock.
            Err(e) if e.kind() == infra_bus::BusErrorKind::InvalidName => return ctx.docker.ensure_network(name).await,
            Err(e) => tracing::debug!(error = %e, "network lock unavailable"),
        }
        if Instant::now() > deadline {
            return ctx.docker.ensure_network(name).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes the service's secret files, `<state_dir>/secrets/<service>/<name>`,
/// before its container is created (Docker wants a bind source to exist).
/// The tree is root's alone (0700), so no other user of the host reaches
/// a secret; a new file is root's, mode 0400, until [`own_secrets`] gives
/// it to the container's user.
async fn write_secrets(ctx: &Ctx, spec: &ServiceSpec) -> Result<(), DockerError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if spec.secrets.is_empty() {
        return Ok(());
    }
    let root = ctx.state_dir.join("secrets");
    let dir = root.join(&spec.name);
    for d in [&root, &dir] {
        std::fs::create_dir_all(d).map_err(|e| secret_error(&spec.name, "", format!("{}: {e}", d.display())))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| secret_error(&spec.name, "", format!("{}: {e}", d.display())))?;
    }
    for s in &spec.secrets {
        // A name is a file name here: never a path that leaves the tree.
        infra_bus::Token::new("secret", &s.name).map_err(|e| secret_error(&spec.name, &s.name, e.to_string()))?;
        let path = spec::secret_path(&ctx.state_dir, &spec.name, &s.name);
        let content = match ctx.bus.get_secret(&s.key).await {
            Ok(Some(c)) => c,
            // NATS away or the secret gone: a file written before still serves.
            Ok(None) | Err(_) if path.exists() => continue,
            Ok(None) => {
                return Err(secret_error(
                    &spec.name,
                    &s.name,
                    "it is not in the secrets bucket".into(),
                ));
            }
            Err(e) => return Err(secret_error(&spec.name, &s.name, e.to_string())),
        };
        if std::fs::read(&path).ok().as_deref() != Some(content.as_ref()) {
            let tmp = path.with_extension("tmp");
            let _ = std::fs::remove_file(&tmp);
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o400)
                    .open(&tmp)?;
                f.write_all(&content)?;
                f.sync_all()
            };
            write().map_err(|e| secret_error(&spec.name, &s.name, format!("{}: {e}", tmp.display())))?;
            std::fs::rename(&tmp, &path).map_err(|e| secret_error(&spec.name, &s.name, e.to_string()))?;
        }
    }
    Ok(())
}

/// Gives the service's secret files to the user container `id` runs as
/// (or to the `uid`/`gid` the Compose long syntax names), mode 0400 unless
/// the spec says otherwise: readable by that user only. A container that
/// runs as root gets 0444 (Docker's own default for secrets), because its
/// entrypoint commonly hands over to a service user that reads them too;
/// on the host, the 0700 tree keeps every other user out either way. Done
/// after create, before start, because the user is looked up in the
/// container's own `/etc/passwd`.
async fn own_secrets(ctx: &Ctx, spec: &ServiceSpec, id: &str) -> Result<(), DockerError> {
    use std::os::unix::fs::PermissionsExt;
    if spec.secrets.is_empty() {
        return Ok(());
    }
    let container_user = if spec.secrets.iter().any(|s| s.uid.is_none() || s.gid.is_none()) {
        ctx.docker.user_ids(id).await?
    } else {
        (0, 0)
    };
    for s in &spec.secrets {
        let path = spec::secret_path(&ctx.state_dir, &spec.name, &s.name);
        let (uid, gid) = (s.uid.unwrap_or(container_user.0), s.gid.unwrap_or(container_user.1));
        let mode = match s.mode {
            // A container that starts as root commonly steps down to a
            // service user of its own (postgres, mysql) that must read it
            // too: readable inside it, as Docker's own secrets are (0444).
            // The host tree stays root's alone.
            0 if uid == 0 => 0o444,
            0 => 0o400,
            m => m & 0o7777,
        };
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| {
            secret_error(
                &spec.name,
                &s.name,
                format!(
                    "cannot give {} to uid {uid} gid {gid}: {e} (the operator must run as root to hand secrets to a \
                     container's user)",
                    path.display()
                ),
            )
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| secret_error(&spec.name, &s.name, e.to_string()))?;
    }
    Ok(())
}

/// Deletes the secret files of this service that no container may need
/// any more: those that neither the desired spec nor the previous one of a
/// rollout in progress mounts, once every container runs one of those two.
/// A service no longer desired loses its whole directory when its last
/// container is gone.
fn prune_secrets(ctx: &Ctx, service: &str, desired: Option<&DesiredService>, containers: &[Container]) {
    let dir = ctx.state_dir.join("secrets").join(service);
    let specs: Vec<&ServiceSpec> = desired
        .filter(|d| !d.absent)
        .into_iter()
        .flat_map(|d| d.spec.iter().chain(d.previous.iter()))
        .collect();
    if specs.is_empty() {
        if containers.is_empty()
            && dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!(service, error = %e, "could not delete the secret files of a removed service");
        }
        return;
    }
    let hashes: Vec<String> = specs.iter().map(|s| infra_proto::spec::spec_hash(s)).collect();
    if containers.iter().any(|c| !hashes.contains(&c.spec_hash)) {
        return;
    }
    let keep: HashSet<&str> = specs
        .iter()
        .flat_map(|s| s.secrets.iter().map(|m| m.name.as_str()))
        .collect();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(name.as_str()) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => tracing::info!(service, secret = %name, "deleted a secret file no container uses"),
                Err(err) => tracing::warn!(service, secret = %name, error = %err, "could not delete a secret file"),
            }
        }
    }
}

fn secret_error(service: &str, secret: &str, reason: String) -> DockerError {
    DockerError::Prepare(format!("service {service}: secret {secret}: {reason}"))
}
