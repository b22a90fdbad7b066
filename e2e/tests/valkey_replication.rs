//! A Valkey primary with two replicas (no cluster mode), end to end across
//! three simulated hosts: the real coordinator, data operators, NATS,
//! Docker engines and grpcurl deploy `valkey-rep-0..2` (Redis 7.0
//! stand-ins, `infra-local/redis:7`) and HAProxy routing to the primary,
//! then roll the nodes to a new image while a client writes through the
//! proxy and records every write `WAIT 1` acknowledged: the replicas
//! restart first, the primary's role moves to a replica by `FAILOVER`
//! before the old primary restarts, and the old primary comes back as a
//! replica, from its config file (`BENCH | valkey replication roll ...`,
//! the figures in e2e/BENCH.md). And the catalog's own stack, deployed on
//! one host as a user would: roles from the first start's config files,
//! the proxy routing writes to the primary.
//!
//! Needs: `cargo build --workspace --bins`, `e2e/images/build.sh host nats
//! redis haproxy`.

use std::time::{Duration, Instant, SystemTime};

use infra_e2e::hosts::{Cluster, ClusterOptions};
use infra_e2e::scenarios::{
    VALKEY_REP_PROXY_PORT, ValkeyClient, ValkeyConn, ValkeyWriter, described, the_container, valkey_failovers_ms,
    valkey_key, valkey_rep_port, valkey_replication_catalog, valkey_roll_image, valkey_tags, wait_for,
};

fn fault(what: &str, survived: &str) {
    println!("FAULT | {what} | {survived}");
}

/// `INFO <section>` fields of the node at `addr`.
fn info(addr: &str, password: &str, section: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    ValkeyConn::open(addr, password)?.fields(&["INFO", section])
}

/// The one primary of `addrs`, once there is exactly one and it lists two
/// replicas online.
fn one_primary(addrs: &[String], password: &str) -> usize {
    let mut primary = None;
    wait_for("one primary with two replicas online", Duration::from_secs(30), || {
        let roles: Vec<String> = addrs
            .iter()
            .map(|a| {
                info(a, password, "replication")
                    .ok()
                    .and_then(|f| f.get("role").cloned())
                    .unwrap_or_default()
            })
            .collect();
        primary = roles.iter().position(|r| r == "master");
        roles.iter().filter(|r| *r == "master").count() == 1
            && info(&addrs[primary.unwrap()], password, "replication")
                .is_ok_and(|f| f.values().filter(|v| v.contains("state=online")).count() == 2)
    });
    primary.unwrap()
}

/// The acknowledged writes of `w` missing on any node of `addrs` (after
/// the replicas had time to catch up): `(node, missing)`.
fn missing(addrs: &[String], password: &str, w: &infra_e2e::scenarios::Writes) -> Vec<(usize, Vec<u64>)> {
    let tags = valkey_tags();
    let last = valkey_key(&tags, *w.acked.iter().max().expect("writes acknowledged"));
    wait_for("the replicas caught up", Duration::from_secs(20), || {
        addrs.iter().all(|a| {
            ValkeyClient::new(vec![a.clone()], password)
                .get(&last)
                .ok()
                .flatten()
                .is_some()
        })
    });
    let mut out = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let mut client = ValkeyClient::new(vec![a.clone()], password);
        let lost: Vec<u64> = w
            .acked
            .iter()
            .copied()
            .filter(|&n| client.get(&valkey_key(&tags, n)).ok().flatten() != Some(n.to_string()))
            .collect();
        if !lost.is_empty() {
            out.push((i, lost));
        }
    }
    out
}

#[test]
fn a_valkey_primary_with_two_replicas_over_three_hosts_rolls_replicas_first_hands_the_primary_role_over_by_failover_and_loses_no_wait_acknowledged_write()
 {
    let roll_image = valkey_roll_image();
    let mut opts =
        ClusterOptions::new(3)
            .tiers(&["data"])
            .images(&["infra-local/redis:7", roll_image, "infra-local/haproxy:2"]);
    opts.project = "vkrep".into();
    opts.overrides.clear();
    opts.env.push(("INFRA_HEARTBEAT_TTL_SECS".into(), "5".into()));
    let dir = tempfile::tempdir().unwrap();
    opts.compose_dir = dir.path().to_owned();
    let c = Cluster::start(opts);
    let hosts = c.hosts();
    let ips: Vec<String> = hosts.iter().map(|h| c.host_ip(h)).collect();
    let password = format!(
        "e2e-valkey-rep-{:x}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    valkey_replication_catalog(dir.path(), &ips, "infra-local/redis:7", &password);
    let addr = |i: usize| format!("{}:{}", ips[i], valkey_rep_port(i));
    let proxy = format!("{}:{VALKEY_REP_PROXY_PORT}", ips[0]);
    let selection = r#"{"selection":{"services":["valkey-rep-0","valkey-rep-1","valkey-rep-2","valkey-rep-proxy"]},"timeoutSeconds":300}"#;

    // Bring-up: the nodes healthy before the proxy; valkey-rep-0 the
    // primary with both replicas online; the proxy reaches it.
    let t0 = Instant::now();
    let progress = c.call("Deploy", selection);
    let done = progress.last().unwrap();
    assert_eq!(
        done["ready"],
        4,
        "three nodes and the proxy: {progress:#?}\n{}",
        c.all_logs()
    );
    wait_for(
        "valkey-rep-0 primary with two replicas online",
        Duration::from_secs(60),
        || {
            info(&addr(0), &password, "replication").is_ok_and(|f| {
                f.get("role").map(String::as_str) == Some("master")
                    && f.values().filter(|v| v.contains("state=online")).count() == 2
            })
        },
    );
    let run_id = |a: &str| info(a, &password, "server").ok().and_then(|f| f.get("run_id").cloned());
    wait_for("the proxy on the primary", Duration::from_secs(30), || {
        run_id(&proxy).is_some() && run_id(&proxy) == run_id(&addr(0))
    });
    let f = info(&addr(0), &password, "replication").unwrap();
    for i in 1..3 {
        assert!(
            f.values()
                .any(|v| v.starts_with(&format!("ip=valkey-rep-{i},port={},", valkey_rep_port(i)))),
            "the primary lists valkey-rep-{i} by its name: {f:?}"
        );
    }
    fault(
        "deploy valkey-rep-0..2 (one per host) and valkey-rep-proxy (HAProxy, host1)",
        &format!(
            "valkey-rep-0 primary, valkey-rep-1 and -2 its replicas (listed by name), the proxy on the primary; {:.1}s",
            t0.elapsed().as_secs_f64()
        ),
    );

    // Roll the nodes to a new image while a client writes SET + WAIT 1
    // through the proxy.
    let writer = ValkeyWriter::start(vec![proxy.clone()], &password, 1, 500);
    std::thread::sleep(Duration::from_secs(3));
    let before: Vec<String> = (0..3)
        .map(|i| the_container(&c, &hosts[i], &format!("valkey-rep-{i}")).0)
        .collect();
    valkey_replication_catalog(dir.path(), &ips, roll_image, &password);
    let t1 = Instant::now();
    let progress = c.call("Deploy", selection);
    let took = t1.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let (w, _) = writer.finish();
    let done = progress.last().unwrap();
    assert_eq!(done["ready"], 4, "{progress:#?}\n{}", c.all_logs());
    assert_eq!(done["failed"].as_u64().unwrap_or(0), 0, "{done}");

    // Every node restarted on the new image (a new container), the two
    // replicas before the old primary.
    let runs: Vec<(String, String, String)> = (0..3)
        .map(|i| the_container(&c, &hosts[i], &format!("valkey-rep-{i}")))
        .collect();
    for (i, (id, image, _)) in runs.iter().enumerate() {
        assert_eq!(image, roll_image, "valkey-rep-{i}");
        assert_ne!(*id, before[i], "valkey-rep-{i} restarted");
    }
    assert!(
        runs[1].2 < runs[0].2 && runs[2].2 < runs[0].2,
        "the replicas restarted before the primary: {runs:#?}"
    );

    // One failover, to a replica; the old primary, restarted after it,
    // came back as that replica's replica, from its config file; one
    // primary, two replicas online, and the proxy on the new primary.
    // The update order runs on the members' hosts: their data operators log it.
    let coord = c.tier_logs("data");
    assert_eq!(
        coord.matches("valkey: failover done").count(),
        1,
        "one failover: {}",
        coord
            .lines()
            .filter(|l| l.contains("valkey"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let addrs: Vec<String> = (0..3).map(addr).collect();
    let p = one_primary(&addrs, &password);
    assert_ne!(p, 0, "the primary's role moved off valkey-rep-0");
    let old = info(&addr(0), &password, "replication").unwrap();
    assert_eq!(old["role"], "slave", "{old:?}");
    assert_eq!(
        (
            old["master_host"].as_str(),
            old["master_port"].as_str(),
            old["master_link_status"].as_str()
        ),
        (
            format!("valkey-rep-{p}").as_str(),
            valkey_rep_port(p).to_string().as_str(),
            "up"
        ),
        "the old primary follows the new one by name: {old:?}"
    );
    wait_for("the proxy on the new primary", Duration::from_secs(30), || {
        run_id(&proxy).is_some() && run_id(&proxy) == run_id(&addr(p))
    });
    // DescribeService shows each member's role and link, from the data
    // operator of its host.
    wait_for("the roles in DescribeService", Duration::from_secs(30), || {
        (0..3).all(|i| {
            let want = if i == p {
                ("primary", "running")
            } else {
                ("replica", "streaming")
            };
            described(&c, &format!("valkey-rep-{i}")).iter().any(|m| {
                m["host"] == hosts[i].as_str() && m["kind"] == "valkey" && m["role"] == want.0 && m["state"] == want.1
            })
        })
    });
    // The roles are in the config files (what kept them over the restart),
    // made with mode 0600.
    for i in 0..3 {
        let id = &runs[i].0;
        let o = c.docker(
            &hosts[i],
            &[
                "exec",
                id.as_str(),
                "sh",
                "-c",
                "stat -c %a /data/valkey.conf; grep '^replicaof' /data/valkey.conf || true",
            ],
        );
        let out = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        let mut lines = out.lines();
        assert_eq!(
            lines.next(),
            Some("600"),
            "valkey-rep-{i}: /data/valkey.conf mode: {out}"
        );
        let role = lines.next().unwrap_or("");
        if i == p {
            assert_eq!(role, "", "valkey-rep-{i} (primary) has no replicaof line: {out}");
        } else {
            assert_eq!(
                role,
                format!("replicaof valkey-rep-{p} {}", valkey_rep_port(p)),
                "valkey-rep-{i}'s role in its config file"
            );
        }
    }

    // Every acknowledged write is on the new primary and on both replicas.
    assert!(w.acked.len() > 50, "the client wrote during the roll: {w:?}");
    let lost = missing(&addrs, &password, &w);
    assert!(lost.is_empty(), "acknowledged writes missing (node, writes): {lost:?}");
    let logs = c.all_logs();
    assert!(!logs.contains(&password), "the password in a log");
    let gap = w.longest_gap.as_secs_f64();
    let failover_ms = valkey_failovers_ms(&coord);
    let failed: Vec<&String> = w.failed.iter().take(5).collect();
    fault(
        "roll valkey-rep-0..2 to a new image (Deploy) while a client writes SET + WAIT 1 500 through the proxy",
        &format!(
            "{} writes acknowledged by a replica, 0 lost (checked on every node), {} attempts not acknowledged; replicas first, then FAILOVER to valkey-rep-{p}; the old primary came back as its replica from its config file; longest gap between acknowledged writes {gap:.2}s; {:.1}s",
            w.acked.len(),
            w.failed.len(),
            took.as_secs_f64()
        ),
    );
    println!(
        "BENCH | valkey replication roll | total {:.1}s | write gap {gap:.2}s | failover {failover_ms:?} ms | acked {} | lost 0 | not acknowledged {} (first: {failed:?})",
        took.as_secs_f64(),
        w.acked.len(),
        w.failed.len()
    );

    // A second roll (back to the first image) starts from the roles the
    // first one left: the new primary hands its role over in its turn.
    let writer = ValkeyWriter::start(vec![proxy.clone()], &password, 1_000_000, 500);
    std::thread::sleep(Duration::from_secs(2));
    valkey_replication_catalog(dir.path(), &ips, "infra-local/redis:7", &password);
    let t2 = Instant::now();
    let progress = c.call("Deploy", selection);
    let took2 = t2.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let (w2, _) = writer.finish();
    let done = progress.last().unwrap();
    assert_eq!(done["ready"], 4, "{progress:#?}\n{}", c.all_logs());
    assert_eq!(done["failed"].as_u64().unwrap_or(0), 0, "{done}");
    // The update order runs on the members' hosts: their data operators log it.
    let coord = c.tier_logs("data");
    assert_eq!(coord.matches("valkey: failover done").count(), 2, "one more failover");
    let p2 = one_primary(&addrs, &password);
    assert_ne!(p2, p, "valkey-rep-{p} handed its role over");
    let prev = info(&addr(p), &password, "replication").unwrap();
    assert_eq!(
        (prev["role"].as_str(), prev["master_host"].as_str()),
        ("slave", format!("valkey-rep-{p2}").as_str()),
        "{prev:?}"
    );
    wait_for("the proxy on the newest primary", Duration::from_secs(30), || {
        run_id(&proxy).is_some() && run_id(&proxy) == run_id(&addr(p2))
    });
    assert!(w2.acked.len() > 50, "the client wrote during the second roll: {w2:?}");
    let lost = missing(&addrs, &password, &w2);
    assert!(
        lost.is_empty(),
        "acknowledged writes missing after the second roll: {lost:?}"
    );
    assert!(!c.all_logs().contains(&password), "the password in a log");
    let gap2 = w2.longest_gap.as_secs_f64();
    fault(
        "roll valkey-rep-0..2 back to the first image (Deploy), the client writing through the proxy",
        &format!(
            "{} writes acknowledged, 0 lost, {} not acknowledged; FAILOVER from valkey-rep-{p} to valkey-rep-{p2}; longest gap {gap2:.2}s; {:.1}s",
            w2.acked.len(),
            w2.failed.len(),
            took2.as_secs_f64()
        ),
    );
    println!(
        "BENCH | valkey replication roll (second) | total {:.1}s | write gap {gap2:.2}s | failover {:?} ms | acked {} | lost 0 | not acknowledged {}",
        took2.as_secs_f64(),
        valkey_failovers_ms(&coord),
        w2.acked.len(),
        w2.failed.len()
    );
}

/// `valkey-cli <args>` in `container`, the password read there from the
/// node's secret file (never on a command line); stdout, trimmed.
fn cli(container: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(["exec", container, "sh", "-c"])
        .arg(
            r#"REDISCLI_AUTH="$(cat /run/secrets/valkey_replication_password)" exec valkey-cli --no-auth-warning "$@""#,
        )
        .arg("sh")
        .args(args)
        .output()
        .expect("docker");
    assert!(
        out.status.success(),
        "valkey-cli {args:?} in {container}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn field<'a>(info: &'a str, key: &str) -> &'a str {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or("")
}

/// The catalog's own stack (`compose/04-data/valkey-replication`, with the
/// local override's Redis 7 and HAProxy 2.6), on one host through grpcurl:
/// what a user deploying the profile gets.
#[test]
fn the_catalogs_valkey_replication_stack_comes_up_with_valkey_rep_0_primary_and_its_proxy_routing_writes_to_it() {
    let mut opts = infra_e2e::Options::local("vkrep1");
    opts.tiers = vec!["data".into()];
    let project = opts.project.clone();
    let p = infra_e2e::Platform::start(opts);
    let container = |s: &str| format!("{project}-{s}-1");
    let progress = p.call(
        "Deploy",
        r#"{"selection":{"profiles":["valkey-replication"],"services":["valkey-rep-proxy"]},"timeoutSeconds":240}"#,
    );
    let done = progress.last().unwrap();
    assert_eq!(done["ready"], 4, "three nodes and the proxy: {progress:#?}");

    // valkey-rep-0 is the primary, and lists both replicas by name.
    wait_for("valkey-rep-0 with two replicas online", Duration::from_secs(60), || {
        let info = cli(&container("valkey-rep-0"), &["INFO", "replication"]);
        field(&info, "role") == "master" && info.matches("state=online").count() == 2
    });
    let info = cli(&container("valkey-rep-0"), &["INFO", "replication"]);
    for i in 1..3 {
        assert!(
            info.contains(&format!("ip=valkey-rep-{i},port=6379,state=online")),
            "valkey-rep-{i} listed by name: {info}"
        );
        let r = cli(&container(&format!("valkey-rep-{i}")), &["INFO", "replication"]);
        assert_eq!(
            (
                field(&r, "role"),
                field(&r, "master_host"),
                field(&r, "master_link_status")
            ),
            ("slave", "valkey-rep-0", "up"),
            "{r}"
        );
    }
    // The first start wrote each role into the node's config file, mode
    // 0600, and the node runs from it.
    for (i, role) in [
        (0, ""),
        (1, "replicaof valkey-rep-0 6379"),
        (2, "replicaof valkey-rep-0 6379"),
    ] {
        let c = container(&format!("valkey-rep-{i}"));
        let out = std::process::Command::new("docker")
            .args([
                "exec",
                &c,
                "sh",
                "-c",
                "stat -c %a /data/valkey.conf; cat /data/valkey.conf",
            ])
            .output()
            .expect("docker");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("600\n"), "valkey-rep-{i}: {text}");
        assert_eq!(text.lines().nth(1).unwrap_or(""), role, "valkey-rep-{i}: {text}");
        assert_eq!(field(&cli(&c, &["INFO", "server"]), "config_file"), "/data/valkey.conf");
    }
    // Through the proxy (by its name, from a node on the network): the
    // primary answers, a write lands and reaches both replicas.
    let via = |args: &[&str]| {
        let mut a = vec!["-h", "valkey-rep-proxy"];
        a.extend_from_slice(args);
        cli(&container("valkey-rep-1"), &a)
    };
    wait_for("the proxy on the primary", Duration::from_secs(30), || {
        field(&via(&["INFO", "replication"]), "role") == "master"
    });
    assert_eq!(via(&["SET", "through-the-proxy", "yes"]), "OK");
    for i in 1..3 {
        wait_for(&format!("the write on valkey-rep-{i}"), Duration::from_secs(10), || {
            cli(&container(&format!("valkey-rep-{i}")), &["GET", "through-the-proxy"]) == "yes"
        });
    }
    // The password is in no container's configuration.
    let password = std::fs::read_to_string(infra_e2e::repo_root().join("compose/secrets/valkey_replication_password"))
        .expect("run e2e/images/make-dev-secrets.sh");
    let password = password.trim();
    assert!(password.len() >= 8, "a real password to look for");
    for s in ["valkey-rep-0", "valkey-rep-1", "valkey-rep-2", "valkey-rep-proxy"] {
        let out = std::process::Command::new("docker")
            .args(["inspect", &container(s)])
            .output()
            .expect("docker");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(password),
            "the password in docker inspect of {s}"
        );
    }
}
