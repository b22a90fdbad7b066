//! From what the bus says (desired specs with labels, observed health per
//! host, each host's private address, the operators' heartbeats) to
//! Prometheus's file_sd `targets.json`. Pure: the extension lists the bus
//! and calls [`build`], then [`render`].
//!
//! Reach follows the gateway's rules ([`crate::reach`]): a replica on
//! Prometheus's host on a network Prometheus is on is scraped by container
//! name and container port (no published port needed); any other replica at
//! its host's private address (`addr` heartbeat label) and the port it
//! publishes there for the metrics port.

use std::collections::{BTreeMap, BTreeSet};

use infra_proto::bus::v1::{DesiredService, Heartbeat, ObservedService};

use crate::reach;
use serde::Serialize;

/// `prometheus.io/scrape`: `true` makes a service a target.
pub const SCRAPE_LABEL: &str = "prometheus.io/scrape";
/// `prometheus.io/port`: the container port its metrics are on.
pub const PORT_LABEL: &str = "prometheus.io/port";
/// `prometheus.io/path`: the metrics path (default `/metrics`).
pub const PATH_LABEL: &str = "prometheus.io/path";

/// One file_sd group: addresses with the labels Prometheus gives them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Group {
    /// `host:port` addresses.
    pub targets: Vec<String>,
    /// `host`, `tier`, `service`, `role` (`service`, `operator`,
    /// `coordinator`; not `kind`, which the operators' own series use),
    /// `replica` for a service, and `__metrics_path__` when not `/metrics`.
    pub labels: BTreeMap<String, String>,
}

/// Something that is not scraped, and why (logged once by the extension).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The service, or `<tier>-operator`.
    pub what: String,
    /// On which host.
    pub host: String,
    /// Why.
    pub problem: String,
    /// An operator whose metrics listen where Prometheus cannot reach
    /// them (the default on one machine: loopback). Expected, so said
    /// once for them all rather than as a warning each.
    pub unreachable_operator: bool,
}

/// What [`build`] reads.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// Prometheus's host (this operator's).
    pub host: &'a str,
    /// Desired state of every service on every host.
    pub desired: &'a [DesiredService],
    /// Observed state of every service on every host.
    pub observed: &'a [ObservedService],
    /// Every live operator's latest heartbeat.
    pub heartbeats: &'a [Heartbeat],
    /// Host -> its private address (`addr` heartbeat label).
    pub addrs: &'a BTreeMap<String, String>,
    /// Docker networks the Prometheus container is on.
    pub prometheus_networks: &'a BTreeSet<String>,
    /// Coordinators, as (id, `host:port` of their metrics).
    pub coordinators: &'a [(String, String)],
}

fn labels(host: &str, tier: &str, service: &str, role: &str) -> BTreeMap<String, String> {
    [("host", host), ("tier", tier), ("service", service), ("role", role)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Whether Prometheus in a container could reach this address: not a
/// loopback or unspecified one (those name the operator's own machine, or
/// nothing).
fn reachable(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !(host.is_empty()
        || host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified()))
}

/// The scrape targets, sorted, and every problem met (each skipped).
pub fn build(inp: Inputs<'_>) -> (Vec<Group>, Vec<Problem>) {
    let mut groups: BTreeSet<Group> = BTreeSet::new();
    let mut problems: BTreeSet<Problem> = BTreeSet::new();
    let observed: BTreeMap<(&str, &str), &ObservedService> = inp
        .observed
        .iter()
        .map(|o| ((o.host.as_str(), o.service.as_str()), o))
        .collect();
    for d in inp.desired.iter().filter(|d| !d.absent) {
        let Some(spec) = &d.spec else { continue };
        if spec.labels.get(SCRAPE_LABEL).map(String::as_str) != Some("true") {
            continue;
        }
        let problem = |p: String| Problem {
            what: spec.name.clone(),
            host: d.host.clone(),
            problem: p,
            unreachable_operator: false,
        };
        let Some(port) = spec.labels.get(PORT_LABEL).and_then(|p| p.trim().parse::<u16>().ok()) else {
            problems.insert(problem(format!(
                "label {PORT_LABEL} is {:?}: it must be the container port of the metrics",
                spec.labels.get(PORT_LABEL).map_or("missing", String::as_str)
            )));
            continue;
        };
        let path = spec.labels.get(PATH_LABEL).filter(|p| !p.is_empty());
        if path.is_some_and(|p| !p.starts_with('/')) {
            problems.insert(problem(format!("label {PATH_LABEL} must start with /")));
            continue;
        }
        let Some(o) = observed.get(&(d.host.as_str(), spec.name.as_str())) else {
            continue;
        };
        let from = reach::From {
            host: inp.host,
            networks: inp.prometheus_networks,
            addrs: inp.addrs,
        };
        for c in o.containers.iter().filter(|c| reach::serving(c)) {
            let address = match reach::reach(from, d, c, port) {
                Ok((host, port)) => format!("{host}:{port}"),
                Err(reach::Unreachable::NoAddr) => {
                    problems.insert(problem(format!(
                        "host {} has no addr label (its private address): not scraped",
                        d.host
                    )));
                    continue;
                }
                Err(reach::Unreachable::NotPublished) => {
                    problems.insert(problem(format!(
                        "metrics port {port} is not published on {}'s private address, so Prometheus on {} \
                         cannot reach it (publish it: `ports: [\"{port}:{port}\"]`)",
                        d.host, inp.host
                    )));
                    continue;
                }
            };
            let mut l = labels(&d.host, &spec.tier, &spec.name, "service");
            l.insert("replica".into(), c.replica.to_string());
            if let Some(p) = path.filter(|p| p.as_str() != "/metrics") {
                l.insert("__metrics_path__".into(), p.clone());
            }
            groups.insert(Group {
                targets: vec![address],
                labels: l,
            });
        }
    }
    for hb in inp.heartbeats {
        let what = format!("{}-operator", hb.tier);
        let Some(at) = hb.labels.get(infra_bus::facts::METRICS) else {
            continue; // metrics off, or an operator from before metrics
        };
        if !reachable(at) {
            problems.insert(Problem {
                what,
                host: hb.host.clone(),
                problem: format!(
                    "its metrics listen on {at}, which Prometheus cannot reach: set metrics_listen to the \
                     private address or 0.0.0.0 (with an addr label)"
                ),
                unreachable_operator: true,
            });
            continue;
        }
        groups.insert(Group {
            targets: vec![at.clone()],
            labels: labels(&hb.host, &hb.tier, &what, "operator"),
        });
    }
    for (id, at) in inp.coordinators {
        groups.insert(Group {
            targets: vec![at.clone()],
            labels: labels(id, "coordinator", "coordinator", "coordinator"),
        });
    }
    (groups.into_iter().collect(), problems.into_iter().collect())
}

/// `targets.json` as file_sd reads it (a JSON array of groups), one group
/// per line so a diff of two versions reads well.
pub fn render(groups: &[Group]) -> String {
    let mut out = String::from("[\n");
    for (i, g) in groups.iter().enumerate() {
        out.push_str("  ");
        out.push_str(&serde_json::to_string(g).unwrap_or_default());
        out.push_str(if i + 1 < groups.len() { ",\n" } else { "\n" });
    }
    out.push_str("]\n");
    out
}

/// Parses [`super::COORDINATORS_ENV`]: comma-separated `[id=]host:port`
/// (id defaults to the address).
pub fn parse_coordinators(value: &str) -> Vec<(String, String)> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('=') {
            Some((id, at)) => (id.trim().to_owned(), at.trim().to_owned()),
            None => (s.to_owned(), s.to_owned()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use infra_proto::bus::v1::Health;

    use super::*;
    use crate::reach::fixtures::{desired, observed};

    const SCRAPED: &[(&str, &str)] = &[(SCRAPE_LABEL, "true"), (PORT_LABEL, "9113")];

    fn heartbeat(host: &str, tier: &str, metrics: Option<&str>) -> Heartbeat {
        Heartbeat {
            host: host.into(),
            tier: tier.into(),
            labels: metrics
                .map(|m| [("metrics".to_owned(), m.to_owned())].into())
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    fn build_on(
        desired: &[DesiredService],
        observed: &[ObservedService],
        heartbeats: &[Heartbeat],
    ) -> (Vec<Group>, Vec<Problem>) {
        let addrs: BTreeMap<String, String> = [("host1", "10.0.0.1"), ("host2", "10.0.0.2")]
            .iter()
            .map(|(h, a)| ((*h).into(), (*a).into()))
            .collect();
        let nets: BTreeSet<String> = ["infra_infra_net".to_owned()].into();
        build(Inputs {
            host: "host1",
            desired,
            observed,
            heartbeats,
            addrs: &addrs,
            prometheus_networks: &nets,
            coordinators: &[("coordinator1".into(), "10.0.0.9:9460".into())],
        })
    }

    fn addresses(groups: &[Group]) -> Vec<&str> {
        groups
            .iter()
            .flat_map(|g| g.targets.iter().map(String::as_str))
            .collect()
    }

    #[test]
    fn a_service_on_another_host_is_scraped_at_its_private_address_and_published_port() {
        let (g, p) = build_on(
            &[desired("host2", "pg-exporter", SCRAPED, &[(19113, 9113)])],
            &[observed("host2", "pg-exporter", Health::Healthy)],
            &[],
        );
        assert_eq!(p, vec![]);
        let svc: Vec<&Group> = g.iter().filter(|g| g.labels["role"] == "service").collect();
        assert_eq!(svc.len(), 1);
        assert_eq!(svc[0].targets, vec!["10.0.0.2:19113"]);
        assert_eq!(svc[0].labels["host"], "host2");
        assert_eq!(svc[0].labels["tier"], "observability");
        assert_eq!(svc[0].labels["service"], "pg-exporter");
    }

    #[test]
    fn a_service_on_prometheus_host_is_scraped_by_container_name_without_a_published_port() {
        let (g, p) = build_on(
            &[desired("host1", "pg-exporter", SCRAPED, &[])],
            &[observed("host1", "pg-exporter", Health::Healthy)],
            &[],
        );
        assert_eq!(p, vec![]);
        assert!(addresses(&g).contains(&"infra-pg-exporter-1:9113"), "{g:?}");
    }

    #[test]
    fn an_unpublished_port_on_another_host_is_a_problem_and_no_target() {
        let (g, p) = build_on(
            &[desired("host2", "pg-exporter", SCRAPED, &[])],
            &[observed("host2", "pg-exporter", Health::Healthy)],
            &[],
        );
        assert!(!g.iter().any(|g| g.labels["role"] == "service"));
        assert_eq!(p.len(), 1);
        assert!(p[0].problem.contains("not published on host2"), "{}", p[0].problem);
    }

    #[test]
    fn only_serving_replicas_of_services_that_ask_to_be_scraped_are_targets() {
        for (health, scraped) in [
            (Health::Healthy, true),
            (Health::Running, true),
            (Health::Starting, false),
            (Health::Unhealthy, false),
        ] {
            let (g, _) = build_on(
                &[desired("host1", "x", SCRAPED, &[])],
                &[observed("host1", "x", health)],
                &[],
            );
            assert_eq!(g.iter().any(|g| g.labels["role"] == "service"), scraped, "{health:?}");
        }
        let (g, _) = build_on(
            &[desired("host1", "x", &[(PORT_LABEL, "9113")], &[])],
            &[observed("host1", "x", Health::Healthy)],
            &[],
        );
        assert!(
            !g.iter().any(|g| g.labels["role"] == "service"),
            "no scrape=true, no target"
        );
        let (_, p) = build_on(
            &[desired("host1", "x", &[(SCRAPE_LABEL, "true")], &[])],
            &[observed("host1", "x", Health::Healthy)],
            &[],
        );
        assert!(p[0].problem.contains(PORT_LABEL), "{p:?}");
    }

    #[test]
    fn a_custom_metrics_path_becomes_the_targets_metrics_path() {
        let labels = [(SCRAPE_LABEL, "true"), (PORT_LABEL, "80"), (PATH_LABEL, "/stats/prom")];
        let (g, _) = build_on(
            &[desired("host1", "web", &labels, &[])],
            &[observed("host1", "web", Health::Healthy)],
            &[],
        );
        let svc = g.iter().find(|g| g.labels["role"] == "service").unwrap();
        assert_eq!(svc.labels["__metrics_path__"], "/stats/prom");
    }

    #[test]
    fn operators_are_targets_from_their_heartbeats_and_loopback_ones_are_problems() {
        let (g, p) = build_on(
            &[],
            &[],
            &[
                heartbeat("host1", "observability", Some("10.0.0.1:9465")),
                heartbeat("host2", "data", Some("10.0.0.2:9463")),
                heartbeat("host2", "gateway", Some("127.0.0.1:9461")),
                heartbeat("host2", "ai", None),
            ],
        );
        let ops: Vec<(&str, &str, &str)> = g
            .iter()
            .filter(|g| g.labels["role"] == "operator")
            .map(|g| {
                (
                    g.targets[0].as_str(),
                    g.labels["host"].as_str(),
                    g.labels["tier"].as_str(),
                )
            })
            .collect();
        assert_eq!(
            ops,
            vec![
                ("10.0.0.1:9465", "host1", "observability"),
                ("10.0.0.2:9463", "host2", "data")
            ]
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].what, "gateway-operator");
        let coord = g.iter().find(|g| g.labels["role"] == "coordinator").unwrap();
        assert_eq!(coord.targets, vec!["10.0.0.9:9460"]);
        assert_eq!(coord.labels["host"], "coordinator1");
    }

    #[test]
    fn the_rendering_is_a_file_sd_json_array_of_targets_and_labels() {
        let (g, _) = build_on(
            &[desired("host2", "pg-exporter", SCRAPED, &[(19113, 9113)])],
            &[observed("host2", "pg-exporter", Health::Healthy)],
            &[heartbeat("host2", "data", Some("10.0.0.2:9463"))],
        );
        let text = render(&g);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 3, "{text}");
        for item in arr {
            assert!(item["targets"].as_array().is_some_and(|t| t.len() == 1), "{item}");
            for k in ["host", "tier", "service"] {
                assert!(item["labels"][k].is_string(), "{k} in {item}");
            }
        }
        assert_eq!(render(&[]), "[\n]\n");
        assert!(serde_json::from_str::<serde_json::Value>(&render(&[])).is_ok());
    }

    #[test]
    fn coordinators_are_parsed_with_or_without_an_id() {
        assert_eq!(
            parse_coordinators(" c1=10.0.0.9:9460 , 10.0.0.8:9460,"),
            vec![
                ("c1".to_owned(), "10.0.0.9:9460".to_owned()),
                ("10.0.0.8:9460".to_owned(), "10.0.0.8:9460".to_owned())
            ]
        );
    }
}
