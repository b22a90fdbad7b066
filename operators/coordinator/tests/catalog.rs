//! The repository's own catalog (`compose/`): every stack parses and
//! interpolates, every reference resolves, no cycle, every
//! `service_healthy` target has a health check, and every service in every
//! profile becomes a spec; with and without the local image override.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use infra_compose::{LoadOptions, Selection, load_catalog};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn check(overrides: Vec<PathBuf>) -> usize {
    let env: BTreeMap<String, String> = BTreeMap::new();
    // No process environment: the catalog must plan on .env.example's
    // defaults alone.
    let opts = LoadOptions {
        env_file: Some(root().join("compose/.env.example")),
        env: env.clone(),
        overrides,
        secret_dirs: Vec::new(),
    };
    let catalog = load_catalog(&root().join("compose"), &opts).unwrap_or_else(|e| panic!("{e}"));
    let profiles: Vec<String> = catalog.profiles().into_iter().collect();
    let names = catalog
        .select(&Selection {
            all: true,
            tiers: vec![],
            profiles,
            services: vec![],
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let graph = catalog.graph(&names).unwrap_or_else(|e| panic!("{e}"));
    for name in graph.order() {
        infra_coordinator::convert::to_spec(&catalog, "infra", &catalog.services[name], &env)
            .unwrap_or_else(|e| panic!("{e}"));
        // Every placement constraint of the catalog parses.
        infra_coordinator::convert::placement_spec(&catalog.services[name]).unwrap_or_else(|e| panic!("{e}"));
    }
    names.len()
}

#[test]
fn the_whole_catalog_plans_in_every_profile() {
    let n = check(vec![]);
    assert!(n >= 12, "{n} services");
}

#[test]
fn the_whole_catalog_plans_with_the_local_image_override() {
    let n = check(vec![root().join("e2e/images/local.override.yml")]);
    assert!(n >= 12, "{n} services");
}

#[test]
fn every_named_selection_resolves() {
    let named = infra_coordinator::selections::load(&root().join("compose")).unwrap();
    assert!(named.contains_key("core"));
    let opts = LoadOptions {
        env_file: Some(root().join("compose/.env.example")),
        ..Default::default()
    };
    let catalog = load_catalog(&root().join("compose"), &opts).unwrap();
    for (name, sel) in named {
        let s = Selection {
            all: sel.all,
            tiers: sel.tiers.iter().map(|t| t.parse().unwrap()).collect(),
            profiles: sel.profiles.clone(),
            services: sel.services.clone(),
        };
        let mut names = catalog.select(&s).unwrap_or_else(|e| panic!("selection {name}: {e}"));
        for x in &sel.exclude {
            names.remove(x);
        }
        catalog
            .graph(&names)
            .unwrap_or_else(|e| panic!("selection {name}: {e}"));
    }
}

#[test]
fn each_deployment_size_plans_and_the_standard_size_orders_data_before_auth_before_sso() {
    let named = infra_coordinator::selections::load(&root().join("compose")).unwrap();
    let opts = LoadOptions {
        env_file: Some(root().join("compose/.env.example")),
        ..Default::default()
    };
    let catalog = load_catalog(&root().join("compose"), &opts).unwrap();
    let mut sizes = BTreeMap::new();
    for size in ["minimal", "standard", "ha"] {
        let sel = &named[size];
        let s = Selection {
            all: false,
            tiers: vec![],
            profiles: sel.profiles.clone(),
            services: sel.services.clone(),
        };
        let names = catalog.select(&s).unwrap_or_else(|e| panic!("{size}: {e}"));
        let graph = catalog.graph(&names).unwrap_or_else(|e| panic!("{size}: {e}"));
        sizes.insert(size, (names, graph));
    }
    assert!(sizes["minimal"].0.contains("mng-pg"), "keycloak brings its database");
    assert!(sizes["minimal"].0.len() < sizes["standard"].0.len());
    assert!(sizes["standard"].0.len() < sizes["ha"].0.len());
    for member in ["pg-0", "pg-1", "pg-2", "etcd-1", "galera-1", "valkey-node-5"] {
        assert!(sizes["ha"].0.contains(member), "ha has {member}");
    }
    let graph = &sizes["standard"].1;
    let level = |n: &str| {
        graph
            .levels()
            .iter()
            .position(|l| l.iter().any(|x| x == n))
            .unwrap_or_else(|| panic!("{n}"))
    };
    assert!(level("mng-pg") < level("keycloak"), "data before auth");
    assert!(
        level("keycloak") < level("oauth2-proxy"),
        "Keycloak before what needs it"
    );
    assert!(
        level("minio") < level("loki") && level("loki") < level("grafana"),
        "storage, then logs, then dashboards"
    );
    assert!(level("prometheus") < level("grafana"));
}

#[test]
fn every_stack_plans_alone_with_its_dependencies() {
    let env: BTreeMap<String, String> = BTreeMap::new();
    let opts = LoadOptions {
        env_file: Some(root().join("compose/.env.example")),
        ..Default::default()
    };
    let catalog = load_catalog(&root().join("compose"), &opts).unwrap();
    let mut stacks: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for (name, svc) in &catalog.services {
        stacks.entry(svc.file.clone()).or_default().push(name.clone());
    }
    assert!(stacks.len() >= 30, "{} stacks", stacks.len());
    for (file, services) in stacks {
        // Naming a service activates it whatever its profile; its
        // dependencies come along.
        let names = catalog
            .select(&Selection {
                all: false,
                tiers: vec![],
                profiles: vec![],
                services: services.clone(),
            })
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let graph = catalog
            .graph(&names)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for s in &services {
            assert!(graph.contains(s), "{}: {s} not planned", file.display());
        }
        for name in graph.order() {
            infra_coordinator::convert::to_spec(&catalog, "infra", &catalog.services[name], &env)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    }
}

/// The shipped catalog as the local machine runs it (the example `.env`,
/// the local image override), and the environment it was read with.
fn shipped() -> (infra_compose::Catalog, BTreeMap<String, String>) {
    let env: BTreeMap<String, String> = BTreeMap::new();
    let opts = LoadOptions {
        env_file: Some(root().join("compose/.env.example")),
        env: env.clone(),
        overrides: vec![root().join("e2e/images/local.override.yml")],
        secret_dirs: Vec::new(),
    };
    let catalog = load_catalog(&root().join("compose"), &opts).unwrap_or_else(|e| panic!("{e}"));
    (catalog, env)
}

/// The shipped Valkey cluster needs no edit across hosts: each node has a
/// port of its own (published for the other hosts), announces the address
/// the operator gives it only when there is one, rolls by the `valkey`
/// update order one node at a time, and is one placement group spread
/// over zones.
#[test]
fn the_shipped_valkey_cluster_is_ready_for_several_hosts() {
    let (catalog, env) = shipped();
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..6 {
        let name = format!("valkey-node-{i}");
        let svc = &catalog.services[&name];
        let (spec, _) = infra_coordinator::convert::to_spec(&catalog, "infra", svc, &env).unwrap();
        let port = spec.environment["VALKEY_PORT"].clone();
        assert!(ports.insert(port.clone()), "{name}: port {port} is another node's too");
        assert_eq!(spec.environment["VALKEY_NODE"], name);
        assert_eq!(spec.labels["infra.update-order"], "valkey", "{name}");
        assert_eq!(spec.labels["infra.update-order.port"], port, "{name}");
        assert_eq!(spec.labels["infra.placement.group"], "valkey-cluster", "{name}");
        let command = spec.command.as_ref().map(|a| a.args.join(" ")).unwrap_or_default();
        // Compose's `$$` is a literal `$`: the shell in the container reads
        // the operator's INFRA_HOST_ADDR, and an unset one adds nothing.
        assert!(
            command.contains(r#"${INFRA_HOST_ADDR:+--cluster-announce-ip "$INFRA_HOST_ADDR"}"#)
                && command.contains(r#"--port "$VALKEY_PORT""#),
            "{name}: {command}"
        );
        let bus = (port.parse::<u32>().unwrap() + 10000).to_string();
        assert_eq!(
            svc.expose,
            vec![port.clone(), bus],
            "{name}: client and bus ports exposed"
        );
        let placement = infra_coordinator::convert::placement_spec(svc).unwrap();
        assert_eq!(placement.spread, vec!["zone".to_owned()], "{name}");
        let update = infra_coordinator::convert::update_policy(svc, false);
        assert_eq!((update.parallelism, update.start_first), (1, false), "{name}");
        assert_eq!(update.failure_action, "pause", "{name}");
    }
}

/// The shipped cluster members that no other order sequences roll one at
/// a time, each back healthy (in its quorum) before the next: etcd
/// (Patroni's store) and Galera. Without it a roll of the whole selection
/// restarts etcd-1..3 together (three services at one level).
#[test]
fn the_shipped_etcd_and_galera_members_roll_one_at_a_time() {
    let (catalog, env) = shipped();
    for (members, cluster) in [
        (["etcd-1", "etcd-2", "etcd-3"], "pg-etcd"),
        (["galera-1", "galera-2", "galera-3"], "galera"),
    ] {
        for name in members {
            let svc = &catalog.services[name];
            let (spec, _) = infra_coordinator::convert::to_spec(&catalog, "infra", svc, &env).unwrap();
            assert_eq!(spec.labels["infra.update-order"], "one-at-a-time", "{name}");
            assert_eq!(spec.labels["infra.update-order.cluster"], cluster, "{name}");
            assert!(spec.healthcheck.is_some(), "{name}: the health check is the gate");
            let update = infra_coordinator::convert::update_policy(svc, false);
            assert_eq!((update.parallelism, update.start_first), (1, false), "{name}");
        }
    }
}

#[test]
fn the_shipped_backups_are_one_per_database_and_one_per_cluster() {
    let opts = LoadOptions {
        env_file: Some(root().join("compose/.env.example")),
        ..Default::default()
    };
    let catalog = load_catalog(&root().join("compose"), &opts).unwrap();
    let all = infra_coordinator::convert::backup::subjects(&catalog).unwrap_or_else(|e| panic!("{e}"));
    let members = |name: &str| all.get(name).map(|s| s.members.clone()).unwrap_or_default();
    assert_eq!(members("mng-pg"), ["mng-pg"]);
    assert_eq!(members("mng-valkey"), ["mng-valkey"]);
    assert_eq!(members("pg-cluster"), ["pg-0", "pg-1", "pg-2"]);
    assert_eq!(members("galera"), ["galera-1", "galera-2", "galera-3"]);
    assert_eq!(
        members("valkey-replication"),
        ["valkey-rep-0", "valkey-rep-1", "valkey-rep-2"]
    );
    assert!(
        !all["valkey-replication"].plan.restore_member.is_empty(),
        "restored into the primary"
    );
    for (name, s) in &all {
        assert!(!s.plan.restore.is_empty(), "{name} restores");
        assert_eq!(s.plan.target, "minio", "{name}");
        let t = infra_coordinator::convert::backup::target(&catalog, &s.plan.target, &BTreeMap::new());
        // The key's secret is read from the catalog's secrets/ (absent in a
        // clean checkout: then the error names it).
        if let Err(e) = t {
            assert!(e.contains("minio_root_password"), "{e}");
        }
    }
}
