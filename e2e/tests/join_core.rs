//! From nothing to the shipped `core` selection across three hosts that
//! joined by token: the NATS cluster (TLS, JWT authentication, JetStream
//! encrypted at rest) and a coordinator up, three bare hosts each joined
//! with the command `AddHost` printed, `Deploy {"named":"core"}` across
//! them, every service healthy. Then what the security of it promises:
//! each host holds copies of only the secrets its services use, and no
//! NATS server's store holds any secret of the catalog in plain text.
//!
//! The hosts hold no copy of the catalog: the files its stacks mount (init
//! scripts, prometheus.yml, alertmanager.yml, the nginx templates) reach
//! them through the bus, and each host holds only those of its services.
//!
//! Needs every image of `bash e2e/images/build.sh` and the operators image
//! (`just test` builds them).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use infra_e2e::hosts::{Cluster, ClusterOptions, OPERATORS_IMAGE};

/// The images the core selection runs here (e2e/images/local.override.yml).
const CORE_IMAGES: [&str; 10] = [
    "infra-local/postgres:15",
    "infra-local/redis:7",
    "infra-local/rabbitmq:3",
    "infra-local/prometheus:2",
    "infra-local/alertmanager:0",
    "infra-local/pushgateway:1",
    "infra-local/node-exporter:1",
    "infra-local/postgres-exporter:0",
    "infra-local/redis-exporter:1",
    "infra-local/nginx:1",
];

#[test]
fn three_hosts_join_by_token_and_run_the_core_selection_with_each_secret_only_where_it_is_used_and_none_in_a_nats_store()
 {
    let mut images = vec![OPERATORS_IMAGE];
    images.extend(CORE_IMAGES);
    let mut opts = ClusterOptions::new(3).images(&images);
    for h in ["host1", "host2", "host3"] {
        opts.host_tiers.insert(h.into(), Vec::new());
    }
    let c = Cluster::start(opts);
    let hosts = c.hosts();
    // Each bare host joins with the command AddHost printed, as is.
    let t0 = Instant::now();
    c.join_zones();
    let joined = t0.elapsed();

    // The shipped core selection, across them.
    let t1 = Instant::now();
    let progress = c.call("Deploy", r#"{"selection":{"named":"core"},"timeoutSeconds":300}"#);
    let done = progress.last().expect("a DONE line");
    let planned: BTreeSet<&str> = progress
        .iter()
        .filter(|p| p["phase"] == "PHASE_PLANNED")
        .filter_map(|p| p["service"].as_str())
        .collect();
    assert!(planned.len() >= 10, "{planned:?}");
    assert_eq!(
        done["ready"].as_u64(),
        Some(planned.len() as u64),
        "every core service ready: {progress:#?}\n{}",
        c.all_logs()
    );
    let deployed = t1.elapsed();
    let status = c.call("GetStatus", r#"{"selection":{"named":"core"}}"#);
    let rows = status[0]["services"].as_array().cloned().unwrap_or_default();
    let mut on: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &rows {
        let name = r["name"]
            .as_str()
            .or(r["service"].as_str())
            .unwrap_or_default()
            .to_owned();
        assert!(
            matches!(
                r["health"].as_str(),
                Some("HEALTH_HEALTHY" | "HEALTH_RUNNING" | "HEALTH_COMPLETED")
            ),
            "{name} healthy: {r:#?}"
        );
        if let Some(h) = r["host"].as_str().filter(|h| !h.is_empty()) {
            on.entry(h.to_owned()).or_default().insert(name);
        }
    }
    assert!(on.len() >= 2, "core spread over the joined hosts: {on:?}");

    // No host has the catalog; its files reached them through the bus.
    let compose = infra_e2e::repo_root().join("compose");
    for h in &hosts {
        let out = std::process::Command::new("docker")
            .args(["exec", &c.container(h), "test", "-e", &compose.display().to_string()])
            .status()
            .expect("docker");
        assert!(!out.success(), "{h} has no copy of the catalog");
    }
    let prom = rows
        .iter()
        .find(|r| r["name"] == "prometheus" || r["service"] == "prometheus")
        .and_then(|r| r["host"].as_str())
        .expect("prometheus placed")
        .to_owned();
    let cfg = c.docker(
        &prom,
        &["exec", "infra-prometheus-1", "cat", "/etc/prometheus/prometheus.yml"],
    );
    assert_eq!(
        String::from_utf8_lossy(&cfg.stdout),
        std::fs::read_to_string(compose.join("06-observability/prometheus/prometheus.yml")).unwrap(),
        "prometheus on {prom} reads the catalog's prometheus.yml: {}",
        String::from_utf8_lossy(&cfg.stderr)
    );

    // Secrets and catalog files: each host holds copies of only those its
    // services use.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bus = rt
        .block_on(infra_bus::Bus::connect(&c.bus_config("e2e-join-core")))
        .unwrap();
    let desired = rt.block_on(bus.list_desired(None)).unwrap();
    for h in &hosts {
        let used: BTreeSet<String> = desired
            .iter()
            .filter(|d| &d.host == h && !d.absent)
            .flat_map(|d| {
                d.spec
                    .iter()
                    .flat_map(|s| infra_proto::spec::content_keys(s).map(str::to_owned))
            })
            .collect();
        let held: BTreeSet<String> = rt.block_on(bus.list_secret_names(h)).unwrap().into_iter().collect();
        assert_eq!(
            held, used,
            "{h} holds the secrets and files of its services and no other"
        );
    }
    // No secret of the catalog in any server's store, in plain text.
    let stores = c.nats_stores();
    let dir = infra_e2e::repo_root().join("compose/secrets");
    let mut searched = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".example") || name.ends_with(".md") {
            continue;
        }
        let value = std::fs::read(&path).unwrap();
        let value = value.trim_ascii();
        if value.len() < 8 {
            continue;
        }
        searched += 1;
        for (i, s) in stores.iter().enumerate() {
            assert!(
                !s.windows(value.len()).any(|w| w == value),
                "nats{}'s store holds the secret {name} in plain text",
                i + 1
            );
        }
    }
    assert!(searched >= 20, "searched {searched} secrets");
    println!(
        "BENCH | from nothing: three bare hosts joined by token (nine operators each heartbeating) {:.1}s; core ({} services) deployed across them, every one healthy, {:.1}s; {searched} catalog secrets searched for in 3 NATS stores: none found",
        joined.as_secs_f64(),
        planned.len(),
        deployed.as_secs_f64()
    );
}
