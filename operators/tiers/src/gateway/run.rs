//! The gateway extension: watches the bus, renders the route table for
//! Traefik and Nginx, and loads the Nginx one into the running gateway
//! container after `nginx -t` accepts it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use infra_proto::bus::v1::{EventKind, ObservedService};
use operator_core::TierContext;

use super::table::{self, Problem};
use super::{nginx, render};

/// Changes arriving within this long of the first are rendered together.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// A full re-render even without a change: picks up new host addresses,
/// label changes and anything a watch missed.
const RESYNC: Duration = Duration::from_secs(5);
/// Bound on each bus listing.
const BUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Environment variable naming the gateway's Nginx service (default
/// `nginx`): its container on this host gets the rendered routes.
pub const NGINX_SERVICE_ENV: &str = "GATEWAY_NGINX_SERVICE";
/// The port the rendered Nginx server blocks listen on (the stack's).
const NGINX_LISTEN: u16 = 80;

/// What the extension remembers between renders.
struct State {
    dir: PathBuf,
    traefik: Option<String>,
    nginx: Option<String>,
    /// (container id, content) last loaded into Nginx, or refused by
    /// `nginx -t` (so the same bad content is not retried every resync).
    applied: Option<(String, String)>,
    /// The last content Nginx accepted (restored when a candidate fails).
    good: Option<String>,
    reported: BTreeSet<Problem>,
}

/// Runs until shutdown. Errors are logged and reported, never fatal.
pub async fn run(ctx: TierContext) {
    let nginx_service = std::env::var(NGINX_SERVICE_ENV).unwrap_or_else(|_| "nginx".into());
    let mut st = State {
        dir: ctx.state_dir.join("gateway"),
        traefik: None,
        nginx: None,
        applied: None,
        good: None,
        reported: BTreeSet::new(),
    };
    tracing::info!(dir = %st.dir.display(), nginx_service = %nginx_service, "gateway routes: rendering");
    let mut changes = operator_core::changes::ObservedChanges::new("gateway routes", RESYNC, DEBOUNCE);
    while changes.next(&ctx).await {
        render_once(&ctx, &nginx_service, &mut st).await;
    }
}

async fn render_once(ctx: &TierContext, nginx_service: &str, st: &mut State) {
    let t0 = Instant::now();
    let snap = match crate::reach::Snapshot::read(ctx, BUS_TIMEOUT).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("gateway: {e}; the routes stay as they are");
            return;
        }
    };
    let gateway_networks = snap.networks_of(ctx, nginx_service);
    let crate::reach::Snapshot {
        desired,
        observed,
        addrs,
        ..
    } = snap;
    let (tbl, mut problems) = table::build(table::Inputs {
        host: &ctx.host,
        desired: &desired,
        observed: &observed,
        addrs: &addrs,
        gateway_networks: &gateway_networks,
    });
    let traefik = render::traefik(&tbl);
    let (nginx_conf, more) = render::nginx(&tbl, NGINX_LISTEN);
    problems.extend(more);
    report(ctx, st, problems).await;

    if st.traefik.as_deref() != Some(traefik.as_str()) {
        match write_atomic(&st.dir.join("traefik/dynamic.yml"), &traefik).await {
            Ok(()) => {
                tracing::info!(
                    routes = tbl.routes.len(),
                    "gateway: Traefik dynamic configuration written"
                );
                st.traefik = Some(traefik);
            }
            Err(e) => tracing::warn!(error = %e, "gateway: cannot write the Traefik configuration"),
        }
    }
    if st.nginx.as_deref() != Some(nginx_conf.as_str()) {
        match write_atomic(&st.dir.join("nginx/routes.conf"), &nginx_conf).await {
            Ok(()) => st.nginx = Some(nginx_conf.clone()),
            Err(e) => tracing::warn!(error = %e, "gateway: cannot write the Nginx configuration"),
        }
    }
    let Some(container) = nginx_container(&observed, &ctx.host, ctx.tier, nginx_service) else {
        return;
    };
    if st.applied.as_ref() == Some(&(container.clone(), nginx_conf.clone())) {
        return;
    }
    let restore = st.good.clone().unwrap_or_default();
    match nginx::load(&ctx.docker, &container, &nginx_conf, &restore).await {
        Ok(took) => {
            tracing::info!(
                container = %short(&container),
                routes = tbl.routes.len(),
                reload_ms = took.as_millis() as u64,
                since_change_ms = t0.elapsed().as_millis() as u64,
                "gateway: nginx reloaded with the rendered routes"
            );
            st.good = Some(nginx_conf.clone());
        }
        Err(e) => {
            let reason =
                format!("gateway: the rendered Nginx routes were not loaded; the previous configuration stays: {e}");
            tracing::warn!(container = %short(&container), "{reason}");
            ctx.reconcile
                .events
                .emit(EventKind::ReconcileFailed, nginx_service, &container, 0, reason)
                .await;
            if !e.retry() {
                st.applied = Some((container, nginx_conf));
            }
            return;
        }
    }
    st.applied = Some((container, nginx_conf));
}

/// Publishes each problem once, when it first appears (not on every
/// render), as a `reconcile_failed` event on the service it concerns.
async fn report(ctx: &TierContext, st: &mut State, problems: Vec<Problem>) {
    let now: BTreeSet<Problem> = problems.into_iter().collect();
    for p in now.difference(&st.reported) {
        let reason = format!("gateway route skipped: label {}: {}", p.key, p.problem);
        tracing::warn!(service = %p.service, label = %p.key, "{reason}");
        ctx.reconcile
            .events
            .emit(EventKind::ReconcileFailed, &p.service, "", 0, reason)
            .await;
    }
    st.reported = now;
}

/// The running container of the gateway's Nginx on this host, from the
/// observed state (its `io.infra.service` label is what the operator
/// reports it under).
fn nginx_container(observed: &[ObservedService], host: &str, tier: &str, service: &str) -> Option<String> {
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

async fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, text).await?;
    tokio::fs::rename(&tmp, path).await
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
