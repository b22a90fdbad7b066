//! Early health probes (see the module docs of [`apply_probes`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use infra_proto::bus::v1::ServiceSpec;
use tokio::sync::mpsc;

use crate::decide::{Container, ContainerState};
use crate::docker::DockerClient;

use super::*;

/// One run of a container: its id and when it last started. A container
/// that Docker restarts is a new run, whose health is not known until a
/// probe passes again.
pub(crate) type Run = (String, Option<(i64, i32)>);

pub(crate) fn run_of(c: &Container) -> Run {
    (c.id.clone(), c.started_at.map(|t| (t.seconds, t.nanos)))
}

/// Early-probe results by service, then run.
pub(crate) type ProbeResults = Arc<std::sync::Mutex<HashMap<String, HashMap<Run, bool>>>>;

/// Early health probes.
///
/// Docker Engine 20.10 runs a container's first health check one full
/// `interval` after start (Engine 25 added `start_interval` for this). So
/// while Docker still says `starting`, the operator runs the service's own
/// health test itself, every `start_interval` (500 ms when unset), and
/// counts the container healthy as soon as it passes: the same command,
/// the same verdict Docker would reach at its first check, without waiting
/// for it. Once Docker has a result of its own, Docker's result counts.
pub(crate) fn apply_probes(ctx: &Ctx, service: &str, spec: Option<&ServiceSpec>, containers: &mut [Container]) {
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
pub(crate) async fn probe(
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
