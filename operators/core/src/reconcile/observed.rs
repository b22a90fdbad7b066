//! What the operator says of a service: events for what changed, and
//! its observed state.

use std::collections::HashSet;

use infra_proto::bus::v1::{ContainerStatus, DesiredService, EventKind, Health, ObservedService, ServiceSpec};

use crate::decide::{self, Container, ContainerState, RestartHistory};

use super::*;

pub(crate) fn to_status(spec: Option<&ServiceSpec>, c: &Container, restarts: u32) -> ContainerStatus {
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

pub(crate) async fn emit_changes(ctx: &Ctx, service: &str, containers: &[Container], st: &mut WorkerState) {
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
pub(crate) async fn publish_error(ctx: &Ctx, service: &str, st: &mut WorkerState, msg: String) {
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

pub(crate) async fn publish_observed(
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
pub(crate) fn has_routes(desired: Option<&DesiredService>) -> bool {
    desired
        .and_then(|d| d.spec.as_ref().or(d.previous.as_ref()))
        .is_some_and(|s| {
            s.labels.get("traefik.enable").is_some_and(|v| v == "true")
                || s.labels.keys().any(|k| k.starts_with("traefik.http.routers."))
        })
}
