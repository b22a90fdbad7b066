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

/// What `host`'s engine recorded of `container` since `since` (unix
/// seconds): when it started and when its health test (a command whose
/// text holds `health_test`) first passed, in nanoseconds of the engine's
/// clock (the hosts share one).
fn times(c: &Cluster, host: &str, container: &str, health_test: &str, since: u64) -> (i128, Option<i128>) {
    let text = events(c, host, container, since);
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('|').map(str::trim).collect()).collect();
    let time = |f: &[&str]| f[0].parse::<i128>().ok();
    let started = lines
        .iter()
        .find(|f| f.get(1) == Some(&"start"))
        .and_then(|f| time(f))
        .unwrap_or_else(|| panic!("{container} on {host} started since {since}: {text}"));
    // Healthy: Docker's verdict, or earlier a pass of the same health test
    // that the operator ran itself while Docker still said `starting`
    // (Engine 20.10 waits a whole interval for its first check): an
    // `exec_die` with exit code 0 of an exec of the health test.
    let probes: Vec<&str> = lines
        .iter()
        .filter(|f| {
            f.get(1)
                .is_some_and(|a| a.starts_with("exec_start: ") && a.contains(health_test))
        })
        .filter_map(|f| f.get(2).copied())
        .collect();
    let healthy = lines
        .iter()
        .filter(|f| {
            f.get(1) == Some(&"health_status: healthy")
                || (f.get(1) == Some(&"exec_die")
                    && f.get(3) == Some(&"0")
                    && f.get(2).is_some_and(|id| probes.contains(id)))
        })
        .filter_map(|f| time(f))
        .min();
    (started, healthy)
}

/// The engine's events of `container` since `since`:
/// `nanos|action|exec id|exit code` lines.
fn events(c: &Cluster, host: &str, container: &str, since: u64) -> String {
    c.engine_events(
        host,
        since,
        &["type=container".into(), format!("container={container}")],
        "{{.TimeNano}}|{{.Action}}|{{index .Actor.Attributes \"execID\"}}|{{index .Actor.Attributes \"exitCode\"}}",
    )
}

#[test]
fn the_shipped_patroni_stack_spreads_over_three_joined_hosts_in_dependency_order_and_serves_through_haproxy() {
    // The user's checkout of the catalog: the shipped one, unchanged.
    let (_checkout, catalog) = infra_e2e::catalog_checkout();
    let opts = ClusterOptions::new(3).images(&IMAGES).bare_over(&catalog);
    let c = Cluster::start(opts);
    c.join_zones();

    let t0 = Instant::now();
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
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
    let t = |name: &str| {
        let test = if name.starts_with("etcd") {
            "endpoint health"
        } else if name.starts_with("pg-router") {
            "healthz"
        } else {
            "8008/health"
        };
        times(&c, &on[name], &format!("infra-{name}-1"), test, since)
    };
    let etcd_healthy: Vec<i128> = ["etcd-1", "etcd-2", "etcd-3"]
        .iter()
        .map(|n| t(n).1.unwrap_or_else(|| panic!("{n} reported healthy")))
        .collect();
    let router = t("pg-router").0;
    for m in ["pg-0", "pg-1", "pg-2"] {
        let (started, healthy) = t(m);
        for e in &etcd_healthy {
            assert!(
                started > *e,
                "{m} started at {started}, before an etcd was healthy at {e}:\n{}",
                ["etcd-1", "etcd-2", "etcd-3", m]
                    .iter()
                    .map(|n| format!("{n}: {}", events(&c, &on[*n], &format!("infra-{n}-1"), since)))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        let healthy = healthy.unwrap_or_else(|| panic!("{m} reported healthy"));
        assert!(
            router > healthy,
            "pg-router started at {router}, before {m} was healthy at {healthy}"
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

    // Under a client writing through pg-router the whole time:
    psql(
        &router_host,
        beside,
        "pg-router",
        "create table acks(v bigint primary key)",
    )
    .unwrap();
    let engines: Vec<(String, String)> = c.hosts().iter().map(|h| (h.clone(), c.container(h))).collect();
    let writer = {
        let engines = engines.clone();
        infra_test_support::load::Load::start(1, Duration::from_millis(50), move |n| {
            through_router(&engines, &format!("insert into acks(v) values ({n})")).map(|_| ())
        })
    };
    let mut report = Vec::new();

    // 1. haproxy.cfg changed in the checkout and pushed as a new revision:
    //    pg-router rolls to it (its spec names the file's digest).
    let cfg = catalog.join("04-data/postgresql-cluster/haproxy.cfg");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("maxconn 1000", "maxconn 900")).unwrap();
    let push = std::process::Command::new(infra_e2e::bin_dir("debug").join("infractl"))
        .args(["--addr", &format!("http://{}", c.grpc()), "catalog", "push"])
        .arg(&catalog)
        .arg("--override")
        .arg(infra_e2e::repo_root().join("e2e/images/local.override.yml"))
        .output()
        .unwrap();
    assert!(push.status.success(), "{}", String::from_utf8_lossy(&push.stderr));
    let t1 = Instant::now();
    let progress = c.call(
        "Deploy",
        r#"{"selection":{"services":["pg-router"]},"timeoutSeconds":240}"#,
    );
    assert_eq!(progress.last().unwrap()["ready"], 7, "{progress:#?}");
    let phases: Vec<&str> = progress.iter().filter_map(|p| p["phase"].as_str()).collect();
    assert!(
        phases.contains(&"PHASE_UPDATING"),
        "pg-router rolled to the new file: {progress:#?}"
    );
    let router_now = on_host(&engines, "pg-router").expect("pg-router runs");
    let cfg_in = c.docker(
        &router_now,
        &[
            "exec",
            &container_of(&engines, &router_now, "pg-router"),
            "cat",
            "/usr/local/etc/haproxy/haproxy.cfg",
        ],
    );
    assert!(
        String::from_utf8_lossy(&cfg_in.stdout).contains("maxconn 900"),
        "the new haproxy.cfg is mounted"
    );
    let w = writer.take();
    report.push(format!(
        "haproxy.cfg pushed and rolled {:.1}s: {} writes acked, longest gap {:.2}s",
        t1.elapsed().as_secs_f64(),
        w.acked.len(),
        w.longest_gap.as_secs_f64()
    ));
    let mut acked = w.acked;

    // 2. A rolling update of the Patroni members (Patroni's update order:
    //    replicas, one switchover, the old leader), asked member by member.
    let t2 = Instant::now();
    for m in ["pg-0", "pg-1", "pg-2"] {
        let progress = c.call(
            "Rollout",
            &format!(r#"{{"service":"{m}","environment":{{"ROLL":"2"}},"timeoutSeconds":240}}"#),
        );
        assert_eq!(
            progress.last().unwrap()["ready"],
            1,
            "{m} rolled: {progress:#?}\n{}",
            c.all_logs()
        );
    }
    let w = writer.take();
    report.push(format!(
        "roll of pg-0..2 {:.1}s: {} writes acked, longest gap {:.2}s",
        t2.elapsed().as_secs_f64(),
        w.acked.len(),
        w.longest_gap.as_secs_f64()
    ));
    acked.extend(w.acked);

    // 3. The leader's host dies: Patroni fails over; pg-router, if it ran
    //    there, starts elsewhere; writes resume.
    let leader = leader_of(&engines).expect("a Patroni leader");
    let dead = on_host(&engines, &leader).expect("the leader's host");
    let t3 = Instant::now();
    c.kill_host(&dead);
    let survivors: Vec<(String, String)> = engines.iter().filter(|(h, _)| *h != dead).cloned().collect();
    wait_for("a new leader on a surviving host", Duration::from_secs(120), || {
        leader_of(&survivors).is_some_and(|l| l != leader)
    });
    let before = writer.take();
    acked.extend(before.acked);
    wait_for("writes through pg-router again", Duration::from_secs(180), || {
        let w = writer.take();
        let ok = !w.acked.is_empty();
        acked.extend(w.acked);
        ok
    });
    let failover = t3.elapsed();
    report.push(format!(
        "{dead} (leader {leader}) killed: writes resumed {:.1}s later",
        failover.as_secs_f64()
    ));
    drop(writer);

    // Every acknowledged write is there.
    let rows = through_router(&survivors, "select v from acks").expect("read back");
    let have: BTreeSet<u64> = rows.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let lost: Vec<&u64> = acked.iter().filter(|v| !have.contains(v)).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost: {lost:?}", lost.len());
    println!(
        "BENCH | ha (shipped postgresql-cluster, three joined hosts, fenced coordinator): {} acked writes, 0 lost; {}",
        acked.len(),
        report.join("; ")
    );
}

/// The running containers labelled `label` in the engine of `outer` (a
/// host's outer container), first one first; none when it cannot be asked.
fn ps(outer: &str, label: &str) -> Vec<String> {
    std::process::Command::new("docker")
        .args([
            "exec",
            outer,
            "docker",
            "ps",
            "-q",
            "--filter",
            &format!("label={label}"),
        ])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The host (of `engines`: host, outer container) running a container of
/// `service`.
fn on_host(engines: &[(String, String)], service: &str) -> Option<String> {
    engines
        .iter()
        .find(|(_, outer)| !ps(outer, &format!("io.infra.service={service}")).is_empty())
        .map(|(h, _)| h.clone())
}

/// The id of `service`'s running container on `host`.
fn container_of(engines: &[(String, String)], host: &str, service: &str) -> String {
    let outer = &engines.iter().find(|(h, _)| h == host).expect("a host").1;
    ps(outer, &format!("io.infra.service={service}"))
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// A Patroni member's container in the engine of `outer`, if one runs.
fn member_on(outer: &str) -> Option<String> {
    ps(outer, "infra.update-order.cluster=pg-cluster").into_iter().next()
}

/// One statement through pg-router, from the Patroni member beside it
/// (wherever it runs now), as the superuser.
fn through_router(engines: &[(String, String)], sql: &str) -> Result<String, String> {
    let host = on_host(engines, "pg-router").ok_or("pg-router runs nowhere")?;
    let outer = &engines.iter().find(|(h, _)| *h == host).ok_or("no such host")?.1;
    let member = member_on(outer).ok_or_else(|| format!("no Patroni member on {host}"))?;
    let out = std::process::Command::new("docker")
        .args(["exec", outer, "docker", "exec", &member, "sh", "-c"])
        .arg(format!(
            "PGPASSWORD=\"$(cat /run/secrets/patroni_superuser_password)\" psql \"host=pg-router port=5432 user=postgres \
             dbname=postgres connect_timeout=3\" -Atqc \"{sql}\""
        ))
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The Patroni leader's name, asked of a member on one of `engines`.
fn leader_of(engines: &[(String, String)]) -> Option<String> {
    for (_, outer) in engines {
        let Some(member) = member_on(outer) else {
            continue;
        };
        let Ok(out) = std::process::Command::new("docker")
            .args([
                "exec",
                outer,
                "docker",
                "exec",
                &member,
                "curl",
                "-fsS",
                "http://127.0.0.1:8008/cluster",
            ])
            .output()
        else {
            continue;
        };
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            continue;
        };
        if let Some(l) = doc["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["role"] == "leader" && m["state"] == "running")
        {
            return l["name"].as_str().map(str::to_owned);
        }
    }
    None
}
