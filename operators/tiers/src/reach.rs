//! How something running in a container on one host (the gateway's proxy,
//! Prometheus) reaches a replica of a service, on that host or another.
//! One rule, shared by the gateway's routes and the observability
//! operator's scrape targets (docs/multi-host.md, "Cross-host reach"):
//!
//! - a replica on the same host, on a Docker network the caller's container
//!   is on, by its container name and the container port: no published
//!   port needed, as the seeds advise;
//! - any other replica at its host's private address (the `addr`
//!   heartbeat label) and the port it publishes there for that container
//!   port (on all addresses, or on the private one: `@addr`).

use std::collections::{BTreeMap, BTreeSet};

use infra_proto::bus::v1::{ContainerStatus, DesiredService, Health};

/// Whether a container takes requests: running, and healthy or without a
/// health check.
pub fn serving(c: &ContainerStatus) -> bool {
    operator_core::decide::ContainerState::parse(&c.state) == operator_core::decide::ContainerState::Running
        && matches!(c.health(), Health::Healthy | Health::Running)
}

/// Where the caller is: its host, and the networks its container is on.
#[derive(Clone, Copy, Debug)]
pub struct From<'a> {
    /// The caller's host.
    pub host: &'a str,
    /// Docker networks of the caller's container.
    pub networks: &'a BTreeSet<String>,
    /// Host -> its private address (`addr` heartbeat label).
    pub addrs: &'a BTreeMap<String, String>,
}

/// Why a replica cannot be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreachable {
    /// Its host has no `addr` label.
    NoAddr,
    /// The port is not published on its host's private address.
    NotPublished,
}

/// The `(host, port)` at which `from` reaches container `c` of `d` (a
/// desired entry with its spec) on container port `port`.
pub fn reach(from: From<'_>, d: &DesiredService, c: &ContainerStatus, port: u16) -> Result<(String, u16), Unreachable> {
    let Some(spec) = d.spec.as_ref() else {
        return Err(Unreachable::NotPublished);
    };
    let shared = spec.networks.iter().any(|n| from.networks.contains(&n.name));
    if d.host == from.host && shared && !c.name.is_empty() {
        return Ok((c.name.clone(), port));
    }
    let addr = from
        .addrs
        .get(&d.host)
        .filter(|a| !a.is_empty())
        .ok_or(Unreachable::NoAddr)?;
    spec.ports
        .iter()
        .find(|p| {
            p.target == u32::from(port)
                && p.published != 0
                && (p.protocol.is_empty() || p.protocol == "tcp")
                && (matches!(p.host_ip.as_str(), "" | "0.0.0.0" | "::")
                    || infra_proto::reach::is_private_addr(&p.host_ip)
                    || p.host_ip == *addr)
        })
        .and_then(|p| u16::try_from(p.published).ok())
        .map(|pp| (addr.clone(), pp))
        .ok_or(Unreachable::NotPublished)
}

/// What the gateway and the scrape targets read from the bus on each pass:
/// the directory (every host's desired state, public part only: a host's
/// credential reads no other host's desired state), observed state, the
/// heartbeats, and each host's private address (this host's own from its
/// configured labels, so it is known before its first heartbeat).
pub struct Snapshot {
    /// The directory: desired state of every service on every host, with
    /// only the public part of its spec (`infra_proto::spec::public_part`).
    pub desired: Vec<DesiredService>,
    /// Observed state of every service on every host.
    pub observed: Vec<infra_proto::bus::v1::ObservedService>,
    /// Every operator's heartbeat.
    pub heartbeats: Vec<infra_proto::bus::v1::Heartbeat>,
    /// Host -> its private address (`addr` label).
    pub addrs: BTreeMap<String, String>,
}

impl Snapshot {
    /// Reads it, bounded by `timeout`. The error says what failed.
    pub async fn read(ctx: &operator_core::TierContext, timeout: std::time::Duration) -> Result<Self, String> {
        let listed = tokio::time::timeout(timeout, async {
            Ok::<_, infra_bus::BusError>((
                ctx.bus.list_directory().await?,
                ctx.bus.list_observed(None).await?,
                ctx.bus.list_heartbeats().await?,
            ))
        })
        .await;
        let (desired, observed, heartbeats) = match listed {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(format!("cannot read the bus: {e}")),
            Err(_) => return Err("reading the bus timed out".into()),
        };
        let mut addrs = BTreeMap::new();
        for hb in &heartbeats {
            if let Some(a) = hb.labels.get(infra_bus::facts::ADDR).filter(|a| valid_addr(a)) {
                addrs.insert(hb.host.clone(), a.clone());
            }
        }
        if let Some(a) = ctx.labels.get(infra_bus::facts::ADDR).filter(|a| valid_addr(a)) {
            addrs.insert(ctx.host.clone(), a.clone());
        }
        Ok(Self {
            desired,
            observed,
            heartbeats,
            addrs,
        })
    }

    /// The Docker networks of `service` of this operator's tier on its
    /// host (the caller's own container: the proxy, Prometheus).
    pub fn networks_of(&self, ctx: &operator_core::TierContext, service: &str) -> BTreeSet<String> {
        self.desired
            .iter()
            .filter(|d| d.host == ctx.host)
            .filter_map(|d| d.spec.as_ref())
            .filter(|s| s.name == service && s.tier == ctx.tier)
            .flat_map(|s| s.networks.iter().map(|n| n.name.clone()))
            .collect()
    }
}

/// An address fit to be written into a configuration (a host name or an
/// IP, with an optional port).
fn valid_addr(a: &str) -> bool {
    !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || ".:-".contains(c))
}

/// Specs and observed states for the tests of the gateway's table and the
/// scrape targets (both decide reach with [`reach`]).
#[cfg(test)]
pub(crate) mod fixtures {
    use infra_proto::bus::v1::{
        ContainerStatus, DesiredService, Health, NetworkSpec, ObservedService, PortSpec, ServiceSpec,
    };

    pub fn desired(host: &str, name: &str, labels: &[(&str, &str)], ports: &[(u32, u32)]) -> DesiredService {
        DesiredService {
            host: host.into(),
            spec: Some(ServiceSpec {
                name: name.into(),
                tier: "observability".into(),
                labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
                ports: ports
                    .iter()
                    .map(|(p, t)| PortSpec {
                        host_ip: String::new(),
                        published: *p,
                        target: *t,
                        protocol: "tcp".into(),
                    })
                    .collect(),
                networks: vec![NetworkSpec {
                    name: "infra_infra_net".into(),
                    aliases: vec![],
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn observed(host: &str, name: &str, health: Health) -> ObservedService {
        ObservedService {
            host: host.into(),
            tier: "observability".into(),
            service: name.into(),
            containers: vec![ContainerStatus {
                id: format!("{name}0123456789abcdef"),
                name: format!("infra-{name}-1"),
                replica: 1,
                state: "running".into(),
                health: health as i32,
                ..Default::default()
            }],
            ..Default::default()
        }
    }
}
