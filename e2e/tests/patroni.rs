//! PostgreSQL HA across three simulated hosts (the postgresql-cluster
//! stack: etcd x3, Patroni x3, HAProxy), brought up in dependency order
//! gated on real health, then rolled member by member while a client
//! writes through HAProxy's write port the whole time.
//!
//! Each result prints one line, `FAULT | what was done | what survived`,
//! and the roll prints `BENCH | ...` (the figures in e2e/BENCH.md).
//!
//! Needs `cargo build --workspace --bins`, the host's `psql`, and the
//! images `host`, `nats`, `etcd`, `patroni`, `haproxy` from
//! `e2e/images/build.sh`.

use std::time::{Duration, Instant};

use infra_e2e::hosts::{Cluster, ClusterOptions};
use infra_e2e::scenarios::{Writer, patroni_catalog, psql, wait_for};

fn fault(what: &str, survived: &str) {
    println!("FAULT | {what} | {survived}");
}

fn start() -> (Cluster, tempfile::TempDir) {
    let mut opts = ClusterOptions::new(3).tiers(&["data"]).images(&[
        "infra-local/etcd:3",
        "infra-local/patroni:3",
        "infra-local/haproxy:2",
    ]);
    opts.project = "pgha".into();
    opts.overrides.clear();
    opts.env.push(("INFRA_HEARTBEAT_TTL_SECS".into(), "5".into()));
    let dir = tempfile::tempdir().unwrap();
    opts.compose_dir = dir.path().to_owned();
    let c = Cluster::start(opts);
    let ips: Vec<String> = c.hosts().iter().map(|h| c.host_ip(h)).collect();
    patroni_catalog(dir.path(), &ips, "1");
    (c, dir)
}

/// `docker inspect` of the one container of `service` on `host`:
/// (started at, RFC 3339).
fn started_at(c: &Cluster, host: &str, service: &str) -> String {
    let o = c.docker(
        host,
        &["ps", "-q", "--filter", &format!("label=io.infra.service={service}")],
    );
    let id = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(!id.is_empty() && !id.contains('\n'), "one {service} on {host}: {id:?}");
    let o = c.docker(host, &["inspect", "-f", "{{.State.StartedAt}}", &id]);
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Patroni's `GET path` on the member of host `i` (its published 8008).
fn rest(c: &Cluster, host: &str, path: &str) -> serde_json::Value {
    let addr = format!("{}:8008", c.host_ip(host));
    let body = infra_e2e::scenarios::get(&addr, path).unwrap_or_default();
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

fn leader(c: &Cluster) -> Option<String> {
    for h in c.hosts() {
        let v = rest(c, &h, "/cluster");
        if let Some(ms) = v["members"].as_array() {
            return ms
                .iter()
                .find(|m| m["role"] == "leader" && m["state"] == "running")
                .and_then(|m| m["name"].as_str().map(str::to_owned));
        }
    }
    None
}

#[test]
fn a_patroni_cluster_over_three_hosts_comes_up_in_order_rolls_with_one_switchover_and_no_lost_write_and_stops_at_a_replica_that_does_not_come_back()
 {
    let (c, dir) = start();
    let ips: Vec<String> = c.hosts().iter().map(|h| c.host_ip(h)).collect();
    let t0 = Instant::now();
    let progress = c.call(
        "Deploy",
        r#"{"selection":{"services":["pg-router"]},"timeoutSeconds":300}"#,
    );
    let done = progress.last().unwrap();
    assert_eq!(
        done["ready"],
        7,
        "etcd x3, pg x3, router: {progress:#?}\n{}",
        c.all_logs()
    );
    let up = t0.elapsed();

    // Bring-up order, from the containers' start times: every etcd before
    // any Patroni member, every member before HAProxy.
    let hosts = c.hosts();
    let etcd: Vec<String> = (1..=3)
        .map(|i| started_at(&c, &hosts[i - 1], &format!("etcd-{i}")))
        .collect();
    let pg: Vec<String> = (0..3).map(|i| started_at(&c, &hosts[i], &format!("pg-{i}"))).collect();
    let router = started_at(&c, &hosts[0], "pg-router");
    assert!(etcd.iter().max() < pg.iter().min(), "etcd {etcd:?} before pg {pg:?}");
    assert!(
        pg.iter().max().unwrap() < &router,
        "pg {pg:?} before the router {router}"
    );
    // A write through HAProxy's write port lands on the leader and is
    // read back from a replica through the read port.
    psql(&ips[0], 15432, "create table acks(v bigint primary key)").unwrap();
    assert_eq!(psql(&ips[0], 15432, "select pg_is_in_recovery()").unwrap(), "f");
    psql(&ips[0], 15432, "insert into acks values (0)").unwrap();
    wait_for("the first write on a replica", Duration::from_secs(30), || {
        psql(
            &ips[0],
            15433,
            "select pg_is_in_recovery(), count(*) from acks where v = 0",
        )
        .as_deref()
            == Ok("t|1")
    });
    // Status: every member's row says its role, state, timeline and lag,
    // as its host's data operator reads them from Patroni.
    let mut rows = Vec::new();
    wait_for("Patroni roles in GetStatus", Duration::from_secs(30), || {
        let st = c.call("GetStatus", "{}");
        rows = st[0]["services"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| {
                r["service"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("pg-") && s != "pg-router")
            })
            .filter_map(|r| r["message"].as_str().map(str::to_owned))
            .collect();
        rows.iter()
            .filter(|m| m.contains("patroni: leader running timeline 1"))
            .count()
            == 1
            && rows
                .iter()
                .filter(|m| m.contains("patroni: replica") && m.contains(" lag "))
                .count()
                == 2
    });
    println!("STATUS | {}", rows.join(" | "));
    fault(
        "bring up etcd x3, Patroni x3 (one per host), HAProxy on host1",
        &format!(
            "etcd first, then Patroni, then HAProxy, each gated on health; a write through 5432 read back from a replica through 5433; {:.1}s",
            up.as_secs_f64()
        ),
    );

    // Roll the members to a changed spec while a client writes the whole time.
    let leader_before = leader(&c).expect("a leader");
    let history_before = rest(&c, &hosts[0], "/history").as_array().map_or(0, Vec::len);
    let writer = Writer::start(ips[0].clone(), 15432, 1);
    std::thread::sleep(Duration::from_secs(2));
    patroni_catalog(dir.path(), &ips, "2");
    let t1 = Instant::now();
    let progress = c.call(
        "Deploy",
        r#"{"selection":{"services":["pg-router"]},"timeoutSeconds":300}"#,
    );
    let took = t1.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let w = writer.take();
    drop(writer);
    let done = progress.last().unwrap();
    assert_eq!(done["ready"], 7, "{progress:#?}\n{}", c.all_logs());
    assert!(done["failed"].as_u64().unwrap_or(0) == 0, "{done}");
    let rolled: Vec<_> = progress
        .iter()
        .filter(|m| m["message"].as_str().is_some_and(|t| t.contains("caught up")))
        .collect();
    assert_eq!(rolled.len(), 3, "three members rolled: {progress:#?}");
    // The leader went last.
    let last = rolled[2]["message"].as_str().unwrap();
    assert!(
        last.contains(&format!("({leader_before})")),
        "{leader_before} last: {rolled:#?}"
    );
    // Every member runs the new spec.
    for (i, h) in hosts.iter().enumerate() {
        let o = c.docker(
            h,
            &[
                "ps",
                "--filter",
                &format!("label=io.infra.service=pg-{i}"),
                "--format",
                "{{.ID}}",
            ],
        );
        let id = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        let env = c.docker(h, &["inspect", "-f", "{{range .Config.Env}}{{.}} {{end}}", &id]);
        assert!(
            String::from_utf8_lossy(&env.stdout).contains("ROLL=2"),
            "pg-{i} on the new spec"
        );
    }
    // Every acknowledged write is there (read through the write port: the leader).
    assert!(w.acked.len() > 10, "the client wrote during the roll: {w:?}");
    let stored: std::collections::BTreeSet<u64> = psql(&ips[0], 15432, "select v from acks")
        .unwrap()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let lost: Vec<u64> = w.acked.iter().copied().filter(|v| !stored.contains(v)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    // The leader changed exactly once, by switchover: one more timeline.
    let leader_after = leader(&c).expect("a leader after the roll");
    assert_ne!(leader_after, leader_before);
    let history_after = rest(&c, &hosts[0], "/history").as_array().map_or(0, Vec::len);
    assert_eq!(history_after, history_before + 1, "one timeline switch");
    let gap = w.longest_gap.as_secs_f64();
    fault(
        "roll pg-0..2 to a changed spec (Deploy) while a client writes through HAProxy's write port",
        &format!(
            "{} writes acknowledged, 0 lost, {} failed attempts; leader {leader_before} -> {leader_after} by one switchover (timeline +1); longest write gap {gap:.2}s; {:.1}s",
            w.acked.len(),
            w.failed.len(),
            took.as_secs_f64()
        ),
    );
    // 4. A replica that does not come back (its DCS address is wrong)
    // stops the roll with a reason that names it; writes never stop, the
    // leader stays; Rollback puts it back, streaming again.
    let replica = (0..3).map(|i| format!("pg-{i}")).find(|n| *n != leader_after).unwrap();
    let writer = Writer::start(ips[0].clone(), 15432, 1_000_000);
    std::thread::sleep(Duration::from_secs(2));
    let progress = c.call(
        "Rollout",
        &format!(r#"{{"service":"{replica}","environment":{{"ETCD3_HOSTS":"nowhere:2379"}},"timeoutSeconds":40}}"#),
    );
    let stopped = progress.last().unwrap()["message"].as_str().unwrap_or("").to_owned();
    assert!(
        stopped.contains(&format!("({replica})")) && stopped.contains("not ready within 40s"),
        "{progress:#?}"
    );
    assert_eq!(leader(&c).as_deref(), Some(leader_after.as_str()), "the leader stayed");
    let back = c.call(
        "Rollback",
        &format!(r#"{{"service":"{replica}","timeoutSeconds":180}}"#),
    );
    assert!(back.last().unwrap()["failed"].as_u64().unwrap_or(0) == 0, "{back:#?}");
    wait_for(&format!("{replica} streaming again"), Duration::from_secs(120), || {
        rest(&c, &hosts[0], "/cluster")["members"].as_array().is_some_and(|ms| {
            ms.iter()
                .any(|m| m["name"] == replica.as_str() && m["lag"].as_u64().is_some() && m["state"] == "running")
        })
    });
    let w4 = writer.take();
    drop(writer);
    let stored: std::collections::BTreeSet<u64> = psql(&ips[0], 15432, "select v from acks")
        .unwrap()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let lost4: Vec<u64> = w4.acked.iter().copied().filter(|v| !stored.contains(v)).collect();
    assert!(lost4.is_empty(), "acknowledged writes lost: {lost4:?}");
    assert!(
        w4.longest_gap < Duration::from_secs(2),
        "writes went on while {replica} was down: longest gap {:?}; {} failed attempts: {:?}",
        w4.longest_gap,
        w4.failed.len(),
        w4.failed.iter().take(8).collect::<Vec<_>>()
    );
    fault(
        &format!("roll {replica} (a replica) to a spec that never becomes healthy, then Rollback"),
        &format!(
            "stopped at that member with \"{stopped}\"; leader {leader_after} kept; {} writes acknowledged, 0 lost, longest gap {:.2}s; back to streaming after Rollback",
            w4.acked.len(),
            w4.longest_gap.as_secs_f64()
        ),
    );
    println!(
        "BENCH | patroni roll | total {:.1}s | write gap {gap:.2}s | acked {} | lost {} | failed attempts {}",
        took.as_secs_f64(),
        w.acked.len(),
        lost.len(),
        w.failed.len()
    );
}
