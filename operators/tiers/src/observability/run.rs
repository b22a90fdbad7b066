//! The scrape-target writer: watches the bus, computes the targets and
//! copies `targets.json` into this host's running Prometheus container
//! when it changed.
//!
//! Copied through the Docker API, like the gateway's Nginx routes (see
//! `gateway::nginx`): the operator's state directory is not the same path on
//! every host, and the API reaches the container wherever it runs. The
//! Prometheus container is `read_only`, so the file goes into a volume
//! mounted at [`TARGETS_DIR`] (Docker writes into volumes of a read-only
//! container, never into its root filesystem). Prometheus's file_sd picks
//! the new file up by itself: no reload.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use infra_proto::bus::v1::ObservedService;
use operator_core::TierContext;

use super::targets::{self, Problem};

/// Where `targets.json` goes in the Prometheus container (a volume: see
/// the module documentation; `prometheus.yml` reads `targets/*.json` here).
pub const TARGETS_DIR: &str = "/etc/prometheus/targets";
/// The file's name in [`TARGETS_DIR`].
pub const TARGETS_FILE: &str = "targets.json";
/// Environment variable naming the Prometheus service (default
/// `prometheus`): its container on this host gets the targets. Not
/// `INFRA_*`: the operator's configuration takes every `INFRA_*` variable
/// as a key and refuses unknown ones.
pub const PROMETHEUS_SERVICE_ENV: &str = "OBSERVABILITY_PROMETHEUS_SERVICE";
/// Environment variable listing the coordinators' metrics addresses,
/// comma-separated `[id=]host:port`. Coordinators publish no heartbeat on
/// the bus, so they are named here.
pub const COORDINATORS_ENV: &str = "OBSERVABILITY_COORDINATORS";
/// Changes arriving within this long of the first are taken together.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// A full recomputation even without a change: new heartbeats, host
/// addresses, anything a watch missed.
const RESYNC: Duration = Duration::from_secs(5);
/// Bound on each bus listing and on the copy into the container.
const TIMEOUT: Duration = Duration::from_secs(5);

struct State {
    /// (container id, content) last copied into Prometheus.
    applied: Option<(String, String)>,
    reported: BTreeSet<Problem>,
}

/// Runs until shutdown. Errors are logged, never fatal.
pub async fn run(ctx: TierContext) {
    let service = std::env::var(PROMETHEUS_SERVICE_ENV).unwrap_or_else(|_| "prometheus".into());
    let coordinators = targets::parse_coordinators(&std::env::var(COORDINATORS_ENV).unwrap_or_default());
    tracing::info!(prometheus_service = %service, coordinators = coordinators.len(), "scrape targets: writing");
    let mut st = State {
        applied: None,
        reported: BTreeSet::new(),
    };
    let mut changes = operator_core::changes::ObservedChanges::new("scrape targets", RESYNC, DEBOUNCE);
    while changes.next(&ctx).await {
        write_once(&ctx, &service, &coordinators, &mut st).await;
    }
}

async fn write_once(ctx: &TierContext, service: &str, coordinators: &[(String, String)], st: &mut State) {
    let t0 = Instant::now();
    let snap = match crate::reach::Snapshot::read(ctx, TIMEOUT).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("scrape targets: {e}; the targets stay as they are");
            return;
        }
    };
    let Some(container) = running(&snap.observed, &ctx.host, ctx.tier, service) else {
        return; // no Prometheus on this host: another host's operator writes
    };
    let networks = snap.networks_of(ctx, service);
    let crate::reach::Snapshot {
        desired,
        observed,
        heartbeats,
        addrs,
    } = snap;
    let (groups, problems) = targets::build(targets::Inputs {
        host: &ctx.host,
        desired: &desired,
        observed: &observed,
        heartbeats: &heartbeats,
        addrs: &addrs,
        prometheus_networks: &networks,
        coordinators,
    });
    let now: BTreeSet<Problem> = problems.into_iter().collect();
    let new: Vec<&Problem> = now.difference(&st.reported).collect();
    for p in new.iter().filter(|p| !p.unreachable_operator) {
        tracing::warn!(what = %p.what, host = %p.host, "scrape target skipped: {}", p.problem);
    }
    // Operators on loopback are what one machine runs by default: one line
    // for them all, saying what to do, not a warning each.
    let operators: Vec<String> = new
        .iter()
        .filter(|p| p.unreachable_operator)
        .map(|p| format!("{} on {}", p.what, p.host))
        .collect();
    if !operators.is_empty() {
        tracing::info!(
            "scrape targets: {} operator(s) not scraped, their metrics listen where Prometheus cannot reach them \
             (loopback): {}. To scrape them, set metrics_listen (INFRA_METRICS_LISTEN) to the host's private \
             address, or 0.0.0.0 with an addr label",
            operators.len(),
            operators.join(", ")
        );
    }
    st.reported = now;
    let text = targets::render(&groups);
    if st.applied.as_ref() == Some(&(container.clone(), text.clone())) {
        return;
    }
    match upload(ctx, &container, &text).await {
        Ok(()) => {
            tracing::info!(
                container = %short(&container),
                targets = groups.len(),
                since_change_ms = t0.elapsed().as_millis() as u64,
                "scrape targets: {TARGETS_DIR}/{TARGETS_FILE} written into Prometheus"
            );
            st.applied = Some((container, text));
        }
        Err(e) => tracing::warn!(container = %short(&container), "scrape targets: {e}; retrying at the next change"),
    }
}

async fn upload(ctx: &TierContext, container: &str, text: &str) -> Result<(), String> {
    ctx.docker
        .write_file(container, TARGETS_DIR, TARGETS_FILE, text.as_bytes(), TIMEOUT)
        .await
        .map_err(|e| {
            format!("{e} (is a volume mounted at {TARGETS_DIR}? the container's root filesystem is read-only)")
        })
}

/// The running container of `service` of this tier on this host.
fn running(observed: &[ObservedService], host: &str, tier: &str, service: &str) -> Option<String> {
    observed
        .iter()
        .find(|o| o.host == host && o.tier == tier && o.service == service)?
        .containers
        .iter()
        .filter(|c| {
            operator_core::decide::ContainerState::parse(&c.state) == operator_core::decide::ContainerState::Running
        })
        .min_by_key(|c| c.replica)
        .map(|c| c.id.clone())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
