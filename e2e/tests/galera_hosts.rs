//! The shipped MariaDB Galera stack (`compose/04-data/mariadb-galera`, no
//! file changed) across three hosts that joined by token with the labels
//! `zone=a|b|c`: the stack's placement group puts one node on each host,
//! each node gives Galera its host's private address (the operator's
//! `INFRA_HOST_ADDR`), where its ports are published, and the three form
//! one synced cluster over the hosts. A roll of the three nodes (a changed
//! environment in the user's override file) restarts one node at a time
//! (`infra.update-order: one-at-a-time`): no two nodes are ever down
//! together, and no write a node acknowledged is lost.
//!
//! ProxySQL, the profile's fourth service, is NOT run (no image here; see
//! `e2e/tests/galera.rs`): the client writes to the nodes themselves, moving
//! to the next node when one refuses.
//!
//! Images: the MariaDB stand-in (`infra-local/mariadb:10`,
//! `e2e/images/local.override.yml`) and the operators image.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use infra_e2e::hosts::{Cluster, ClusterOptions, OPERATORS_IMAGE};
use infra_e2e::shipped::{self, down_windows, galera_status as status_var, mariadb as sql, running as container_of};
use infra_test_support::load::Load;
use infra_test_support::wait_for;

const NODES: [&str; 3] = ["galera-1", "galera-2", "galera-3"];

#[test]
fn the_shipped_galera_stack_spreads_over_three_joined_hosts_and_rolls_one_node_at_a_time_losing_no_write() {
    let (_checkout, catalog) = infra_e2e::catalog_checkout();
    let mut opts = ClusterOptions::new(3)
        .images(&[OPERATORS_IMAGE, "infra-local/mariadb:10"])
        .bare_over(&catalog);
    opts.project = "glha".into();
    // The roll below changes the nodes' environment in an override file of
    // the user's.
    let pin = opts.user_override();
    let c = Cluster::start(opts);
    c.join_zones();
    let hosts = c.hosts();
    let selection = r#"{"selection":{"services":["galera-1","galera-2","galera-3"]},"timeoutSeconds":480}"#;

    let t0 = Instant::now();
    let progress = c.call("Deploy", selection);
    let done = progress.last().unwrap();
    assert_eq!(done["ready"], 3, "three nodes: {progress:#?}\n{}", c.all_logs());
    let deployed = t0.elapsed();
    // One node per host, by the stack's placement group over the zones.
    let at: Vec<String> = NODES
        .iter()
        .map(|n| {
            let on: Vec<&String> = hosts.iter().filter(|h| container_of(&c, h, n).is_some()).collect();
            assert_eq!(on.len(), 1, "{n} on one host: {on:?}");
            on[0].clone()
        })
        .collect();
    let distinct: std::collections::BTreeSet<&String> = at.iter().collect();
    assert_eq!(distinct.len(), 3, "one node per host: {at:?}");
    // One cluster of three synced members, each known to the others at its
    // host's private address (wsrep_node_address from INFRA_HOST_ADDR).
    for (i, n) in NODES.iter().enumerate() {
        wait_for(&format!("{n} sees 3 members"), Duration::from_secs(90), || {
            status_var(&c, &at[i], n, "wsrep_cluster_size") == "3"
        });
        assert_eq!(status_var(&c, &at[i], n, "wsrep_cluster_status"), "Primary", "{n}");
        assert_eq!(status_var(&c, &at[i], n, "wsrep_local_state_comment"), "Synced", "{n}");
    }
    let incoming = status_var(&c, &at[0], NODES[0], "wsrep_incoming_addresses");
    for h in &hosts {
        // `ip:port` (the port as the node learnt it; 0 before its first
        // client connection in MariaDB 10.11).
        assert!(
            incoming
                .split(',')
                .any(|a| a.starts_with(&format!("{}:", c.host_ip(h)))),
            "{h}'s address among the members': {incoming}"
        );
    }
    println!(
        "FAULT | deploy the shipped galera-1..3 on three joined hosts (zones a, b, c; no file changed) | one node per host, one synced cluster of 3 over the hosts' private addresses ({incoming}); {:.1}s",
        deployed.as_secs_f64()
    );

    // A client writes numbered rows, to the first node that takes them.
    sql(
        &c,
        &at[0],
        NODES[0],
        "app",
        "mariadb_app_password",
        "CREATE TABLE w (n BIGINT PRIMARY KEY)",
    )
    .expect("create the table");
    let cluster = Arc::new(c);
    let (cc, where_) = (cluster.clone(), at.clone());
    let current = Arc::new(Mutex::new(0usize));
    let cur = current.clone();
    let load = Load::start(1, Duration::from_millis(20), move |n| {
        let i = *cur.lock().unwrap();
        let r = sql(
            &cc,
            &where_[i],
            NODES[i],
            "app",
            "mariadb_app_password",
            &format!("INSERT INTO w VALUES ({n})"),
        );
        if r.is_err() {
            *cur.lock().unwrap() = (i + 1) % 3;
        }
        r.map(|_| ())
    });
    let c = cluster.as_ref();
    wait_for("the client writes", Duration::from_secs(60), || {
        sql(
            c,
            &at[0],
            NODES[0],
            "app",
            "mariadb_app_password",
            "SELECT COUNT(*) FROM w",
        )
        .is_ok_and(|n| n.parse::<u64>().unwrap_or(0) >= 10)
    });

    // The roll: every node's environment changes in the user's override.
    let since = shipped::unix_now();
    let mut pinned = String::from("services:\n");
    for n in NODES {
        pinned += &format!("  {n}:\n    environment:\n      ROLLED: \"2\"\n");
    }
    std::fs::write(&pin, pinned).unwrap();
    let t1 = Instant::now();
    let progress = c.call("Deploy", selection);
    let took = t1.elapsed();
    let done = progress.last().unwrap();
    assert_eq!(done["ready"], 3, "{progress:#?}\n{}", c.all_logs());
    assert_eq!(done["failed"].as_u64().unwrap_or(0), 0, "{done}");
    std::thread::sleep(Duration::from_secs(2));
    let w = load.take();
    drop(load);

    // Every node was recreated on the new spec.
    for (i, n) in NODES.iter().enumerate() {
        let id = container_of(c, &at[i], n).expect("running");
        let o = c.docker(
            &at[i],
            &["inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", &id],
        );
        assert!(
            String::from_utf8_lossy(&o.stdout).lines().any(|l| l == "ROLLED=2"),
            "{n} runs the new spec"
        );
    }
    // One node down at a time: each node's old container died only after
    // the node before it was started again.
    let members: Vec<(&str, &str)> = NODES.iter().zip(&at).map(|(n, h)| (*n, h.as_str())).collect();
    let windows = down_windows(c, &members, since);
    for pair in windows.windows(2) {
        assert!(
            pair[1].0 > pair[0].1,
            "{} went down before {} was back: {windows:?}",
            pair[1].2,
            pair[0].2
        );
    }
    let order: Vec<&str> = windows.iter().map(|w| w.2).collect();

    // Every acknowledged write is on every node.
    assert!(
        w.acked.len() > 20,
        "the client wrote during the roll: {} acked",
        w.acked.len()
    );
    for (i, n) in NODES.iter().enumerate() {
        wait_for(&format!("{n} synced after the roll"), Duration::from_secs(60), || {
            status_var(c, &at[i], n, "wsrep_local_state_comment") == "Synced"
        });
        let rows = sql(
            c,
            &at[i],
            n,
            "app",
            "mariadb_app_password",
            "SET SESSION wsrep_sync_wait = 1; SELECT n FROM w",
        )
        .expect("read the rows");
        let have: std::collections::BTreeSet<u64> = rows.lines().filter_map(|l| l.trim().parse().ok()).collect();
        let lost: Vec<u64> = w.acked.iter().copied().filter(|k| !have.contains(k)).collect();
        assert!(lost.is_empty(), "{n} lacks acknowledged writes {lost:?}");
    }
    let gap = w.longest_gap.as_secs_f64();
    println!(
        "FAULT | roll galera-1..3 (a changed environment) while a client writes to the nodes | one node at a time ({order:?}), never two down; {} writes acknowledged, 0 lost on any node, {} refused; longest gap {gap:.2}s; {:.1}s",
        w.acked.len(),
        w.failed.len(),
        took.as_secs_f64()
    );
    println!(
        "BENCH | galera roll over three hosts | total {:.1}s | write gap {gap:.2}s | acked {} | lost 0 | refused {}",
        took.as_secs_f64(),
        w.acked.len(),
        w.failed.len()
    );
}
