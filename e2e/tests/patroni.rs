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

use std::sync::Mutex;
use std::time::{Duration, Instant};

use infra_e2e::hosts::{Cluster, ClusterOptions};
use infra_e2e::scenarios::{
    Writes, described, patroni_catalog, patroni_catalog_with, pg_writer, psql, the_container, wait_for,
};
use infra_proto::bus::v1::{Event, EventKind};

/// One Patroni cluster at a time: each test runs three simulated hosts,
/// and two at once on a small machine would each see the other's load.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn fault(what: &str, survived: &str) {
    println!("FAULT | {what} | {survived}");
}

fn start() -> (Cluster, tempfile::TempDir) {
    start_with("")
}

/// A cluster of three hosts with the catalog written, `spilo` as the
/// members' extra Patroni configuration.
fn start_with(spilo: &str) -> (Cluster, tempfile::TempDir) {
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
    patroni_catalog_with(dir.path(), &ips, "1", spilo);
    (c, dir)
}

/// When the one container of `service` on `host` started (RFC 3339).
fn started_at(c: &Cluster, host: &str, service: &str) -> String {
    the_container(c, host, service).2
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
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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
    let writer = pg_writer(ips[0].clone(), 15432, 1);
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
            "{} writes acknowledged, 0 lost, {} failed attempts ({:?}); leader {leader_before} -> {leader_after} by one switchover (timeline +1); longest write gap {gap:.2}s; {:.1}s",
            w.acked.len(),
            w.failed.len(),
            w.failed.iter().take(5).collect::<Vec<_>>(),
            took.as_secs_f64()
        ),
    );
    // 4. A replica that does not come back (its DCS address is wrong)
    // stops the roll with a reason that names it; writes never stop, the
    // leader stays; Rollback puts it back, streaming again.
    let replica = (0..3).map(|i| format!("pg-{i}")).find(|n| *n != leader_after).unwrap();
    let writer = pg_writer(ips[0].clone(), 15432, 1_000_000);
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
    // "Writes never stopped": the leader kept taking them. The bound is far
    // above what a loaded machine adds to one psql (seconds) and far below
    // what losing the leader costs (Patroni's 30 s leader timeout); the
    // figure itself is printed for e2e/BENCH.md.
    assert!(
        w4.longest_gap < Duration::from_secs(10),
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

/// Adds what a writer saw since the last `take` to `into`.
fn add(into: &mut Writes, w: Writes) {
    into.acked.extend(w.acked);
    into.failed.extend(w.failed);
    into.longest_gap = into.longest_gap.max(w.longest_gap);
}

/// The `member_leader_changed` events seen so far naming `leader`.
fn leader_events(events: &Mutex<Vec<(Instant, Event)>>, leader: &str) -> Vec<(Instant, Event)> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, e)| e.kind() == EventKind::MemberLeaderChanged && e.service == leader)
        .cloned()
        .collect()
}

/// `/cluster` as the first surviving member answers it.
fn members(c: &Cluster, hosts: &[String]) -> Vec<serde_json::Value> {
    hosts
        .iter()
        .map(|h| rest(c, h, "/cluster"))
        .find_map(|v| v["members"].as_array().cloned())
        .unwrap_or_default()
}

/// The running leader and its timeline, as the members on `hosts` see it.
fn leader_on(c: &Cluster, hosts: &[String]) -> Option<(String, u64)> {
    members(c, hosts)
        .iter()
        .find(|m| m["role"] == "leader" && m["state"] == "running")
        .and_then(|m| Some((m["name"].as_str()?.to_owned(), m["timeline"].as_u64()?)))
}

#[test]
fn a_patroni_leader_lost_with_its_host_fails_over_to_a_new_leader_the_operator_reports_writes_resume_with_none_lost_and_the_old_leader_returns_as_a_replica()
 {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Synchronous replication: a commit is acknowledged once a replica has
    // it, and Patroni promotes only that replica, so losing the leader's
    // host loses no acknowledged write (with asynchronous replication the
    // last few milliseconds may be lost, as Patroni documents).
    let (c, _dir) = start_with("{bootstrap: {dcs: {synchronous_mode: true}}}");
    let ips: Vec<String> = c.hosts().iter().map(|h| c.host_ip(h)).collect();
    let hosts = c.hosts();
    let events = infra_e2e::record_events(&c.nats_urls(), Some(&c.nats_ca()), Some(c.admin_creds()));
    let progress = c.call(
        "Deploy",
        r#"{"selection":{"services":["pg-router"]},"timeoutSeconds":300}"#,
    );
    assert_eq!(
        progress.last().unwrap()["ready"],
        7,
        "etcd x3, pg x3, router: {progress:#?}\n{}",
        c.all_logs()
    );
    psql(&ips[0], 15432, "create table acks(v bigint primary key)").unwrap();
    wait_for("a leader and a synchronous standby", Duration::from_secs(60), || {
        let ms = members(&c, &hosts);
        ms.iter().any(|m| m["role"] == "leader") && ms.iter().any(|m| m["role"] == "sync_standby")
    });

    // HAProxy runs on host1: the leader must be elsewhere for its host's
    // loss to leave HAProxy standing. A switchover to the synchronous
    // standby (never on host1 when pg-0 leads) puts it there, and the
    // operator on the new leader's host says so.
    let (mut lead, _) = leader_on(&c, &hosts).expect("a leader");
    if lead == "pg-0" {
        let to = members(&c, &hosts)
            .iter()
            .find(|m| m["role"] == "sync_standby")
            .and_then(|m| m["name"].as_str().map(str::to_owned))
            .expect("a synchronous standby");
        // The operators read the leader every 2 s: let them see pg-0 lead.
        std::thread::sleep(Duration::from_secs(5));
        let addr = format!("{}:8008", ips[0]);
        let body = format!(r#"{{"leader":"pg-0","candidate":"{to}"}}"#);
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-m",
                "30",
                "-XPOST",
                "-d",
                &body,
                &format!("http://{addr}/switchover"),
            ])
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "switchover: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(
            &format!("{to} leads after the switchover"),
            Duration::from_secs(60),
            || leader_on(&c, &hosts).is_some_and(|(l, _)| l == to),
        );
        wait_for("the switchover on the bus", Duration::from_secs(30), || {
            !leader_events(&events, &to).is_empty()
        });
        let (_, ev) = &leader_events(&events, &to)[0];
        assert!(
            ev.reason.contains(&format!("leader pg-0 -> {to} by switchover")),
            "{ev:?}"
        );
        lead = to;
    }
    let lead_host = hosts[lead.trim_start_matches("pg-").parse::<usize>().unwrap()].clone();
    assert_ne!(lead_host, "host1");
    // Every operator has seen this leader (their next read, 2 s apart).
    std::thread::sleep(Duration::from_secs(5));
    let (_, timeline_before) = leader_on(&c, &hosts).expect("a leader");
    let survivors: Vec<String> = hosts.iter().filter(|h| **h != lead_host).cloned().collect();
    // With synchronous_mode Patroni promotes only the synchronous standby:
    // kill the leader once there is one (after a switchover the leader names
    // it on its next cycle, up to loop_wait later; killed before that, no
    // member may take over and none does).
    wait_for("a synchronous standby", Duration::from_secs(60), || {
        members(&c, &hosts).iter().any(|m| {
            m["role"] == "sync_standby"
                && (m["state"] == "running" || m["state"] == "streaming")
                && m["name"] != lead.as_str()
        })
    });

    // Write the whole time; kill the leader's host in the middle.
    let writer = pg_writer(ips[0].clone(), 15432, 1);
    std::thread::sleep(Duration::from_secs(5));
    let before_kill = writer.take();
    let killed = Instant::now();
    c.kill_host(&lead_host);
    let kill_took = killed.elapsed();
    let mut new = None;
    wait_for("Patroni elects a new leader", Duration::from_secs(120), || {
        // Patroni shows the promoted member's new timeline on its next cycle.
        new = leader_on(&c, &survivors).filter(|(l, t)| *l != lead && *t > timeline_before);
        new.is_some()
    });
    // Both figures from the moment the kill was asked (`docker kill` of a
    // loaded host can itself take seconds).
    let elected = killed.elapsed();
    let (new_lead, timeline) = new.unwrap();
    let mut during = writer.take();
    let acked_at_election = during.acked.last().copied().unwrap_or(0);
    assert!(
        timeline > timeline_before,
        "a new timeline: {timeline} after {timeline_before}"
    );
    let new_host = hosts[new_lead.trim_start_matches("pg-").parse::<usize>().unwrap()].clone();
    // The operator on the new leader's host reports it, once.
    wait_for("the failover on the bus", Duration::from_secs(30), || {
        !leader_events(&events, &new_lead).is_empty()
    });
    let (told_at, ev) = leader_events(&events, &new_lead).last().cloned().unwrap();
    assert_eq!(ev.host, new_host, "{ev:?}");
    assert!(
        ev.reason.contains(&format!(
            "leader {lead} -> {new_lead} by failover ({lead} is no longer a member), timeline {timeline}"
        )),
        "{ev:?}"
    );
    // Writes resume through HAProxy.
    wait_for("writes through HAProxy again", Duration::from_secs(60), || {
        add(&mut during, writer.take());
        during.acked.last().is_some_and(|n| *n > acked_at_election)
    });
    std::thread::sleep(Duration::from_secs(3));
    add(&mut during, writer.take());
    drop(writer);
    let told = leader_events(&events, &new_lead)
        .iter()
        .filter(|(at, _)| *at >= killed)
        .count();
    assert_eq!(
        told,
        1,
        "one report of the new leader: {:#?}",
        leader_events(&events, &new_lead)
    );
    let stored: std::collections::BTreeSet<u64> = psql(&ips[0], 15432, "select v from acks")
        .unwrap()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let acked: Vec<u64> = before_kill.acked.iter().chain(&during.acked).copied().collect();
    let lost: Vec<u64> = acked.iter().copied().filter(|v| !stored.contains(v)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    // DescribeService shows the new leader and the surviving replica.
    let d = described(&c, &new_lead);
    assert!(
        d.iter().any(|m| m["host"] == new_host.as_str()
            && m["role"] == "leader"
            && m["timeline"] == timeline.to_string().as_str()),
        "DescribeService {new_lead}: {d:#?}"
    );
    let other = (0..3)
        .map(|i| format!("pg-{i}"))
        .find(|n| *n != lead && *n != new_lead)
        .unwrap();
    wait_for(
        &format!("{other} a replica in DescribeService"),
        Duration::from_secs(60),
        || {
            described(&c, &other).iter().any(|m| {
                m["role"]
                    .as_str()
                    .is_some_and(|r| r.contains("replica") || r == "sync_standby")
                    && m["timeline"] == timeline.to_string().as_str()
                    && m["lagBytes"].is_string()
            })
        },
    );
    let gap = during.longest_gap.as_secs_f64();
    fault(
        &format!("kill {lead_host}, the host of leader {lead}, while a client writes through HAProxy's write port"),
        &format!(
            "{new_lead} on {new_host} seen leading on a new timeline {:.1}s after the kill (docker kill took {:.1}s; timeline {timeline_before} -> {timeline}), told on the bus {:.1}s after the kill as a failover by {new_host}'s operator, once; writes resumed, longest gap {gap:.2}s; {} writes acknowledged, 0 lost, {} failed attempts",
            elected.as_secs_f64(),
            kill_took.as_secs_f64(),
            told_at.duration_since(killed).as_secs_f64(),
            acked.len(),
            during.failed.len()
        ),
    );

    // The host returns with an empty engine: its operator recreates the
    // member, which Patroni makes a replica of the new leader (a fresh
    // copy) streaming on the new timeline. The leader lists the member as
    // streaming already while its base backup copies (the backup's WAL
    // stream carries the member's name), so the wait is also for the
    // cluster's own view: the member running on the new timeline.
    let back = Instant::now();
    c.start_host(&lead_host);
    let new_ip = c.host_ip(&new_host);
    wait_for(
        &format!("{lead} streaming from {new_lead} again, running on timeline {timeline}"),
        Duration::from_secs(240),
        || {
            let addr = format!("{new_ip}:8008");
            let doc: serde_json::Value = infra_e2e::scenarios::get(&addr, "/patroni")
                .ok()
                .and_then(|b| serde_json::from_str(&b).ok())
                .unwrap_or(serde_json::Value::Null);
            let streaming = doc["replication"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|x| x["application_name"] == lead.as_str() && x["state"] == "streaming")
            });
            streaming
                && members(&c, &hosts).iter().any(|x| {
                    x["name"] == lead.as_str()
                        && (x["state"] == "running" || x["state"] == "streaming")
                        && x["timeline"].as_u64() == Some(timeline)
                })
        },
    );
    let rejoined = back.elapsed();
    let m = members(&c, &hosts);
    let old = m
        .iter()
        .find(|x| x["name"] == lead.as_str())
        .cloned()
        .unwrap_or_default();
    assert!(
        old["role"] != "leader" && old["timeline"].as_u64() == Some(timeline),
        "{lead} a replica on timeline {timeline}: {m:#?}"
    );
    assert_eq!(leader_on(&c, &hosts).map(|(l, _)| l), Some(new_lead.clone()), "{m:#?}");
    wait_for(
        &format!("{lead} a replica in DescribeService"),
        Duration::from_secs(60),
        || {
            described(&c, &lead).iter().any(|m| {
                m["host"] == lead_host.as_str()
                    && m["role"] != "leader"
                    && m["role"].is_string()
                    && m["timeline"] == timeline.to_string().as_str()
            })
        },
    );
    println!("DESCRIBE | {lead} | {}", serde_json::Value::Array(described(&c, &lead)));
    fault(
        &format!("start {lead_host} again (empty engine)"),
        &format!(
            "{lead} recreated by its operator and streaming from {new_lead} on timeline {timeline} {:.1}s after the start",
            rejoined.as_secs_f64()
        ),
    );
}
