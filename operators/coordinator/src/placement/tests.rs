//! Unit tests of the parent module.

use super::*;

fn host(name: &str, labels: &[(&str, &str)]) -> HostView {
    HostView {
        name: name.into(),
        labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        tiers: ["gateway".to_string(), "data".into()].into(),
    }
}

fn rules(replicas: u32) -> Rules {
    Rules {
        tier: "gateway".into(),
        global: false,
        replicas,
        constraints: vec![],
        max_per_host: None,
        gpus: 0,
        stateful: false,
        reserve: Reservation::default(),
        spread: vec![],
        group: String::new(),
    }
}

fn three() -> Vec<HostView> {
    vec![
        host("h1", &[("zone", "a")]),
        host("h2", &[("zone", "b")]),
        host("h3", &[("zone", "b")]),
    ]
}

fn map(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(h, n)| ((*h).into(), *n)).collect()
}

#[test]
fn replicas_spread_one_per_host_before_any_host_gets_two() {
    let o = place(&rules(3), &three(), &BTreeMap::new(), &Usage::default());
    assert_eq!(o.hosts, map(&[("h1", 1), ("h2", 1), ("h3", 1)]));
    let o = place(&rules(5), &three(), &BTreeMap::new(), &Usage::default());
    assert_eq!(o.hosts, map(&[("h1", 2), ("h2", 2), ("h3", 1)]));
    assert_eq!(o.pending, 0);
    assert!(o.reason.is_empty());
}

#[test]
fn spreading_prefers_the_host_with_the_fewest_services_of_the_tier() {
    let usage = Usage {
        tier_load: HashMap::from([("h1".into(), 4), ("h2".into(), 0), ("h3".into(), 2)]),
        ..Default::default()
    };
    let o = place(&rules(1), &three(), &BTreeMap::new(), &usage);
    assert_eq!(o.hosts, map(&[("h2", 1)]));
}

#[test]
fn placement_is_sticky_and_scaling_moves_only_the_difference() {
    let current = map(&[("h3", 2)]);
    let o = place(&rules(3), &three(), &current, &Usage::default());
    assert_eq!(o.hosts, map(&[("h1", 1), ("h3", 2)]));
    // Scaling down takes from the host with the most first.
    let current = map(&[("h1", 1), ("h2", 1), ("h3", 2)]);
    let o = place(&rules(3), &three(), &current, &Usage::default());
    assert_eq!(o.hosts, map(&[("h1", 1), ("h2", 1), ("h3", 1)]));
    let o = place(&rules(1), &three(), &current, &Usage::default());
    assert_eq!(o.placed(), 1);
}

#[test]
fn constraints_filter_hosts_by_hostname_and_label_with_eq_and_ne() {
    let mut r = rules(2);
    r.constraints = vec![Constraint::parse("node.labels.zone == b").unwrap()];
    assert_eq!(
        place(&r, &three(), &BTreeMap::new(), &Usage::default()).hosts,
        map(&[("h2", 1), ("h3", 1)])
    );
    r.constraints = vec![Constraint::parse("node.hostname!=h2").unwrap()];
    assert_eq!(
        place(&r, &three(), &BTreeMap::new(), &Usage::default()).hosts,
        map(&[("h1", 1), ("h3", 1)])
    );
    // A missing label is "not equal".
    r.constraints = vec![Constraint::parse("node.labels.ssd != true").unwrap()];
    assert_eq!(place(&r, &three(), &BTreeMap::new(), &Usage::default()).placed(), 2);
}

#[test]
fn a_replica_on_a_host_that_no_longer_qualifies_moves() {
    let mut r = rules(1);
    r.constraints = vec![Constraint::parse("node.labels.zone == b").unwrap()];
    let o = place(&r, &three(), &map(&[("h1", 1)]), &Usage::default());
    assert_eq!(o.hosts, map(&[("h2", 1)]));
}

#[test]
fn an_unplaceable_service_is_pending_with_a_reason_that_names_the_constraint() {
    let mut r = rules(2);
    r.constraints = vec![Constraint::parse("node.labels.zone == c").unwrap()];
    let o = place(&r, &three(), &BTreeMap::new(), &Usage::default());
    assert!(o.hosts.is_empty());
    assert_eq!(o.pending, 2);
    assert!(o.reason.contains("no host satisfies"), "{}", o.reason);
    assert!(o.reason.contains("node.labels.zone == c"), "{}", o.reason);
    assert!(o.reason.contains("h1 label zone is \"a\""), "{}", o.reason);
}

#[test]
fn max_replicas_per_node_leaves_the_rest_pending_and_says_why() {
    let mut r = rules(4);
    r.max_per_host = Some(1);
    let o = place(&r, &three(), &BTreeMap::new(), &Usage::default());
    assert_eq!(o.placed(), 3);
    assert_eq!(o.pending, 1);
    assert!(o.reason.contains("3 of 4 replicas placed"), "{}", o.reason);
    assert!(o.reason.contains("max_replicas_per_node is 1"), "{}", o.reason);
    // It also caps what is kept.
    let o = place(&r, &three(), &map(&[("h1", 3)]), &Usage::default());
    assert_eq!(o.hosts, map(&[("h1", 1), ("h2", 1), ("h3", 1)]));
}

#[test]
fn global_services_run_once_on_every_eligible_host() {
    let mut r = rules(0);
    r.global = true;
    r.constraints = vec![Constraint::parse("engine.labels.zone == b").unwrap()];
    let o = place(&r, &three(), &BTreeMap::new(), &Usage::default());
    assert_eq!(o.hosts, map(&[("h2", 1), ("h3", 1)]));
    assert_eq!(o.pending, 0);
}

#[test]
fn hosts_without_the_tiers_operator_are_not_eligible() {
    let mut r = rules(1);
    r.tier = "ai".into();
    let o = place(&r, &three(), &BTreeMap::new(), &Usage::default());
    assert_eq!(o.pending, 1);
    assert!(o.reason.contains("no live ai operator on any host"), "{}", o.reason);
}

#[test]
fn gpu_services_go_only_where_enough_gpus_are_free() {
    let mut hosts = three();
    hosts[2].labels.insert(GPUS_LABEL.into(), "2".into());
    let mut r = rules(1);
    r.gpus = 1;
    let o = place(&r, &hosts, &BTreeMap::new(), &Usage::default());
    assert_eq!(o.hosts, map(&[("h3", 1)]));
    // Two GPUs: two replicas fit there, a third does not.
    r.replicas = 3;
    let o = place(&r, &hosts, &BTreeMap::new(), &Usage::default());
    assert_eq!(o.hosts, map(&[("h3", 2)]));
    assert_eq!(o.pending, 1);
    // GPUs used by others count.
    let usage = Usage {
        gpus_used: HashMap::from([("h3".into(), 2)]),
        ..Default::default()
    };
    r.replicas = 1;
    let o = place(&r, &hosts, &BTreeMap::new(), &usage);
    assert_eq!(o.pending, 1);
    assert!(o.reason.contains("h1 reports no GPUs (needs 1)"), "{}", o.reason);
    assert!(o.reason.contains("h3 0 of 2 GPUs free"), "{}", o.reason);
}

#[test]
fn cpu_and_memory_reservations_are_never_overbooked_and_the_reason_says_what_is_free() {
    let mut hosts = three();
    for h in &mut hosts {
        h.labels.insert(CPUS_LABEL.into(), "2".into());
        h.labels.insert(MEMORY_LABEL.into(), (4u64 << 30).to_string());
    }
    let mut r = rules(100).reserving(Reservation {
        nano_cpus: 500_000_000,
        memory: 1 << 30,
    });
    // Four half-CPU, 1 GiB replicas fit on each 2-CPU, 4 GiB host.
    let o = place(&r, &hosts, &BTreeMap::new(), &Usage::default());
    assert_eq!(o.hosts, map(&[("h1", 4), ("h2", 4), ("h3", 4)]));
    assert_eq!(o.pending, 88);
    assert!(o.short_of_room);
    assert!(o.reason.contains("12 of 100 replicas placed"), "{}", o.reason);
    assert!(
        o.reason.contains("each replica reserves 0.5 CPUs and 1024 MiB"),
        "{}",
        o.reason
    );
    assert!(
        o.reason.contains("h1 has 0 of 2 CPUs and 0 MiB of 4096 MiB free"),
        "{}",
        o.reason
    );
    // What others reserve counts, and what runs is kept only as far as
    // it fits.
    r.replicas = 3;
    let usage = Usage {
        reserved: HashMap::from([(
            "h1".to_string(),
            Reservation {
                nano_cpus: 1_500_000_000,
                memory: 0,
            },
        )]),
        ..Default::default()
    };
    let o = place(&r, &hosts, &map(&[("h1", 3)]), &usage);
    assert_eq!(o.hosts, map(&[("h1", 1), ("h2", 1), ("h3", 1)]));
    assert!(!o.short_of_room);
    // A host that reports nothing is not limited.
    let bare = vec![host("h9", &[])];
    assert_eq!(place(&r, &bare, &BTreeMap::new(), &Usage::default()).placed(), 3);
    // Pending for another reason is not "short of room".
    r.constraints = vec![Constraint::parse("node.labels.zone == c").unwrap()];
    assert!(!place(&r, &hosts, &BTreeMap::new(), &Usage::default()).short_of_room);
}

#[test]
fn a_stateful_service_stays_on_a_silent_host_and_a_stateless_one_moves() {
    let hosts = three();
    let current = map(&[("h9", 1)]);
    let mut r = rules(1);
    assert_eq!(place(&r, &hosts, &current, &Usage::default()).hosts, map(&[("h1", 1)]));
    r.stateful = true;
    assert_eq!(place(&r, &hosts, &current, &Usage::default()).hosts, map(&[("h9", 1)]));
}

#[test]
fn constraints_that_do_not_parse_say_what_is_wrong() {
    for (bad, want) in [
        ("node.labels.zone = a", "needs `==` or `!=`"),
        ("node.labels.zone ==", "no value"),
        ("node.role == manager", "no roles"),
        ("node.colour == red", "unknown attribute \"node.colour\""),
        ("node.labels. == x", "unknown attribute"),
    ] {
        let e = Constraint::parse(bad).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains(bad), "{bad}: {e}");
    }
}

#[test]
fn host_views_merge_every_operators_labels_and_tiers() {
    let hb = |tier: &str, labels: &[(&str, &str)]| Heartbeat {
        host: "h1".into(),
        tier: tier.into(),
        labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        ..Default::default()
    };
    let v = hosts_from(&[hb("data", &[("zone", "a")]), hb("ai", &[(GPUS_LABEL, "1")])]);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].gpus(), 1);
    assert_eq!(v[0].labels["zone"], "a");
    assert_eq!(v[0].tiers, ["ai".to_string(), "data".into()].into());
}

fn desired_on(host: &str, name: &str, tier: &str, replicas: u32, memory: i64) -> DesiredService {
    DesiredService {
        host: host.into(),
        spec: Some(ServiceSpec {
            name: name.into(),
            tier: tier.into(),
            replicas,
            resources: Some(infra_proto::bus::v1::Resources {
                memory_reservation: memory,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn the_ledger_counts_everything_but_the_service_being_placed() {
    let desired = vec![
        desired_on("a", "web", "gateway", 2, 100),
        desired_on("a", "db", "data", 1, 1000),
        desired_on("b", "ollama", "ai", 1, 0),
        desired_on("b", "proxy", "gateway", 1, 10),
        DesiredService {
            absent: true,
            ..desired_on("b", "gone", "gateway", 1, 5)
        },
    ];
    let records = vec![ServiceRecord {
        service: "ollama".into(),
        rules: Some(PlacementSpec {
            gpus: 2,
            ..Default::default()
        }),
        ..Default::default()
    }];
    let ledger = Ledger::from_state(&desired, &records);
    let u = ledger.usage_for("gateway", "web", "");
    // web itself is not counted; db is another tier (no spreading load) but
    // reserves memory; a removed service counts for nothing.
    assert_eq!(u.tier_load.get("a"), None);
    assert_eq!(u.tier_load.get("b"), Some(&1));
    assert_eq!(u.reserved["a"].memory, 1000);
    assert_eq!(u.reserved["b"].memory, 10);
    assert_eq!(u.gpus_used.get("b"), Some(&2));
    let u = ledger.usage_for("gateway", "proxy", "");
    assert_eq!(u.tier_load.get("a"), Some(&1));
    assert_eq!(u.reserved["a"].memory, 2 * 100 + 1000);

    // A deploy places web on b now: it leaves a and is counted on b.
    let mut ledger = ledger;
    ledger.set(
        "web",
        ("gateway", ""),
        0,
        Reservation {
            nano_cpus: 0,
            memory: 100,
        },
        &[("b".to_string(), 3)].into(),
    );
    let u = ledger.usage_for("gateway", "proxy", "");
    assert_eq!(u.tier_load.get("a"), None);
    assert_eq!(u.tier_load.get("b"), Some(&1));
    assert_eq!(u.reserved["a"].memory, 1000);
    assert_eq!(u.reserved["b"].memory, 300);

    // Without host a (a drain), nothing of a is counted.
    let u = ledger.without_host("a").usage_for("data", "other", "");
    assert!(!u.reserved.contains_key("a"));
}

/// Places the members of one group one after the other, as a deploy does,
/// each seeing where the ones before it went; returns each member's hosts.
fn place_group(names: &[&str], spread: &[&str], hosts: &[HostView]) -> Vec<(String, Vec<String>)> {
    let mut ledger = Ledger::default();
    let mut out = Vec::new();
    for n in names {
        let r = Rules {
            tier: "data".into(),
            spread: spread.iter().map(|s| (*s).to_owned()).collect(),
            group: "etcd".into(),
            ..rules(1)
        };
        let usage = ledger.usage_for("data", n, "etcd");
        let o = place(&r, hosts, &BTreeMap::new(), &usage);
        ledger.set(n, ("data", "etcd"), 0, Reservation::default(), &o.hosts);
        out.push(((*n).to_owned(), o.hosts.keys().cloned().collect()));
    }
    out
}

#[test]
fn members_of_a_group_take_one_host_each_and_share_one_host_when_there_is_one() {
    // Other data services on h1 would draw a plain spread away from it;
    // the group's own members decide.
    let hosts = vec![
        host("h1", &[("zone", "a")]),
        host("h2", &[("zone", "b")]),
        host("h3", &[("zone", "c")]),
    ];
    let placed = place_group(&["etcd-1", "etcd-2", "etcd-3"], &["zone"], &hosts);
    let mut used: Vec<String> = placed.iter().flat_map(|(_, h)| h.clone()).collect();
    used.sort();
    assert_eq!(used, ["h1", "h2", "h3"], "{placed:?}");
    // One host: all three there, none pending.
    let one = vec![host("h1", &[])];
    let placed = place_group(&["etcd-1", "etcd-2", "etcd-3"], &["zone"], &one);
    assert!(placed.iter().all(|(_, h)| h == &["h1"]), "{placed:?}");
}

#[test]
fn spread_goes_by_the_label_value_first_then_by_host() {
    // Two hosts in zone b, one in a: four members split two and two over
    // the zones, and the two in b over its two hosts.
    let hosts = vec![
        host("h1", &[("zone", "a")]),
        host("h2", &[("zone", "b")]),
        host("h3", &[("zone", "b")]),
    ];
    let placed = place_group(&["m1", "m2", "m3", "m4"], &["zone"], &hosts);
    let zone_of = |h: &str| if h == "h1" { "a" } else { "b" };
    let per_zone = |z: &str| placed.iter().filter(|(_, h)| zone_of(&h[0]) == z).count();
    assert_eq!((per_zone("a"), per_zone("b")), (2, 2), "{placed:?}");
    // In zone b the two members are on different hosts.
    let in_b: Vec<&String> = placed
        .iter()
        .map(|(_, h)| &h[0])
        .filter(|h| zone_of(h) == "b")
        .collect();
    assert_ne!(in_b[0], in_b[1], "{placed:?}");
}
