//! The Valkey cluster, end to end: the real coordinator, data operator,
//! NATS, Docker engine and grpcurl deploy the six nodes of
//! `compose/04-data/valkey-cluster` (Redis 7.0 stand-ins,
//! `infra-local/redis:7`), and the data operator forms them into a cluster
//! of three primaries and three replicas, once: on one host, and across
//! three simulated hosts, where the cluster then rolls to a new image
//! under a client that records every write `WAIT` acknowledged (`BENCH |
//! valkey roll ...`, the figures in e2e/BENCH.md).
//!
//! Needs: `cargo build --workspace --bins`, `e2e/images/build.sh redis`
//! (and `host` for the hosts), `e2e/images/make-dev-secrets.sh`.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use infra_e2e::hosts::{Cluster, ClusterOptions, OPERATORS_IMAGE};
use infra_e2e::scenarios::{
    ValkeyClient, ValkeyConn, ValkeyWriter, the_container, valkey_failovers_ms, valkey_key, valkey_roll_image,
    valkey_tags, wait_for,
};
use infra_e2e::{Options, Platform};
use infra_proto::bus::v1::{Event, EventKind};

const NODES: [&str; 6] = [
    "valkey-node-0",
    "valkey-node-1",
    "valkey-node-2",
    "valkey-node-3",
    "valkey-node-4",
    "valkey-node-5",
];

/// `valkey-cli <args>` in a node container, on the node's own port (its
/// `VALKEY_PORT`), authenticated from the node's secret file (the password
/// never on a command line here either).
fn cli(container: &str, args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(["exec", container, "sh", "-c"])
        .arg(
            r#"REDISCLI_AUTH="$(cat /run/secrets/valkey_cluster_password)" exec valkey-cli -p "$VALKEY_PORT" --no-auth-warning "$@""#,
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

fn nanos(t: &prost_types::Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

fn now_nanos() -> i128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

fn creations(events: &Mutex<Vec<Event>>) -> Vec<Event> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind() == EventKind::Healthy && e.reason.starts_with("cluster valkey-cluster created"))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_operator_forms_the_six_valkey_nodes_into_one_cluster_once() {
    let mut opts = Options::local("valkey");
    opts.tiers = vec!["data".into()];
    let project = opts.project.clone();
    let host = opts.host.clone();
    let mut p = tokio::task::spawn_blocking(move || Platform::start(opts))
        .await
        .unwrap();
    let container = |node: &str| format!("{project}-{node}-1");
    let password = std::fs::read_to_string(infra_e2e::repo_root().join("compose/secrets/valkey_cluster_password"))
        .expect("compose/secrets/valkey_cluster_password (run e2e/images/make-dev-secrets.sh)");
    let password = password.trim().to_owned();
    assert!(password.len() >= 8, "a real password to look for");

    let nats = async_nats::connect(p.nats.url()).await.unwrap();
    let events = infra_test_support::events::collect(&nats, format!("infra.events.{host}.>")).await;

    let selection = r#"{"selection":{"services":["valkey-node-0","valkey-node-1","valkey-node-2","valkey-node-3","valkey-node-4","valkey-node-5"]},"timeoutSeconds":180}"#;
    let progress = tokio::task::block_in_place(|| p.call("Deploy", selection));
    let done = progress
        .iter()
        .find(|m| m["phase"] == "PHASE_DONE")
        .expect("a DONE message");
    assert_eq!(
        done["ready"].as_u64(),
        Some(6),
        "all six nodes ready: {progress:#?}\n{}",
        p.all_logs()
    );

    // Within a bounded time, every node sees a formed cluster (the node
    // that ran the creation may say ok a moment before the others).
    let deadline = Instant::now() + Duration::from_secs(60);
    let ok_at = loop {
        let info: Vec<String> = NODES.iter().map(|n| cli(&container(n), &["cluster", "info"])).collect();
        if info.iter().all(|i| field(i, "cluster_state") == "ok") {
            break now_nanos();
        }
        assert!(
            Instant::now() < deadline,
            "no cluster on every node within 60 s: {info:#?}\n{}",
            p.log("data-operator")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for node in NODES {
        let info = cli(&container(node), &["cluster", "info"]);
        assert_eq!(field(&info, "cluster_state"), "ok", "{node}: {info}");
        assert_eq!(field(&info, "cluster_size"), "3", "{node}: {info}");
        assert_eq!(field(&info, "cluster_known_nodes"), "6", "{node}: {info}");
        assert_eq!(field(&info, "cluster_slots_assigned"), "16384", "{node}: {info}");
    }
    // Roles reach every node's view by gossip, a moment after the state is
    // ok: wait for them, bounded.
    let role = |nodes: &str, r: &str| {
        nodes
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(2)
                    .is_some_and(|f| f.split(',').any(|x| x == r))
            })
            .count()
    };
    let roles_by = Instant::now() + Duration::from_secs(20);
    let nodes = loop {
        let nodes = cli(&container("valkey-node-0"), &["cluster", "nodes"]);
        if (role(&nodes, "master"), role(&nodes, "slave")) == (3, 3) || Instant::now() > roles_by {
            break nodes;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!((role(&nodes, "master"), role(&nodes, "slave")), (3, 3), "{nodes}");
    // The nodes announce their service names (clients follow redirections
    // by DNS name).
    for node in NODES {
        assert!(
            nodes.contains(&format!(",{node} ")),
            "{node} announced by name: {nodes}"
        );
    }

    // A key written through one node is read through another (-c follows
    // MOVED).
    assert_eq!(
        cli(
            &container("valkey-node-1"),
            &["-c", "-h", "valkey-node-1", "set", "e2e:greeting", "hello"]
        ),
        "OK"
    );
    assert_eq!(
        cli(
            &container("valkey-node-4"),
            &["-c", "-h", "valkey-node-4", "get", "e2e:greeting"]
        ),
        "hello"
    );

    // Time from the last node healthy (the operator's first HEALTHY event
    // per node) to cluster_state:ok.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let last_healthy = NODES
        .iter()
        .map(|n| {
            events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.kind() == EventKind::Healthy && e.service == *n && !e.reason.starts_with("cluster "))
                .filter_map(|e| e.time.as_ref().map(nanos))
                .min()
                .unwrap_or_else(|| panic!("a healthy event for {n}"))
        })
        .max()
        .unwrap();
    let took = Duration::from_nanos((ok_at - last_healthy).max(0) as u64);
    let created = creations(&events);
    let created_after = created
        .first()
        .and_then(|e| e.time.as_ref())
        .map(|t| Duration::from_nanos((nanos(t) - last_healthy).max(0) as u64));
    println!(
        "valkey cluster: last node healthy -> creation event {created_after:?}, -> cluster_state:ok on every node {took:?}"
    );
    // A bound, not a speed check (the figure is printed above): on a loaded
    // machine each of the poll's six `docker exec`s takes seconds.
    assert!(
        took < Duration::from_secs(90),
        "cluster formed {took:?} after the last node was healthy"
    );

    assert_eq!(created.len(), 1, "one creation event: {created:#?}");
    assert_eq!(
        created[0].reason, "cluster valkey-cluster created: 3 primaries, 3 replicas",
        "{created:#?}"
    );

    // A second deploy changes nothing.
    let again = tokio::task::block_in_place(|| p.call("Deploy", selection));
    assert!(again.iter().any(|m| m["phase"] == "PHASE_DONE"), "{again:#?}");

    // A restarted data operator (new process, no memory) reads the formed
    // cluster and leaves it alone.
    p.stop("data-operator");
    let state = p.dir.path().join("state");
    let log2 = p.dir.path().join("data-operator-restarted.log");
    let grpc_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut restarted = Command::new(infra_e2e::bin_dir("debug").join("data-operator"))
        .args(["--host", &host, "--state-dir", &state.display().to_string()])
        .args(["--grpc-listen", &format!("127.0.0.1:{grpc_port}")])
        .env("INFRA_NATS__URL", p.nats.url())
        .env("INFRA_LOG__FORMAT", "json")
        .env("INFRA_HEARTBEAT_SECS", "1")
        .env("INFRA_HEARTBEAT_TTL_SECS", "5")
        .env("INFRA_METRICS_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log2).unwrap())
        .spawn()
        .expect("restart the data operator");
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = std::fs::read_to_string(&log2).unwrap_or_default();
        if log.contains("valkey cluster formed; left alone") {
            break log;
        }
        if Instant::now() > deadline {
            let _ = restarted.kill();
            panic!("the restarted operator did not look at the cluster within 30 s:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    tokio::time::sleep(Duration::from_secs(6)).await; // one more pass
    let _ = restarted.kill();
    let _ = restarted.wait();
    let created = creations(&events);
    assert_eq!(
        created.len(),
        1,
        "still one creation after a redeploy and a restart: {created:#?}"
    );
    let info = cli(&container("valkey-node-5"), &["cluster", "info"]);
    assert_eq!(field(&info, "cluster_state"), "ok", "{info}");
    assert_eq!(
        cli(
            &container("valkey-node-2"),
            &["-c", "-h", "valkey-node-2", "get", "e2e:greeting"]
        ),
        "hello",
        "the data survived"
    );

    // No failure reported, and the password is nowhere: not in a log, an
    // event, nor the commands Docker recorded for the node containers.
    let events = events.lock().unwrap().clone();
    let failures: Vec<_> = events
        .iter()
        .filter(|e| e.kind() == EventKind::ReconcileFailed && e.reason.contains("valkey"))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    for e in &events {
        assert!(!e.reason.contains(&password), "password in event {e:?}");
    }
    let logs = format!("{}\n{log}", p.all_logs());
    assert!(!logs.contains(&password), "password in a log");
    assert!(
        logs.contains("cluster valkey-cluster created: 3 primaries, 3 replicas"),
        "{logs}"
    );
}

/// `INFO replication` / `CLUSTER INFO` fields of node `addr`.
fn info(addr: &str, password: &str, section: &[&str]) -> Result<std::collections::BTreeMap<String, String>, String> {
    ValkeyConn::open(addr, password)?.fields(section)
}

fn role(addr: &str, password: &str) -> String {
    info(addr, password, &["INFO", "replication"])
        .ok()
        .and_then(|f| f.get("role").cloned())
        .unwrap_or_default()
}

/// The host (index into `c.hosts()`) that runs `service`, found on the
/// hosts' engines: placement chose it.
fn host_of(c: &Cluster, service: &str) -> usize {
    let found: Vec<usize> = c
        .hosts()
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            let o = c.docker(
                h,
                &["ps", "-q", "--filter", &format!("label=io.infra.service={service}")],
            );
            !String::from_utf8_lossy(&o.stdout).trim().is_empty()
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(found.len(), 1, "{service} runs on exactly one host: {found:?}");
    found[0]
}

#[test]
fn a_valkey_cluster_over_three_hosts_rolls_to_a_new_image_replicas_first_each_primary_failed_over_before_it_restarts_and_no_wait_acknowledged_write_is_lost()
 {
    // The shipped stack, unchanged, on three hosts that joined by token
    // with zones a, b, c; the coordinator reaches nothing but NATS.
    let roll_image = valkey_roll_image();
    let (_checkout, catalog) = infra_e2e::catalog_checkout();
    let mut opts = ClusterOptions::new(3)
        .images(&[OPERATORS_IMAGE, "infra-local/redis:7", roll_image])
        .bare_over(&catalog);
    opts.project = "vkha".into();
    // The roll below pins a new image in an override file of the user's.
    let pin = opts.user_override();
    let c = Cluster::start(opts);
    c.join_zones();
    let hosts = c.hosts();
    let ips: Vec<String> = hosts.iter().map(|h| c.host_ip(h)).collect();
    let password = std::fs::read_to_string(catalog.join("secrets/valkey_cluster_password"))
        .expect("compose/secrets/valkey_cluster_password (run e2e/images/make-dev-secrets.sh)")
        .trim()
        .to_owned();
    let selection = r#"{"selection":{"services":["valkey-node-0","valkey-node-1","valkey-node-2","valkey-node-3","valkey-node-4","valkey-node-5"]},"timeoutSeconds":300}"#;

    let t0 = Instant::now();
    let progress = c.call("Deploy", selection);
    let done = progress.last().unwrap();
    assert_eq!(done["ready"], 6, "six nodes: {progress:#?}\n{}", c.all_logs());
    // The stack's placement group spreads the six nodes over the zones:
    // two per host.
    let at: Vec<usize> = (0..6).map(|i| host_of(&c, &format!("valkey-node-{i}"))).collect();
    for (h, name) in hosts.iter().enumerate() {
        assert_eq!(at.iter().filter(|&&x| x == h).count(), 2, "two nodes on {name}: {at:?}");
    }
    // Node i listens on 7000 + i, published on its host's private address.
    let addr = |i: usize| format!("{}:{}", ips[at[i]], 7000 + i);
    let addrs: Vec<String> = (0..6).map(addr).collect();
    // The data operator of valkey-node-0's host forms the cluster from
    // nodes on three hosts: every node sees it ok, 3 primaries 3 replicas.
    let mut nodes;
    let by = Instant::now() + Duration::from_secs(90);
    loop {
        let infos: Vec<_> = addrs.iter().map(|a| info(a, &password, &["CLUSTER", "INFO"])).collect();
        let ok = infos.iter().all(|f| {
            f.as_ref().is_ok_and(|f| {
                f.get("cluster_state").map(String::as_str) == Some("ok")
                    && f.get("cluster_known_nodes").map(String::as_str) == Some("6")
            })
        });
        nodes = ValkeyConn::open(&addrs[0], &password)
            .and_then(|mut c| c.text(&["CLUSTER", "NODES"]))
            .unwrap_or_default();
        let count = |r: &str| {
            nodes
                .lines()
                .filter(|l| {
                    l.split_whitespace()
                        .nth(2)
                        .is_some_and(|f| f.split(',').any(|x| x == r) && !f.split(',').any(|x| x.starts_with("fail")))
                })
                .count()
        };
        if ok && count("master") == 3 && count("slave") == 3 {
            break;
        }
        assert!(
            Instant::now() < by,
            "no cluster across three hosts within 90 s: {infos:#?}\n{nodes}\n{}\n{}",
            c.tier_logs("data"),
            c.coordinator_log(0)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let formed = t0.elapsed();
    // The cluster's password went to the hosts over the bus, and no NATS
    // server's store holds it in plain text (JetStream encrypted at rest).
    assert!(
        !c.nats_store_holds(password.as_bytes()),
        "a NATS server's store holds the valkey password in plain text"
    );
    // Every node announces its host's private address (the INFRA_HOST_ADDR
    // its operator gave it), its own port and its name.
    for (i, a) in addrs.iter().enumerate() {
        assert!(
            nodes.contains(&format!(" {a}@{},valkey-node-{i} ", 17000 + i)),
            "{a} announced: {nodes}"
        );
    }
    let primaries: Vec<usize> = (0..6).filter(|&i| role(&addr(i), &password) == "master").collect();
    let replicas: Vec<usize> = (0..6).filter(|i| !primaries.contains(i)).collect();
    assert_eq!(primaries.len(), 3, "{nodes}");
    // A primary and its replica are never on one host.
    for &r in &replicas {
        let f = info(&addr(r), &password, &["INFO", "replication"]).unwrap();
        let p = format!("{}:{}", f["master_host"], f["master_port"]);
        // By address, or by name where the node follows its primary's.
        let pi = (0..6)
            .find(|&i| p == addrs[i] || p == format!("valkey-node-{i}:{}", 7000 + i))
            .unwrap_or_else(|| panic!("node {r}'s primary {p} is a member: {nodes}"));
        assert_ne!(at[pi], at[r], "node {r} replicates node {pi} on its own host");
    }
    fault(
        "deploy the shipped valkey-node-0..5 on three joined hosts (zones a, b, c; no file changed)",
        &format!(
            "two nodes per host by the stack's placement group; the data operator formed one cluster of 3 primaries (nodes {primaries:?}) and 3 replicas, each replica on another host than its primary; {:.1}s",
            formed.as_secs_f64()
        ),
    );

    // Roll every node to the new image while a client writes with WAIT 1.
    // Redirections name the nodes (`valkey-node-3:7003`): resolved as the
    // names resolve on the hosts, to the node's host's address.
    let names: std::collections::BTreeMap<String, String> = (0..6)
        .map(|i| (format!("valkey-node-{i}:{}", 7000 + i), addr(i)))
        .collect();
    let writer = ValkeyWriter::start_naming(addrs.clone(), names.clone(), &password, 1, 500);
    std::thread::sleep(Duration::from_secs(3));
    let mut pinned = String::from("services:\n");
    for i in 0..6 {
        pinned += &format!("  valkey-node-{i}:\n    image: {roll_image}\n");
    }
    std::fs::write(&pin, pinned).unwrap();
    let t1 = Instant::now();
    let progress = c.call("Deploy", selection);
    let took = t1.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let (w, gaps) = writer.finish();
    let done = progress.last().unwrap();
    assert_eq!(done["ready"], 6, "{progress:#?}\n{}", c.all_logs());
    assert_eq!(done["failed"].as_u64().unwrap_or(0), 0, "{done}");
    let rolled = progress
        .iter()
        .filter(|m| m["message"].as_str().is_some_and(|t| t.contains("caught up")))
        .count();
    assert_eq!(rolled, 6, "six members rolled: {progress:#?}");

    // Every node runs the new image; the replicas restarted before any
    // primary did.
    let runs: Vec<(String, String, String)> = (0..6)
        .map(|i| the_container(&c, &hosts[at[i]], &format!("valkey-node-{i}")))
        .collect();
    for (i, (_, image, _)) in runs.iter().enumerate() {
        assert_eq!(image, roll_image, "valkey-node-{i}");
    }
    let last_replica = replicas.iter().map(|&i| &runs[i].2).max().unwrap();
    let first_primary = primaries.iter().map(|&i| &runs[i].2).min().unwrap();
    assert!(
        last_replica < first_primary,
        "replicas {replicas:?} restarted before primaries {primaries:?}: {runs:#?}"
    );
    // Each primary's role moved by a manual failover before its node
    // restarted: every old primary is now a replica, every old replica a
    // primary that (since its own restart, which came first) started a
    // manual failover (CLUSTER FAILOVER sends MFSTART).
    wait_for("every node ok after the roll", Duration::from_secs(30), || {
        addrs.iter().all(|a| {
            info(a, &password, &["CLUSTER", "INFO"])
                .is_ok_and(|f| f.get("cluster_state").map(String::as_str) == Some("ok"))
        })
    });
    for &p in &primaries {
        assert_eq!(
            role(&addr(p), &password),
            "slave",
            "old primary valkey-node-{p} now a replica"
        );
    }
    for &r in &replicas {
        assert_eq!(
            role(&addr(r), &password),
            "master",
            "old replica valkey-node-{r} now a primary"
        );
        let ci = info(&addr(r), &password, &["CLUSTER", "INFO"]).unwrap();
        assert_eq!(
            ci.get("cluster_stats_messages_mfstart_sent").map(String::as_str),
            Some("1"),
            "valkey-node-{r} started one manual failover: {ci:?}"
        );
    }
    // The update order runs on the members' hosts: their data operators log it.
    let coord = c.tier_logs("data");
    let failovers = valkey_failovers_ms(&coord);
    assert_eq!(
        coord.matches("valkey: failover done").count(),
        3,
        "three failovers: {failovers:?}"
    );

    // Every acknowledged write is there.
    assert!(w.acked.len() > 50, "the client wrote during the roll: {w:?}");
    let tags = valkey_tags();
    let mut client = ValkeyClient::new(addrs.clone(), &password).naming(names);
    let lost: Vec<u64> = w
        .acked
        .iter()
        .copied()
        .filter(|&n| client.get(&valkey_key(&tags, n)).ok().flatten() != Some(n.to_string()))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged writes lost: {} of {}: {lost:?}",
        lost.len(),
        w.acked.len()
    );
    assert!(!c.all_logs().contains(&password), "the password in a log");
    let gap = w.longest_gap.as_secs_f64();
    fault(
        "roll valkey-node-0..5 to a new image (Deploy) while a client writes SET + WAIT 1 500 over the three primaries",
        &format!(
            "{} writes acknowledged by a replica, 0 lost, {} attempts not acknowledged; replicas first, then each primary after CLUSTER FAILOVER to its replica (roles swapped); longest gap between acknowledged writes {gap:.2}s (per primary's slots {:.2}s, {:.2}s, {:.2}s); {:.1}s",
            w.acked.len(),
            w.failed.len(),
            gaps[0].as_secs_f64(),
            gaps[1].as_secs_f64(),
            gaps[2].as_secs_f64(),
            took.as_secs_f64()
        ),
    );
    println!(
        "BENCH | valkey roll | total {:.1}s | write gap {gap:.2}s | per-primary gap max {:.2}s | failovers {failovers:?} ms | acked {} | lost {} | not acknowledged {}",
        took.as_secs_f64(),
        gaps.iter().max().unwrap().as_secs_f64(),
        w.acked.len(),
        lost.len(),
        w.failed.len()
    );
}

fn fault(what: &str, survived: &str) {
    println!("FAULT | {what} | {survived}");
}
