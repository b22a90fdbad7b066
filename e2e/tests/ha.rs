//! The shipped HA PostgreSQL stack (`compose/04-data/postgresql-cluster`,
//! no file changed) across three hosts that joined by token with the
//! labels `zone=a|b|c`: etcd and Patroni members spread one per host by the
//! stack's own placement preferences, HAProxy in front; the coordinator is
//! fenced off the hosts (it reaches the NATS servers only), so everything
//! it asks of them goes over the bus. The engines' own clocks show every
//! `depends_on` condition honoured across the hosts, and a row written
//! through `pg-router` is read back from every member.
//!
//! Images: etcd, patroni, haproxy stand-ins (`e2e/images/local.override.yml`)
//! and the operators image.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use infra_e2e::hosts::{Cluster, ClusterOptions, OPERATORS_IMAGE};
use infra_test_support::wait_for;

const IMAGES: [&str; 4] = [
    OPERATORS_IMAGE,
    "infra-local/etcd:3",
    "infra-local/patroni:3",
    "infra-local/haproxy:2",
];

/// Joins every bare host with the command `AddHost` printed, zones a, b, c.
fn join(c: &Cluster) {
    for (i, h) in c.hosts().iter().enumerate() {
        let zone = ["a", "b", "c"][i];
        let r = c.call("AddHost", &format!(r#"{{"host":"{h}","labels":{{"zone":"{zone}"}}}}"#));
        let command = r[0]["command"].as_str().expect("a command").to_owned();
        let out = std::process::Command::new("docker")
            .args(["exec", &c.container(h), "sh", "-c", &command])
            .output()
            .expect("docker");
        assert!(out.status.success(), "{h}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let hosts = c.hosts();
    c.wait_hosts("three joined hosts", Duration::from_secs(120), |l| {
        hosts.iter().all(|h| l.get(h).is_some_and(|t| t.len() == 9))
    });
}

/// `docker inspect` of one service's container on `host`: (started at,
/// first passing health check) as RFC 3339 text, which sorts in time.
fn times(c: &Cluster, host: &str, container: &str) -> (String, String) {
    let out = c.docker(
        host,
        &[
            "inspect",
            "-f",
            "{{.State.StartedAt}}|{{range .State.Health.Log}}{{if eq .ExitCode 0}}{{.End}},{{end}}{{end}}",
            container,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (started, healthy) = text.split_once('|').unwrap_or((&text, ""));
    (
        started.to_owned(),
        healthy.split(',').find(|s| !s.is_empty()).unwrap_or("").to_owned(),
    )
}

#[test]
fn the_shipped_patroni_stack_spreads_over_three_joined_hosts_in_dependency_order_and_serves_through_haproxy() {
    let mut opts = ClusterOptions::new(3).images(&IMAGES);
    for h in ["host1", "host2", "host3"] {
        opts.host_tiers.insert(h.into(), Vec::new());
    }
    let c = Cluster::start(opts);
    join(&c);

    let t0 = Instant::now();
    let progress = c.call(
        "Deploy",
        r#"{"selection":{"services":["pg-router"]},"timeoutSeconds":300}"#,
    );
    let done = progress.last().expect("a DONE line");
    assert_eq!(
        done["ready"],
        7,
        "etcd x3, Patroni x3, HAProxy: {progress:#?}\n{}",
        c.all_logs()
    );
    let deployed = t0.elapsed();

    // Where each runs: one etcd and one Patroni member per host.
    let status = c.call("GetStatus", r#"{"selection":{"services":["pg-router"]}}"#);
    let rows = status[0]["services"].as_array().cloned().unwrap_or_default();
    let mut on: BTreeMap<String, String> = BTreeMap::new();
    for r in &rows {
        let name = r["service"].as_str().or(r["name"].as_str()).unwrap_or_default();
        if let Some(h) = r["host"].as_str().filter(|h| !h.is_empty()) {
            on.insert(name.to_owned(), h.to_owned());
        }
    }
    let hosts_of = |names: &[&str]| {
        names
            .iter()
            .filter_map(|n| on.get(*n).cloned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        hosts_of(&["etcd-1", "etcd-2", "etcd-3"]).len(),
        3,
        "one etcd per host: {on:?}"
    );
    assert_eq!(
        hosts_of(&["pg-0", "pg-1", "pg-2"]).len(),
        3,
        "one Patroni per host: {on:?}"
    );

    // The engines' clocks: every Patroni member started after every etcd
    // member was healthy, HAProxy after every Patroni member was, across
    // the hosts.
    let t = |name: &str| times(&c, &on[name], &format!("infra-{name}-1"));
    let etcd_healthy: Vec<String> = ["etcd-1", "etcd-2", "etcd-3"].iter().map(|n| t(n).1).collect();
    let pg: Vec<(String, String)> = ["pg-0", "pg-1", "pg-2"].iter().map(|n| t(n)).collect();
    let router = t("pg-router");
    for (i, (started, healthy)) in pg.iter().enumerate() {
        for e in &etcd_healthy {
            assert!(
                !e.is_empty() && started > e,
                "pg-{i} started {started}, an etcd healthy at {e}"
            );
        }
        assert!(
            !healthy.is_empty() && router.0 > *healthy,
            "pg-router started {} after pg-{i} was healthy at {healthy}",
            router.0
        );
    }

    // A row through pg-router, read back from every member.
    let router_host = on["pg-router"].clone();
    let beside = ["pg-0", "pg-1", "pg-2"]
        .into_iter()
        .find(|n| on[*n] == router_host)
        .expect("a member on pg-router's host");
    let psql = |host: &str, member: &str, target: &str, sql: &str| {
        let out = c.docker(
            host,
            &[
                "exec",
                &format!("infra-{member}-1"),
                "sh",
                "-c",
                &format!(
                    "PGPASSWORD=\"$(cat /run/secrets/patroni_superuser_password)\" psql \"host={target} port=5432 \
                     user=postgres dbname=postgres connect_timeout=3\" -Atqc \"{sql}\""
                ),
            ],
        );
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    };
    psql(
        &router_host,
        beside,
        "pg-router",
        "create table ha_probe(v text); insert into ha_probe values ('through the router')",
    )
    .unwrap_or_else(|e| panic!("a write through pg-router: {e}\n{}", c.all_logs()));
    for m in ["pg-0", "pg-1", "pg-2"] {
        wait_for(&format!("{m} has the row"), Duration::from_secs(30), || {
            psql(&on[m], m, "127.0.0.1", "select v from ha_probe").is_ok_and(|v| v == "through the router")
        });
    }
    println!(
        "BENCH | shipped postgresql-cluster across three joined hosts (coordinator fenced off the hosts): etcd x3 + Patroni x3 + HAProxy healthy in {:.1}s, one member of each per host",
        deployed.as_secs_f64()
    );
}
