//! Cross-host reach: a service reaches its dependency on another host by
//! the name it uses on one host (published ports on the private address,
//! `extra_hosts` to that address).

use std::collections::{BTreeSet, HashMap};

use infra_compose::Catalog;
use infra_proto::bus::v1::ServiceSpec;

use crate::convert::{self};
use infra_proto::reach::HostRef;

use crate::coordinator::*;
use crate::placement::{self};
use crate::plan::Prepared;

/// Cross-host reach, when the hosts say their private addresses (label
/// [`ADDR_LABEL`]):
///
/// - a service that others depend on publishes the ports it listens on
///   (`expose`, and the targets of `ports`) on its host's private address
///   only (`@addr`, which each operator replaces with its own), so it is
///   reachable from the other hosts and not beyond them;
/// - a service with a dependency placed on another host gets an
///   `extra_hosts` entry that maps the dependency's name to that host's
///   private address (`@host:<name>`, resolved by the operator from the
///   heartbeats), so it reaches it by the same name it uses on one host.
///
/// Both placeholders keep one spec for every host of a service, so a
/// rollout compares one spec hash everywhere. With no `addr` label on any
/// host (one host) nothing changes: Docker's DNS does it all.
pub(crate) fn cross_host_reach(catalog: &Catalog, hosts: &[placement::HostView], prepared: &mut [(String, Prepared)]) {
    let placed: HashMap<String, Vec<String>> = prepared
        .iter()
        .map(|(n, p)| (n.clone(), p.outcome.hosts.keys().cloned().collect()))
        .collect();
    for (name, p) in prepared.iter_mut() {
        let mine: Vec<String> = p.outcome.hosts.keys().cloned().collect();
        reach_spec(catalog, hosts, &placed, name, &mine, &mut p.spec);
    }
}

/// [`cross_host_reach`] for one service's spec, with `placed` the hosts of
/// every service and `mine` those of this one.
pub(crate) fn reach_spec(
    catalog: &Catalog,
    hosts: &[placement::HostView],
    placed: &HashMap<String, Vec<String>>,
    name: &str,
    mine: &[String],
    spec: &mut ServiceSpec,
) {
    let with_addr: BTreeSet<&str> = hosts
        .iter()
        .filter(|h| h.labels.get(ADDR_LABEL).is_some_and(|a| !a.is_empty()))
        .map(|h| h.name.as_str())
        .collect();
    if with_addr.is_empty() {
        return;
    }
    let Some(svc) = catalog.services.get(name) else { return };
    // Cluster members (etcd-1..3, pg-0..2) are written as single-replica
    // services of one Compose file that reach each other by name without
    // any `depends_on` among them. Only single-replica services count, so
    // a published port never has two replicas on one host; and only those
    // with ports to reach (`expose`), so a stack of unrelated
    // single services keeps its specs.
    let peers: Vec<&str> = if spec.replicas.max(1) == 1 && mine.len() <= 1 {
        catalog
            .services
            .values()
            .filter(|s| s.name != name && s.file == svc.file && !expose_ports(s).is_empty())
            .filter(|s| {
                placed
                    .get(&s.name)
                    .is_some_and(|h| h.len() == 1 && !mine.contains(&h[0]))
            })
            .map(|s| s.name.as_str())
            .collect()
    } else {
        Vec::new()
    };
    let needed = catalog
        .services
        .values()
        .any(|s| s.depends_on.iter().any(|d| d.service == name));
    // What its peers reach: its `expose` entries (the targets of `ports`
    // are published already, and publishing them again would take a port
    // another member publishes on this host).
    let to_publish = if needed {
        convert::service_ports(svc)
    } else if !peers.is_empty() {
        expose_ports(svc)
    } else {
        Vec::new()
    };
    // A port that another member of the stack, on the same host, exposes
    // too (etcd-1..3 all on one host) is published by neither: the two
    // would take one address and port, and they reach each other there
    // through Docker's DNS anyway. (A service that only maps the port,
    // `ports: 15432:5432`, publishes another one and takes nothing.)
    let on_my_hosts_too = |port: u16, proto: &str| {
        catalog.services.values().any(|s| {
            s.name != name
                && s.file == svc.file
                && placed.get(&s.name).is_some_and(|h| h.iter().any(|h| mine.contains(h)))
                && expose_ports(s).iter().any(|(p, pr)| *p == port && pr == proto)
        })
    };
    {
        for (port, proto) in to_publish {
            if on_my_hosts_too(port, &proto) {
                continue;
            }
            let have = spec.ports.iter().any(|x| {
                x.published == u32::from(port) && (x.protocol == proto || x.protocol.is_empty() && proto == "tcp")
            });
            if !have {
                spec.ports.push(infra_proto::bus::v1::PortSpec {
                    host_ip: infra_proto::reach::PRIVATE_ADDR.into(),
                    published: u32::from(port),
                    target: u32::from(port),
                    protocol: proto,
                });
            }
        }
    }
    for d in &svc.depends_on {
        let Some(dep_hosts) = placed.get(&d.service) else {
            continue;
        };
        let Some(dh) = dep_hosts.iter().find(|h| with_addr.contains(h.as_str())) else {
            continue;
        };
        // Only when some replica runs where the dependency does not.
        if mine.iter().all(|h| dep_hosts.contains(h)) {
            continue;
        }
        let entry = HostRef::new(&d.service, dh).entry();
        if !spec.extra_hosts.contains(&entry) {
            spec.extra_hosts.push(entry);
        }
    }
    for peer in peers {
        let Some(ph) = placed.get(peer).and_then(|h| h.first()) else {
            continue;
        };
        if !with_addr.contains(ph.as_str()) {
            continue;
        }
        let entry = HostRef::new(peer, ph).entry();
        if !spec.extra_hosts.contains(&entry) {
            spec.extra_hosts.push(entry);
        }
    }
}

/// A service's `expose` entries as (port, protocol): what the other members
/// of its stack reach it on.
pub(crate) fn expose_ports(svc: &infra_compose::Service) -> Vec<(u16, String)> {
    let mut out: Vec<(u16, String)> = svc
        .expose
        .iter()
        .filter_map(|e| {
            let (port, proto) = e.split_once('/').unwrap_or((e.as_str(), "tcp"));
            Some((port.trim().parse().ok()?, proto.trim().to_lowercase()))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use infra_compose::{LoadOptions, Tier};

    use super::*;

    /// A catalog of one stack file: etcd-1 and etcd-2 (peers, no
    /// depends_on between them) and a client that depends on etcd-1.
    fn catalog(dir: &std::path::Path) -> Catalog {
        let file = dir.join("docker-compose.yml");
        std::fs::write(
            &file,
            "services:\n  etcd-1:\n    image: e\n    expose: [\"2379\", \"2380\"]\n  etcd-2:\n    image: e\n    expose: [\"2379\", \"2380\"]\n  client:\n    image: c\n    deploy:\n      replicas: 2\n    depends_on: [etcd-1]\n",
        )
        .unwrap();
        infra_compose::load_files(&[(file, Tier::Data)], &LoadOptions::default()).unwrap()
    }

    fn hosts(with_addr: bool) -> Vec<placement::HostView> {
        ["h1", "h2"]
            .iter()
            .map(|h| placement::HostView {
                name: (*h).into(),
                labels: if with_addr {
                    [(ADDR_LABEL.to_string(), format!("10.0.0.{}", &h[1..]))].into()
                } else {
                    BTreeMap::new()
                },
                tiers: BTreeSet::new(),
            })
            .collect()
    }

    fn spec_of(name: &str, replicas: u32) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            replicas,
            ..Default::default()
        }
    }

    fn placed(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(n, hs)| ((*n).into(), hs.iter().map(|h| (*h).to_string()).collect()))
            .collect()
    }

    #[test]
    fn members_of_one_stack_on_other_hosts_reach_each_other_by_name_and_publish_their_peer_ports() {
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog(dir.path());
        let where_ = placed(&[("etcd-1", &["h1"]), ("etcd-2", &["h2"]), ("client", &["h1", "h2"])]);
        let mut s = spec_of("etcd-2", 1);
        reach_spec(&cat, &hosts(true), &where_, "etcd-2", &["h2".into()], &mut s);
        assert_eq!(s.extra_hosts, vec!["etcd-1:@host:h1".to_string()]);
        let published: Vec<(String, u32)> = s.ports.iter().map(|p| (p.host_ip.clone(), p.published)).collect();
        assert_eq!(published, vec![("@addr".into(), 2379), ("@addr".into(), 2380)]);
        // A multi-replica service of the same file is not a cluster member:
        // it keeps the depends_on reach only.
        let mut c = spec_of("client", 2);
        reach_spec(
            &cat,
            &hosts(true),
            &where_,
            "client",
            &["h1".into(), "h2".into()],
            &mut c,
        );
        assert_eq!(c.extra_hosts, vec!["etcd-1:@host:h1".to_string()]);
        assert!(c.ports.is_empty(), "{:?}", c.ports);
    }

    #[test]
    fn members_that_share_a_host_publish_none_of_the_ports_they_share() {
        // One host of two with an address carries etcd-1 and etcd-2: both
        // would publish 2379 and 2380 there; neither does.
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog(dir.path());
        let where_ = placed(&[("etcd-1", &["h1"]), ("etcd-2", &["h1"]), ("client", &["h1", "h2"])]);
        for member in ["etcd-1", "etcd-2"] {
            let mut s = spec_of(member, 1);
            reach_spec(&cat, &hosts(true), &where_, member, &["h1".into()], &mut s);
            assert!(s.ports.is_empty(), "{member}: {:?}", s.ports);
        }
        // A router beside a member, mapping 15432:5432, takes nothing from it.
        let file = dir.path().join("docker-compose.yml");
        let text = std::fs::read_to_string(&file).unwrap() + "  router:\n    image: r\n    ports: [\"15432:2379\"]\n";
        std::fs::write(&file, text).unwrap();
        let cat = infra_compose::load_files(&[(file, Tier::Data)], &LoadOptions::default()).unwrap();
        let where_ = placed(&[
            ("etcd-1", &["h1"]),
            ("etcd-2", &["h2"]),
            ("router", &["h1"]),
            ("client", &["h1", "h2"]),
        ]);
        let mut s = spec_of("etcd-1", 1);
        reach_spec(&cat, &hosts(true), &where_, "etcd-1", &["h1".into()], &mut s);
        let published: Vec<u32> = s.ports.iter().map(|p| p.published).collect();
        assert_eq!(published, vec![2379, 2380]);
    }

    #[test]
    fn single_services_of_one_stack_with_nothing_to_reach_keep_their_specs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("docker-compose.yml");
        std::fs::write(&file, "services:\n  db:\n    image: d\n  cache:\n    image: c\n").unwrap();
        let cat = infra_compose::load_files(&[(file, Tier::Data)], &LoadOptions::default()).unwrap();
        let where_ = placed(&[("db", &["h2"]), ("cache", &["h1"])]);
        let mut s = spec_of("db", 1);
        reach_spec(&cat, &hosts(true), &where_, "db", &["h2".into()], &mut s);
        assert_eq!(s, spec_of("db", 1));
    }

    #[test]
    fn a_member_with_published_ports_does_not_publish_their_targets_again_on_the_private_address() {
        // pg-router publishes 15432:5432 on host1, where pg-0 publishes
        // 5432 on the private address: the router must not take it too.
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog(dir.path());
        let file = dir.path().join("docker-compose.yml");
        let text = std::fs::read_to_string(&file).unwrap() + "  router:\n    image: r\n    ports: [\"15432:5432\"]\n";
        std::fs::write(&file, text).unwrap();
        drop(cat);
        let cat = infra_compose::load_files(&[(file, Tier::Data)], &LoadOptions::default()).unwrap();
        let where_ = placed(&[("etcd-1", &["h1"]), ("etcd-2", &["h2"]), ("router", &["h1"])]);
        let mut s = spec_of("router", 1);
        reach_spec(&cat, &hosts(true), &where_, "router", &["h1".into()], &mut s);
        assert!(s.ports.is_empty(), "{:?}", s.ports);
        assert_eq!(s.extra_hosts, vec!["etcd-2:@host:h2".to_string()]);
    }

    #[test]
    fn on_one_host_or_with_members_together_the_spec_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog(dir.path());
        let apart = placed(&[("etcd-1", &["h1"]), ("etcd-2", &["h2"])]);
        let mut s = spec_of("etcd-2", 1);
        reach_spec(&cat, &hosts(false), &apart, "etcd-2", &["h2".into()], &mut s);
        assert_eq!(s, spec_of("etcd-2", 1), "no addr label: nothing changes");
        let together = placed(&[("etcd-1", &["h1"]), ("etcd-2", &["h1"])]);
        let mut s = spec_of("etcd-2", 1);
        reach_spec(&cat, &hosts(true), &together, "etcd-2", &["h1".into()], &mut s);
        assert_eq!(s, spec_of("etcd-2", 1), "peers on the same host use Docker's DNS");
    }
}
