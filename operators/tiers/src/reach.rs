//! How something running in a container on one host (the gateway's proxy,
//! Prometheus) reaches a replica of a service, on that host or another.
//! One rule, shared by the gateway's routes and the observability
//! operator's scrape targets (README "Several hosts"):
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
    c.state == "running" && matches!(c.health(), Health::Healthy | Health::Running)
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
                && (matches!(p.host_ip.as_str(), "" | "0.0.0.0" | "@addr" | "::") || p.host_ip == *addr)
        })
        .and_then(|p| u16::try_from(p.published).ok())
        .map(|pp| (addr.clone(), pp))
        .ok_or(Unreachable::NotPublished)
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
