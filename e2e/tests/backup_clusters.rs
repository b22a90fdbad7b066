//! Backups of the shipped clusters, each taken once for the whole group
//! (`x-backup.group`): the Patroni cluster (`pg-cluster`: pg_dumpall in the
//! leader's container, restored into the leader), the Galera cluster
//! (`galera`: mariadb-dump in a synced node's container, restored through
//! one) and the Valkey primary with its replicas (`valkey-replication`: an
//! RDB from a replica, restored into the primary, which the replicas
//! resync from), stored in the shipped MinIO's bucket (rclone's S3 server stands
//! in for MinIO here, and the catalog's stand-ins for Spilo and MariaDB:
//! e2e/images/local.override.yml).
//!
//! Known data is written to each cluster, backed up, more written after;
//! then both clusters are removed with every volume (etcd's too, so
//! Patroni starts a new cluster) and deployed again, empty; the restores
//! bring back every row written before the backup and none written after,
//! on the leader and on a replica, on every Galera and Valkey node. A member named
//! on its own is refused with the group's name; every backup and restore
//! is an event that names the member it ran in.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use infra_e2e::hosts::{Cluster, ClusterOptions};
use infra_e2e::shipped::{galera_status, mariadb, running};
use serde_json::Value;

const PG: [&str; 3] = ["pg-0", "pg-1", "pg-2"];
const GALERA: [&str; 3] = ["galera-1", "galera-2", "galera-3"];
/// Rows of each cluster's known table.
const PG_ROWS: u64 = 50_000;
const GALERA_ROWS: u64 = 20_000;
const VALKEY: [&str; 3] = ["valkey-rep-0", "valkey-rep-1", "valkey-rep-2"];
/// Keys written to the Valkey primary.
const KEYS: u64 = 20_000;
/// The clusters' services (MinIO stays when they are removed).
const CLUSTERS: [&str; 12] = [
    "etcd-1",
    "etcd-2",
    "etcd-3",
    "pg-0",
    "pg-1",
    "pg-2",
    "galera-1",
    "galera-2",
    "galera-3",
    "valkey-rep-0",
    "valkey-rep-1",
    "valkey-rep-2",
];

/// `psql` as the superuser in `service`'s container, database `db`.
fn psql(c: &Cluster, host: &str, service: &str, db: &str, sql: &str) -> Result<String, String> {
    let id = running(c, host, service).ok_or_else(|| format!("{service} does not run"))?;
    let o = c.docker(
        host,
        &[
            "exec",
            &id,
            "psql",
            "-X",
            "-q",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
        ],
    );
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim().to_owned())
    }
}

/// The member whose Patroni answers `/primary` with 200.
fn leader(c: &Cluster, host: &str) -> Option<&'static str> {
    PG.into_iter().find(|m| {
        running(c, host, m).is_some_and(|id| {
            let o = c.docker(
                host,
                &[
                    "exec",
                    &id,
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://127.0.0.1:8008/primary",
                ],
            );
            String::from_utf8_lossy(&o.stdout).trim() == "200"
        })
    })
}

fn root_sql(c: &Cluster, host: &str, node: &str, sql: &str) -> Result<String, String> {
    mariadb(c, host, node, "root", "mariadb_root_password", sql)
}

/// `valkey-cli` in `node`'s container, logged in.
fn valkey(c: &Cluster, host: &str, node: &str, cmd: &str) -> String {
    let Some(id) = running(c, host, node) else {
        return String::new();
    };
    let o = c.docker(
        host,
        &[
            "exec",
            &id,
            "sh",
            "-c",
            &format!("valkey-cli -a \"$(cat /run/secrets/valkey_replication_password)\" --no-auth-warning {cmd}"),
        ],
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn deploy(c: &Cluster) {
    let done = c.call(
        "Deploy",
        &serde_json::json!({
            "selection": {"services": (["minio"].into_iter().chain(CLUSTERS).collect::<Vec<_>>())},
            "timeoutSeconds": 600
        })
        .to_string(),
    );
    assert_eq!(done.last().unwrap()["ready"], 13, "{done:#?}\n{}", c.tier_logs("data"));
}

fn wait_for(what: &str, limit: Duration, ok: impl FnMut() -> bool) {
    infra_test_support::wait_for(what, limit, ok);
}

#[test]
#[allow(clippy::too_many_lines)] // one story, told in order
fn the_shipped_patroni_galera_and_valkey_clusters_are_backed_up_once_each_and_restored_into_new_ones() {
    let (_checkout, catalog) = infra_e2e::catalog_checkout();
    let mut opts = ClusterOptions::new(2).tiers(&["data"]).images(&[
        "infra-local/etcd:3",
        "infra-local/patroni:3",
        "infra-local/mariadb:10",
        "infra-local/redis:7",
        "infra-local/s3:1",
    ]);
    opts.compose_dir = catalog.clone();
    opts.project = "bkc".into();
    // The user's override: Patroni and Galera on host1, MinIO and the
    // Valkey set on host2 (host1's CPUs are all reserved), so their
    // backups reach the store on another host, and Valkey's on its own.
    let user = opts.user_override();
    let mut text = String::from(
        "services:\n  minio:\n    deploy:\n      placement:\n        constraints: [\"node.hostname == host2\"]\n",
    );
    let pin = |s: &str, h: &str| {
        format!("  {s}:\n    deploy:\n      placement:\n        constraints: [\"node.hostname == {h}\"]\n")
    };
    for s in ["etcd-1", "etcd-2", "etcd-3"].into_iter().chain(PG).chain(GALERA) {
        text += &pin(s, "host1");
    }
    for s in VALKEY {
        text += &pin(s, "host2");
    }
    std::fs::write(&user, text).unwrap();
    let c = Cluster::start(opts);
    let host = c.hosts()[0].clone();
    assert_eq!(host, "host1");
    let vhost = "host2";
    let t0 = Instant::now();
    deploy(&c);
    let first_up = t0.elapsed();

    // ---------------------------------------------------- known data
    let mut pg_leader = "";
    wait_for("a Patroni leader", Duration::from_secs(120), || {
        leader(&c, &host).is_some_and(|l| {
            pg_leader = l;
            true
        })
    });
    psql(&c, &host, pg_leader, "postgres", "CREATE DATABASE app").unwrap();
    psql(
        &c,
        &host,
        pg_leader,
        "app",
        &format!(
            "CREATE TABLE t (id bigint PRIMARY KEY, v text); INSERT INTO t SELECT g, repeat(md5(g::text), 4) FROM \
             generate_series(1, {PG_ROWS}) g; CREATE TABLE w (id bigint PRIMARY KEY, phase text); INSERT INTO w \
             VALUES (1, 'before')"
        ),
    )
    .unwrap();
    let pg_digest = psql(
        &c,
        &host,
        pg_leader,
        "app",
        "SELECT md5(string_agg(v, '' ORDER BY id)) FROM t",
    )
    .unwrap();
    for node in GALERA {
        wait_for(&format!("{node} synced"), Duration::from_secs(120), || {
            galera_status(&c, &host, node, "wsrep_local_state_comment") == "Synced"
        });
    }
    root_sql(
        &c,
        &host,
        "galera-2",
        &format!(
            "SET SESSION max_recursive_iterations = 1000000; CREATE TABLE g (id INT PRIMARY KEY, v VARCHAR(64)) \
             ENGINE=InnoDB; INSERT INTO g WITH RECURSIVE s(n) AS \
             (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {GALERA_ROWS}) SELECT n, md5(n) FROM s; CREATE TABLE \
             gw (id INT PRIMARY KEY, phase VARCHAR(16)) ENGINE=InnoDB; INSERT INTO gw VALUES (1, 'before')"
        ),
    )
    .unwrap();
    let galera_digest = |node: &str| {
        root_sql(
            &c,
            &host,
            node,
            "SELECT COUNT(*), MD5(GROUP_CONCAT(v ORDER BY id SEPARATOR '')) FROM g",
        )
    };
    // (20,000 values of 32 bytes are within group_concat_max_len, 1 MB.)
    let galera_before = galera_digest("galera-1").unwrap();
    assert!(galera_before.starts_with(&GALERA_ROWS.to_string()), "{galera_before}");
    let replicas_up = |c: &Cluster| valkey(c, vhost, "valkey-rep-0", "info replication").contains("connected_slaves:2");
    wait_for("both Valkey replicas connected", Duration::from_secs(120), || {
        replicas_up(&c)
    });
    valkey(
        &c,
        vhost,
        "valkey-rep-0",
        &format!("EVAL \"for i=1,{KEYS} do redis.call('SET','key:'..i,string.rep('v',64)..i) end\" 0"),
    );
    assert_eq!(valkey(&c, vhost, "valkey-rep-0", "DBSIZE"), KEYS.to_string());
    wait_for("the replicas have every key", Duration::from_secs(60), || {
        VALKEY[1..]
            .iter()
            .all(|n| valkey(&c, vhost, n, "DBSIZE") == KEYS.to_string())
    });

    // ------------------------------------ a member alone is refused
    let o = c.grpcurl(
        &["infra.coordinator.v1.CoordinatorService/Backup"],
        Some(r#"{"service":"pg-1"}"#),
    );
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && said.contains("backed up with its group: name \"pg-cluster\""),
        "{said}"
    );

    // ------------------------------------------------- the backups
    // A client inserts into the leader, one row at a time, during the
    // Patroni backup: the longest gap between its acknowledged inserts.
    psql(
        &c,
        &host,
        pg_leader,
        "app",
        "CREATE TABLE ins (id bigserial PRIMARY KEY)",
    )
    .unwrap();
    let acks: Mutex<Vec<Instant>> = Mutex::default();
    let stop = AtomicBool::new(false);
    let (pb, b0, pg_took) = std::thread::scope(|sc| {
        sc.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if psql(&c, &host, pg_leader, "app", "INSERT INTO ins DEFAULT VALUES").is_ok() {
                    acks.lock().unwrap().push(Instant::now());
                }
            }
        });
        wait_for("the client's first inserts", Duration::from_secs(60), || {
            acks.lock().unwrap().len() >= 3
        });
        let b0 = Instant::now();
        let pb = c.call("Backup", r#"{"service":"pg-cluster"}"#);
        let took = b0.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        (pb, b0, took)
    });
    let acks = acks.into_inner().unwrap();
    let window: Vec<Instant> = acks
        .iter()
        .copied()
        .filter(|t| *t + Duration::from_secs(1) >= b0 && *t <= b0 + pg_took + Duration::from_secs(1))
        .collect();
    assert!(
        window.len() >= 2,
        "the client wrote during the backup: {}",
        window.len()
    );
    let pg_gap = window.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let mut intervals: Vec<Duration> = acks.windows(2).map(|w| w[1] - w[0]).collect();
    intervals.sort();
    let pg_usual = intervals.get(intervals.len() / 2).copied().unwrap_or_default();
    let b1 = Instant::now();
    let gb = c.call("Backup", r#"{"service":"galera"}"#);
    let galera_took = b1.elapsed();
    let b2 = Instant::now();
    let vb = c.call("Backup", r#"{"service":"valkey-replication"}"#);
    let valkey_took = b2.elapsed();
    let (pb, gb, vb) = (pb[0].clone(), gb[0].clone(), vb[0].clone());
    assert!(
        VALKEY[1..].contains(&vb["member"].as_str().unwrap_or("")),
        "taken from a replica: {vb:#}"
    );
    assert_eq!(pb["member"], pg_leader, "taken in the leader: {pb:#}");
    assert_eq!(
        (pb["host"].as_str(), gb["host"].as_str()),
        (Some("host1"), Some("host1"))
    );
    assert!(running(&c, "host2", "minio").is_some() && running(&c, "host1", "minio").is_none());
    assert!(GALERA.contains(&gb["member"].as_str().unwrap_or("")), "{gb:#}");
    for (b, group) in [(&pb, "pg-cluster"), (&gb, "galera"), (&vb, "valkey-replication")] {
        assert_eq!(b["service"], group, "{b:#}");
        assert!(
            b["key"]
                .as_str()
                .is_some_and(|k| k.starts_with(&format!("bkc/{group}/"))),
            "{b:#}"
        );
    }
    let size = |b: &Value| -> u64 { b["size"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0) };
    assert!(size(&pb) > PG_ROWS * 100, "{pb:#}");
    assert!(size(&gb) > GALERA_ROWS * 30, "{gb:#}");
    // (RDB compresses the repeated values.)
    assert!(size(&vb) > KEYS * 10, "{vb:#}");
    // Written after: not in them.
    psql(&c, &host, pg_leader, "app", "INSERT INTO w VALUES (2, 'after')").unwrap();
    root_sql(&c, &host, "galera-3", "INSERT INTO gw VALUES (2, 'after')").unwrap();
    valkey(&c, vhost, "valkey-rep-0", "SET written:after 1");

    // ------------------- both clusters destroyed, volumes and all
    let removed = c.call(
        "Remove",
        &serde_json::json!({"selection": {"services": CLUSTERS}, "removeVolumes": true, "force": true}).to_string(),
    );
    assert!(removed.iter().all(|r| r["volumesRemoved"] == true), "{removed:#?}");
    let t1 = Instant::now();
    deploy(&c);
    let second_up = t1.elapsed();
    wait_for("a new Patroni leader", Duration::from_secs(120), || {
        leader(&c, &host).is_some_and(|l| {
            pg_leader = l;
            true
        })
    });
    assert!(
        psql(&c, &host, pg_leader, "app", "SELECT 1").is_err(),
        "a new cluster has no database app"
    );
    for node in GALERA {
        wait_for(&format!("{node} synced again"), Duration::from_secs(120), || {
            galera_status(&c, &host, node, "wsrep_local_state_comment") == "Synced"
        });
    }
    assert!(galera_digest("galera-1").is_err(), "a new cluster has no table g");
    wait_for("both new Valkey replicas connected", Duration::from_secs(120), || {
        replicas_up(&c)
    });
    assert_eq!(valkey(&c, vhost, "valkey-rep-0", "DBSIZE"), "0", "new, empty volumes");

    // ----------------------------------------------- the restores
    let r0 = Instant::now();
    let pr = c.call(
        "Restore",
        &serde_json::json!({"service": "pg-cluster", "key": pb["key"]}).to_string(),
    );
    let pg_restore = r0.elapsed();
    assert_eq!(pr[0]["member"], pg_leader, "restored into the leader: {pr:#?}");
    assert_eq!(
        psql(
            &c,
            &host,
            pg_leader,
            "app",
            "SELECT md5(string_agg(v, '' ORDER BY id)) FROM t"
        )
        .unwrap(),
        pg_digest
    );
    assert_eq!(
        psql(
            &c,
            &host,
            pg_leader,
            "app",
            "SELECT string_agg(phase, ',' ORDER BY id) FROM w"
        )
        .unwrap(),
        "before",
        "the row written before the backup is back, the one after it is not"
    );
    for replica in PG.into_iter().filter(|m| *m != pg_leader) {
        wait_for(
            &format!("{replica} streams the restore"),
            Duration::from_secs(60),
            || psql(&c, &host, replica, "app", "SELECT count(*) FROM t").is_ok_and(|n| n == PG_ROWS.to_string()),
        );
    }
    let r1 = Instant::now();
    let gr = c.call(
        "Restore",
        &serde_json::json!({"service": "galera", "key": gb["key"]}).to_string(),
    );
    let galera_restore = r1.elapsed();
    assert!(GALERA.contains(&gr[0]["member"].as_str().unwrap_or("")), "{gr:#?}");
    for node in GALERA {
        wait_for(
            &format!("{node} has the restored rows"),
            Duration::from_secs(60),
            || galera_digest(node).is_ok_and(|d| d == galera_before),
        );
        assert_eq!(
            root_sql(&c, &host, node, "SELECT GROUP_CONCAT(phase ORDER BY id) FROM gw").unwrap(),
            "before",
            "{node}: the row written after the backup is not back"
        );
    }

    let r2 = Instant::now();
    let vr = c.call(
        "Restore",
        &serde_json::json!({"service": "valkey-replication", "key": vb["key"]}).to_string(),
    );
    assert_eq!(vr[0]["member"], "valkey-rep-0", "restored into the primary: {vr:#?}");
    // The primary restarts on the restored files; the replicas resync.
    for node in VALKEY {
        wait_for(
            &format!("{node} serves the restored keys"),
            Duration::from_secs(90),
            || valkey(&c, vhost, node, "DBSIZE") == KEYS.to_string(),
        );
        assert_eq!(valkey(&c, vhost, node, "GET key:777"), format!("{}777", "v".repeat(64)));
        assert_eq!(valkey(&c, vhost, node, "EXISTS written:after"), "0", "{node}");
    }
    let valkey_restore = r2.elapsed();
    assert!(
        valkey(&c, vhost, "valkey-rep-0", "info replication").contains("role:master"),
        "the primary is still the primary"
    );

    // ------------------------------------------------------ events
    let ev = infra_e2e::shipped::event_history(&c);
    for (kind, group, member) in [
        ("EVENT_KIND_BACKUP_TAKEN", "pg-cluster", pb["member"].as_str().unwrap()),
        (
            "EVENT_KIND_BACKUP_RESTORED",
            "galera",
            gr[0]["member"].as_str().unwrap(),
        ),
    ] {
        assert!(
            ev.iter().any(|e| e["kind"] == kind
                && e["service"] == group
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(&format!("(member {member})")))),
            "{kind} of {group} naming {member}: {ev:#?}"
        );
    }

    println!(
        "BENCH backup clusters: bring-up of etcd x3, Patroni x3, Galera x3 on one host, Valkey x3 and MinIO on another {:.0} s (again, empty: \
         {:.0} s); Patroni {PG_ROWS} rows: dumped from the leader {:.1} MB in {:.2} s, restored into a new \
         cluster's leader in {:.2} s, longest gap between a client's acknowledged inserts into the leader during the \
         backup {} ms (its median interval {} ms); Galera {GALERA_ROWS} rows: mariadb-dump from a synced node {:.1} MB in {:.2} s, \
         restored in {:.2} s; Valkey {KEYS} keys: RDB from a replica {:.2} MB in {:.2} s, restored into the \
         primary and on every node in {:.2} s",
        first_up.as_secs_f64(),
        second_up.as_secs_f64(),
        size(&pb) as f64 / 1e6,
        pg_took.as_secs_f64(),
        pg_restore.as_secs_f64(),
        pg_gap.as_millis(),
        pg_usual.as_millis(),
        size(&gb) as f64 / 1e6,
        galera_took.as_secs_f64(),
        galera_restore.as_secs_f64(),
        size(&vb) as f64 / 1e6,
        valkey_took.as_secs_f64(),
        valkey_restore.as_secs_f64()
    );
}
