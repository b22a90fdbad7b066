//! Making a replica's container: image, networks, volumes, secrets, catalog files,
//! placeholders, then create.

use std::time::{Duration, Instant};

use infra_proto::bus::v1::{MountKind, ServiceSpec};

use crate::docker::DockerError;
use crate::spec;

use super::*;

pub(crate) fn grace(ctx: &Ctx, spec: &ServiceSpec) -> Duration {
    spec.stop_grace_period
        .as_ref()
        .filter(|d| d.seconds > 0)
        .map_or(ctx.stop_grace, |d| Duration::from_secs(d.seconds as u64))
}

/// Creates one replica's container, named `name` or by
/// [`spec::container_name`].
pub(crate) async fn create(
    ctx: &Ctx,
    spec: &ServiceSpec,
    replica: u32,
    name: Option<String>,
) -> Result<String, DockerError> {
    ctx.ensure_image(spec).await?;
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
    write_configs(ctx, spec).await?;
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
pub(crate) async fn ensure_network(ctx: &Ctx, name: &str) -> Result<String, DockerError> {
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
