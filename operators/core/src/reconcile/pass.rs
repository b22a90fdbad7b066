//! One reconcile pass: read what is desired and what runs, decide, act
//! (small handlers with one failure path), settle.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use infra_proto::bus::v1::{DesiredService, EventKind, Health, MountKind, ServiceSpec};

use crate::decide::{self, Container, ContainerState, Op, RestartVerdict};
use crate::docker::DockerError;
use crate::events::short;
use crate::spec;

use super::*;

/// What one pass acts on, read once at its start.
pub(crate) struct Pass {
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
pub(crate) struct Outcome {
    next: Next,
    /// Stopped in a stop-first handover: removed once the successor started.
    stopped: Vec<String>,
    /// Surplus, strays and what is no longer wanted: removed together at
    /// the end of the pass, a few at a time, so scaling down a hundred
    /// replicas does not take a hundred stop grace periods.
    surplus: Vec<(String, u32, decide::Removal)>,
    creates: usize,
}

pub(crate) async fn reconcile_once(ctx: &Ctx, service: &str, st: &mut WorkerState) -> Result<Next, DockerError> {
    let mut desired = ctx.desired.read().await.get(service).cloned();
    let mut containers = ctx.docker.list_owned(&ctx.host, &ctx.tier, Some(service)).await?;
    // What runs is taken down only on the bus's word, read now: a view
    // that lost an entry (a listing that came back short at start, a watch
    // that missed a write) must not remove a service. Nothing runs, nothing
    // to confirm.
    let mut confirmed = true;
    if !containers.is_empty() && desired.as_ref().is_none_or(|d| d.absent) {
        (desired, confirmed) = confirm_removal(ctx, service, desired).await;
    }
    let spec = desired.as_ref().filter(|d| !d.absent).and_then(|d| d.spec.clone());
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
    if !pass.loaded || !confirmed {
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
pub(crate) async fn could_not_make(
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
pub(crate) async fn drain_routes(ctx: &Ctx, pass: &Pass, ops: &[Op], st: &mut WorkerState) {
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
pub(crate) async fn create_replica(
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
pub(crate) async fn create_beside(
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
pub(crate) async fn recreate(
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
    if let Err(e) = ctx.ensure_image(spec).await {
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
pub(crate) async fn restart(
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
pub(crate) async fn remove(
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
pub(crate) async fn remove_surplus(
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
pub(crate) async fn settle(
    ctx: &Ctx,
    pass: Pass,
    st: &mut WorkerState,
    mut next: Next,
    acted: bool,
) -> Result<Next, DockerError> {
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
        prune_configs(ctx, service, None, &containers);
    }
    if pass.loaded {
        prune_secrets(ctx, service, pass.desired.as_ref(), &containers);
        prune_configs(ctx, service, pass.desired.as_ref(), &containers);
    }
    publish_observed(ctx, service, pass.desired.as_ref(), pass.spec.as_ref(), &containers, st).await;
    // The removal is done (its observed state deleted above): the desired
    // entry goes too. A host's scoped credential may not write desired
    // state; the coordinator deletes such an entry once the observed
    // state is gone. So: once per entry, bounded.
    if let Some(d) = pass.desired.as_ref().filter(|d| d.absent)
        && containers.is_empty()
        && st.tombstone_tried != Some(d.generation)
    {
        st.tombstone_tried = Some(d.generation);
        match tokio::time::timeout(
            Duration::from_secs(2),
            ctx.bus.delete_desired(&ctx.host, &ctx.tier, service),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "desired state not deleted here; the coordinator deletes it"),
            Err(_) => tracing::debug!("desired state not deleted here (no answer); the coordinator deletes it"),
        }
    }
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
pub(crate) const CREATES_PER_PASS: usize = 8;

/// Containers stopped and removed at once when a pass removes several.
pub(crate) const PARALLEL_REMOVALS: usize = 8;

/// Whether the desired state this pass acts on has been replaced since it
/// was read: the pass stops creating, and the next one acts on the new
/// one.
pub(crate) async fn superseded(ctx: &Ctx, service: &str, read: Option<&DesiredService>) -> bool {
    let now = ctx.desired.read().await.get(service).map(|d| d.generation);
    now != read.map(|d| d.generation)
}

/// Says so, once per container, when a container carries this platform's
/// labels but was not made by it, or duplicates a replica: a warning event
/// (`stray_container`) and log naming it, its spec hash (and whether any
/// desired state here has that hash) and what is done with it.
pub(crate) async fn warn_strays(
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

/// Reads `service`'s desired state from the bus itself before a removal
/// (the cache holds none, or `absent`). When the bus holds a newer entry
/// than the cache, the cache takes it (and the pass goes on with it); when
/// the bus cannot be read, the removal waits (`false`).
async fn confirm_removal(ctx: &Ctx, service: &str, cached: Option<DesiredService>) -> (Option<DesiredService>, bool) {
    match ctx.bus.get_desired(&ctx.host, &ctx.tier, service).await {
        Ok(Some(stored)) if cached.as_ref().is_none_or(|c| stored.generation > c.generation) => {
            if !stored.absent {
                tracing::warn!(
                    service,
                    generation = stored.generation,
                    "the desired state of this service was missing from this operator's view; taken from the bus"
                );
            }
            ctx.desired.write().await.insert(service.to_owned(), stored.clone());
            (Some(stored), true)
        }
        Ok(_) => (cached, true),
        Err(e) => {
            tracing::warn!(service, error = %e, "cannot confirm on the bus that this service is no longer desired; nothing removed for now");
            (cached, false)
        }
    }
}
