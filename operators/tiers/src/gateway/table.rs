//! From what the bus says (desired specs with labels, observed health per
//! host, each host's private address) to the route table the renderers
//! write. Pure: the extension lists the bus and calls [`build`].

use std::collections::{BTreeMap, BTreeSet};

use infra_proto::bus::v1::{DesiredService, ObservedService};

use crate::reach;

use super::labels::{self, Backend, ForwardAuth, LabelError, Route};

/// A route problem the gateway reports (event and log) and works around by
/// skipping what it concerns.
pub type Problem = LabelError;

/// One replica a load balancer sends to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Server {
    /// An address or a container name.
    pub host: String,
    /// The port on it.
    pub port: u16,
    /// Where it is, for the rendered file's comments (`host2
    /// infra-grafana-1 3f2a..`): a recreated container changes it, so the
    /// output changes and Nginx re-resolves a container name.
    pub note: String,
}

/// The load balancers, by name, and the routes over them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// Routes whose backend has at least one healthy replica (or is
    /// Traefik-internal), by router name.
    pub routes: BTreeMap<String, Route>,
    /// Upstream name -> its healthy replicas (never empty).
    pub upstreams: BTreeMap<String, Vec<Server>>,
    /// Forward-auth middlewares by name, with the upstream that answers
    /// them (`None`: none of its replicas is healthy, so the routes it
    /// protects fail closed).
    pub auth: BTreeMap<String, (ForwardAuth, Option<String>)>,
}

impl Table {
    /// The upstream name of a route's backend (`None` for internal ones).
    pub fn upstream_of(route: &Route) -> Option<String> {
        match &route.backend {
            Backend::Port { name, .. } => Some(upstream_name(&route.service, name)),
            Backend::Internal(_) => None,
        }
    }

    /// The forward-auth middleware protecting `route`, if one does: a
    /// middleware reference whose name (before `@`) is defined with
    /// `forwardauth.*` labels, or is the seeds' `oauth2-proxy`.
    pub fn protection<'a>(&'a self, route: &Route) -> Option<&'a str> {
        route.middlewares.iter().find_map(|m| {
            let base = m.split('@').next().unwrap_or(m);
            self.auth
                .get_key_value(base)
                .map(|(k, _)| k.as_str())
                .or((base == labels::OAUTH2_PROXY_MIDDLEWARE).then_some(labels::OAUTH2_PROXY_MIDDLEWARE))
        })
    }
}

/// An upstream's name: the Traefik service name when it is the catalog
/// service's own, else both (two services may both call theirs `web`).
pub fn upstream_name(service: &str, lb: &str) -> String {
    if service == lb {
        service.to_owned()
    } else {
        format!("{service}_{lb}")
    }
}

/// What [`build`] reads.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// This host (the gateway's).
    pub host: &'a str,
    /// Desired state of every service on every host.
    pub desired: &'a [DesiredService],
    /// Observed state of every service on every host.
    pub observed: &'a [ObservedService],
    /// Host -> its private address (`addr` heartbeat label).
    pub addrs: &'a BTreeMap<String, String>,
    /// Docker networks the gateway's proxy container is on: a replica on
    /// this host on one of them is reached by container name.
    pub gateway_networks: &'a BTreeSet<String>,
}

/// The route table, and every problem met on the way (each skipped).
///
/// Replicas on another host are reached at that host's private address and
/// the port it publishes for the route's container port; replicas on this
/// host by container name on a network shared with the proxy (no published
/// port needed, as the seeds advise), else like the others.
pub fn build(inp: Inputs<'_>) -> (Table, Vec<Problem>) {
    let mut problems: BTreeSet<Problem> = BTreeSet::new();
    // Service -> its desired state per host, sorted by host.
    let mut by_service: BTreeMap<&str, Vec<&DesiredService>> = BTreeMap::new();
    for d in inp.desired {
        if let Some(spec) = &d.spec
            && !d.absent
        {
            by_service.entry(spec.name.as_str()).or_default().push(d);
        }
    }
    let observed: BTreeMap<(&str, &str), &ObservedService> = inp
        .observed
        .iter()
        .map(|o| ((o.host.as_str(), o.service.as_str()), o))
        .collect();

    let mut table = Table::default();
    let mut routes: Vec<Route> = Vec::new();
    for (service, mut ds) in by_service {
        ds.sort_by(|a, b| a.host.cmp(&b.host));
        let Some(spec) = ds[0].spec.as_ref() else { continue };
        let mut ports: Vec<u16> = spec.ports.iter().filter_map(|p| u16::try_from(p.target).ok()).collect();
        ports.sort_unstable();
        ports.dedup();
        let parsed = labels::parse(service, &spec.labels, &ports);
        problems.extend(parsed.errors);
        // Backends of this service: lb name -> port.
        let mut backends: BTreeMap<String, u16> = parsed
            .routes
            .iter()
            .filter_map(|r| match &r.backend {
                Backend::Port { name, port } => Some((name.clone(), *port)),
                Backend::Internal(_) => None,
            })
            .collect();
        for f in &parsed.forward_auth {
            backends.entry(format!("{}-auth", f.name)).or_insert(f.port);
        }
        let mut servers_of: BTreeMap<String, Vec<Server>> = BTreeMap::new();
        for (lb, port) in &backends {
            let key = format!("{}{lb}.loadbalancer.server.port", "traefik.http.services.");
            let mut servers = Vec::new();
            for d in &ds {
                let Some(o) = observed.get(&(d.host.as_str(), service)) else {
                    continue;
                };
                let from = reach::From {
                    host: inp.host,
                    networks: inp.gateway_networks,
                    addrs: inp.addrs,
                };
                for c in o.containers.iter().filter(|c| reach::serving(c)) {
                    let note = format!("{} {} {}", d.host, c.name, short(&c.id));
                    let problem = match reach::reach(from, d, c, *port) {
                        Ok((host, port)) => {
                            servers.push(Server { host, port, note });
                            continue;
                        }
                        Err(reach::Unreachable::NoAddr) => format!(
                            "host {} has no addr label (its private address): its replica is not routed",
                            d.host
                        ),
                        Err(reach::Unreachable::NotPublished) => format!(
                            "port {port} is not published on {}'s private address, so the gateway on {} \
                             cannot reach it (publish it: `ports: [\"{port}:{port}\"]`)",
                            d.host, inp.host
                        ),
                    };
                    problems.insert(Problem {
                        service: service.to_owned(),
                        key: key.clone(),
                        problem,
                    });
                }
            }
            servers.sort();
            servers.dedup_by(|a, b| a.host == b.host && a.port == b.port);
            if !servers.is_empty() {
                servers_of.insert(lb.clone(), servers);
            }
        }
        for f in parsed.forward_auth {
            let lb = format!("{}-auth", f.name);
            let up = servers_of.remove(&lb).map(|s| {
                let name = upstream_name(service, &lb);
                table.upstreams.insert(name.clone(), s);
                name
            });
            if let Some((other, _)) = table.auth.get(&f.name) {
                problems.insert(Problem {
                    service: service.to_owned(),
                    key: format!("traefik.http.middlewares.{}.forwardauth.address", f.name),
                    problem: format!("middleware {} is already defined by service {}", f.name, other.service),
                });
                continue;
            }
            table.auth.insert(f.name.clone(), (f, up));
        }
        for (lb, s) in servers_of {
            table.upstreams.insert(upstream_name(service, &lb), s);
        }
        routes.extend(parsed.routes);
    }
    for r in routes {
        if let Some(up) = Table::upstream_of(&r)
            && !table.upstreams.contains_key(&up)
        {
            continue; // no healthy replica: the route is not served
        }
        if let Some(other) = table.routes.get(&r.router) {
            problems.insert(Problem {
                service: r.service.clone(),
                key: format!("traefik.http.routers.{}.rule", r.router),
                problem: format!("router name {} is already used by service {}", r.router, other.service),
            });
            continue;
        }
        table.routes.insert(r.router.clone(), r);
    }
    (table, problems.into_iter().collect())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
pub(crate) mod tests {
    use infra_proto::bus::v1::Health;

    use super::*;
    pub(crate) use crate::reach::fixtures::{desired, observed};

    pub(crate) const GRAFANA: &[(&str, &str)] = &[
        ("traefik.enable", "true"),
        ("traefik.http.routers.grafana.rule", "Host(`grafana.localhost`)"),
        ("traefik.http.routers.grafana.entrypoints", "websecure"),
        ("traefik.http.routers.grafana.tls", "true"),
        ("traefik.http.services.grafana.loadbalancer.server.port", "3000"),
    ];

    pub(crate) fn build_on(
        host: &str,
        desired: &[DesiredService],
        observed: &[ObservedService],
    ) -> (Table, Vec<Problem>) {
        let addrs: BTreeMap<String, String> = [("host1", "10.0.0.1"), ("host2", "10.0.0.2")]
            .iter()
            .map(|(h, a)| ((*h).into(), (*a).into()))
            .collect();
        let nets: BTreeSet<String> = ["infra_infra_net".to_owned()].into();
        build(Inputs {
            host,
            desired,
            observed,
            addrs: &addrs,
            gateway_networks: &nets,
        })
    }

    #[test]
    fn a_replica_on_another_host_is_reached_at_its_private_address_and_published_port() {
        let (t, p) = build_on(
            "host1",
            &[desired("host2", "grafana", GRAFANA, &[(3300, 3000)])],
            &[observed("host2", "grafana", Health::Healthy)],
        );
        assert_eq!(p, vec![]);
        assert_eq!(t.upstreams["grafana"][0].host, "10.0.0.2");
        assert_eq!(t.upstreams["grafana"][0].port, 3300);
        assert!(t.routes.contains_key("grafana"));
    }

    #[test]
    fn a_replica_on_this_host_is_reached_by_container_name_without_a_published_port() {
        let (t, p) = build_on(
            "host1",
            &[desired("host1", "grafana", GRAFANA, &[])],
            &[observed("host1", "grafana", Health::Healthy)],
        );
        assert_eq!(p, vec![]);
        assert_eq!(t.upstreams["grafana"][0].host, "infra-grafana-1");
        assert_eq!(t.upstreams["grafana"][0].port, 3000);
    }

    #[test]
    fn an_unpublished_port_on_another_host_is_reported_and_the_route_is_not_served() {
        let (t, p) = build_on(
            "host1",
            &[desired("host2", "grafana", GRAFANA, &[])],
            &[observed("host2", "grafana", Health::Healthy)],
        );
        assert!(t.routes.is_empty());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].service, "grafana");
        assert_eq!(p[0].key, "traefik.http.services.grafana.loadbalancer.server.port");
        assert!(p[0].problem.contains("not published on host2"), "{}", p[0].problem);
    }

    #[test]
    fn only_running_healthy_replicas_are_routed() {
        for (health, routed) in [
            (Health::Healthy, true),
            (Health::Running, true),
            (Health::Starting, false),
            (Health::Unhealthy, false),
        ] {
            let (t, _) = build_on(
                "host1",
                &[desired("host1", "grafana", GRAFANA, &[])],
                &[observed("host1", "grafana", health)],
            );
            assert_eq!(t.routes.contains_key("grafana"), routed, "{health:?}");
        }
        let mut removed = desired("host1", "grafana", GRAFANA, &[]);
        removed.absent = true;
        let (t, _) = build_on("host1", &[removed], &[observed("host1", "grafana", Health::Healthy)]);
        assert!(t.routes.is_empty());
    }
}
