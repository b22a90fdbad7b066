//! The headline of multi-VPS HA: three hosts joined from nothing by token
//! (labels `zone=a|b|c`), the shipped `ha` selection deployed from the
//! user's checkout of the catalog with no file changed, the coordinator
//! fenced off the hosts (it reaches the NATS servers only, so everything it
//! asks of them goes over the bus). Then, under three clients the whole
//! time (PostgreSQL through `pg-router`, Valkey with `WAIT 1`, MariaDB
//! Galera):
//!
//! 1. `haproxy.cfg` changed in the checkout, pushed as a new catalog
//!    revision (`infractl catalog push`): Plan names `pg-router` alone, and
//!    Deploy rolls it onto the new file;
//! 2. a new image for every service of the selection (the user's override
//!    file, pushed): one Deploy rolls it all, each stateful cluster by its
//!    update order (Patroni: replicas, switchover, old leader; Valkey:
//!    replicas, then each primary after `CLUSTER FAILOVER`; Galera and etcd:
//!    one member at a time);
//! 3. the host running the Patroni leader and `pg-router` (the leader is put
//!    there first by a switchover) is killed like a VPS losing power:
//!    Patroni fails over, the stateless services that ran there start on the
//!    other hosts, their dependents are pointed at where they run now, the
//!    stateful members stay (their data is there); the host comes back with
//!    its disk, its operators heartbeat again, the moved services are gone
//!    from it and every cluster has its member back.
//!
//! No acknowledged write is lost in any client. The figures (deploy, roll,
//! failover and rejoin times, the longest write gap per client and phase)
//! are printed as `BENCH |` lines for `e2e/BENCH.md` (`just bench-ha`).
//!
//! What runs here: the `ha` services whose stand-in image is in
//! `e2e/images/local.override.yml`; those without one (Traefik, Keycloak,
//! OAuth2 Proxy, MinIO, cAdvisor, Grafana, Loki, Tempo, Alloy, ProxySQL)
//! are named in the output and not deployed. The Galera client writes to
//! the nodes themselves (ProxySQL's job), moving to the next node when one
//! refuses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use infra_e2e::hosts::{Cluster, ClusterOptions, OPERATORS_IMAGE};
use infra_e2e::scenarios::{ValkeyClient, ValkeyConn, ValkeyWriter, valkey_key, valkey_tags};
use infra_e2e::shipped::{self, EngineEvents, galera_status, mariadb, now_nanos, running};
use infra_test_support::load::{Load, Writes};
use infra_test_support::wait_for;
use serde_json::{Value, json};

/// The stand-in images of the `ha` services that run here; each is also
/// loaded as `<image>-roll` (the same image under a new name: a changed
/// image is what a roll is about).
const SERVICE_IMAGES: [&str; 12] = [
    "infra-local/etcd:3",
    "infra-local/patroni:3",
    "infra-local/haproxy:2",
    "infra-local/redis:7",
    "infra-local/mariadb:10",
    "infra-local/postgres:15",
    "infra-local/prometheus:2",
    "infra-local/alertmanager:0",
    "infra-local/pushgateway:1",
    "infra-local/node-exporter:1",
    "infra-local/postgres-exporter:0",
    "infra-local/redis-exporter:1",
];

const PG: [&str; 3] = ["pg-0", "pg-1", "pg-2"];
const ETCD: [&str; 3] = ["etcd-1", "etcd-2", "etcd-3"];
const GALERA: [&str; 3] = ["galera-1", "galera-2", "galera-3"];

fn roll_image(image: &str) -> String {
    format!("{image}-roll")
}

/// Where each service runs now: service → hosts, from the hosts' engines.
fn placement(c: &Cluster) -> BTreeMap<String, Vec<String>> {
    let mut on: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for h in c.hosts() {
        let o = c.docker(&h, &["ps", "--format", "{{.Label \"io.infra.service\"}}"]);
        for s in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            on.entry(s.to_owned()).or_default().push(h.clone());
        }
    }
    on
}

/// The one host of `service` in `on`.
fn host_of<'a>(on: &'a BTreeMap<String, Vec<String>>, service: &str) -> &'a str {
    match on.get(service).map(Vec::as_slice) {
        Some([h]) => h,
        other => panic!("{service} runs on one host: {other:?}"),
    }
}

/// The services a Plan of `selection` would change, with what changes.
fn planned_updates(c: &Cluster, selection: &Value) -> BTreeMap<String, Vec<String>> {
    let plan = c.call("Plan", &json!({ "selection": selection }).to_string());
    plan[0]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["action"] != "ACTION_UNCHANGED")
        .map(|s| {
            let changes = s["changes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect();
            (s["service"].as_str().unwrap_or_default().to_owned(), changes)
        })
        .collect()
}

/// The three clients, writing the whole time.
struct Clients {
    pg: Load,
    valkey: ValkeyWriter,
    galera: Load,
    /// Everything acknowledged so far, per client.
    acked: [Vec<u64>; 3],
}

impl Clients {
    /// One phase's figures (and the acknowledged writes kept for the end):
    /// `client: acked, longest gap` for each client.
    fn phase(&mut self) -> [Writes; 3] {
        let pg = self.pg.take();
        let (valkey, _) = self.valkey.take();
        let galera = self.galera.take();
        self.acked[0].extend(&pg.acked);
        self.acked[1].extend(&valkey.acked);
        self.acked[2].extend(&galera.acked);
        [pg, valkey, galera]
    }
}

fn figures(w: &[Writes; 3]) -> String {
    ["PostgreSQL", "Valkey", "Galera"]
        .iter()
        .zip(w)
        .map(|(name, w)| {
            format!(
                "{name} {} acked, gap {:.2}s",
                w.acked.len(),
                w.longest_gap.as_secs_f64()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `psql` as the superuser through `pg-router`, from the Patroni member
/// beside it (wherever both run now; none may run on a dead host).
fn through_router(c: &Cluster, sql: &str) -> Result<String, String> {
    for h in c.hosts() {
        if running(c, &h, "pg-router").is_none() {
            continue;
        }
        let Some(member) = PG.iter().find_map(|m| running(c, &h, m)) else {
            return Err(format!("no Patroni member beside pg-router on {h}"));
        };
        let o = c.docker(
            &h,
            &[
                "exec",
                &member,
                "sh",
                "-c",
                &format!(
                    "PGPASSWORD=\"$(cat /run/secrets/patroni_superuser_password)\" psql \"host=pg-router port=5432 \
                     user=postgres dbname=postgres connect_timeout=3\" -Atqc \"{sql}\""
                ),
            ],
        );
        return if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).trim().to_owned())
        };
    }
    Err("pg-router runs nowhere".into())
}

/// Patroni's members as one of them sees them (`GET /cluster`), asked on
/// the first host that answers: name → (role, state).
fn patroni_members(c: &Cluster) -> BTreeMap<String, (String, String)> {
    for h in c.hosts() {
        let Some(id) = PG.iter().find_map(|m| running(c, &h, m)) else {
            continue;
        };
        let o = c.docker(&h, &["exec", &id, "curl", "-fsS", "http://127.0.0.1:8008/cluster"]);
        let Ok(doc) = serde_json::from_slice::<Value>(&o.stdout) else {
            continue;
        };
        return doc["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or_default().to_owned(),
                    (
                        m["role"].as_str().unwrap_or_default().to_owned(),
                        m["state"].as_str().unwrap_or_default().to_owned(),
                    ),
                )
            })
            .collect();
    }
    BTreeMap::new()
}

fn patroni_leader(c: &Cluster) -> Option<String> {
    patroni_members(c)
        .into_iter()
        .find(|(_, (role, state))| role == "leader" && state == "running")
        .map(|(n, _)| n)
}

/// What the surviving members say (Patroni's and etcd's own views, their
/// last log lines), for a failover that does not come.
fn diagnose(c: &Cluster, dead: &str) -> String {
    let mut out = String::new();
    for h in c.hosts().iter().filter(|h| *h != dead) {
        for s in PG.iter().chain(&ETCD) {
            let Some(id) = running(c, h, s) else { continue };
            let o = c.docker(h, &["logs", "--tail", "25", &id]);
            out += &format!(
                "==> {s} on {h} <==\n{}{}\n",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            if PG.contains(s) {
                let o = c.docker(h, &["exec", &id, "curl", "-sS", "http://127.0.0.1:8008/cluster"]);
                out += &format!("/cluster: {}\n", String::from_utf8_lossy(&o.stdout));
            }
        }
    }
    out
}

/// The image of `service`'s running container on `host`.
fn image_of(c: &Cluster, host: &str, service: &str) -> String {
    let id = running(c, host, service).unwrap_or_else(|| panic!("{service} runs on {host}"));
    let o = c.docker(host, &["inspect", "-f", "{{.Config.Image}}", &id]);
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// The valkey nodes' roles, asked of each: index → "master" | "slave".
fn valkey_roles(addrs: &[String], password: &str) -> Vec<String> {
    addrs
        .iter()
        .map(|a| {
            ValkeyConn::open(a, password)
                .and_then(|mut c| c.fields(&["INFO", "replication"]))
                .ok()
                .and_then(|f| f.get("role").cloned())
                .unwrap_or_default()
        })
        .collect()
}

/// Every node says the cluster is ok, with six nodes of which three
/// primaries and three replicas, none failing.
fn valkey_whole(addrs: &[String], password: &str) -> bool {
    let ok = addrs.iter().all(|a| {
        ValkeyConn::open(a, password)
            .and_then(|mut c| c.fields(&["CLUSTER", "INFO"]))
            .is_ok_and(|f| {
                f.get("cluster_state").map(String::as_str) == Some("ok")
                    && f.get("cluster_known_nodes").map(String::as_str) == Some("6")
            })
    });
    let nodes = ValkeyConn::open(&addrs[0], password)
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
    ok && count("master") == 3 && count("slave") == 3
}

#[test]
#[allow(clippy::too_many_lines)] // one story, told in order
fn the_shipped_ha_selection_on_three_joined_hosts_rolls_whole_survives_a_lost_host_that_rejoins_and_loses_no_acknowledged_write()
 {
    // ------------------------------------------------------------ bring-up
    for image in SERVICE_IMAGES {
        let tag = std::process::Command::new("docker")
            .args(["tag", image, &roll_image(image)])
            .status()
            .expect("docker");
        assert!(tag.success(), "docker tag {image} (run e2e/images/build.sh)");
    }
    let rolls: Vec<String> = SERVICE_IMAGES.iter().map(|i| roll_image(i)).collect();
    let mut images: Vec<&str> = vec![OPERATORS_IMAGE];
    images.extend(SERVICE_IMAGES);
    images.extend(rolls.iter().map(String::as_str));
    // The user's checkout of the catalog: the shipped one, unchanged. The
    // hosts keep their engine's store on disk, as VPS do, so the killed one
    // comes back with its data.
    let (_checkout, catalog) = infra_e2e::catalog_checkout();
    let mut opts = ClusterOptions::new(3)
        .images(&images)
        .bare_over(&catalog)
        .engine_disks();
    let user = opts.user_override();
    let c = Cluster::start(opts);
    c.join_zones();
    let hosts = c.hosts();

    // The selection as a user deploys it: `ha`, less what has no image here.
    let listed = c.call("ListServices", r#"{"selection":{"named":"ha"}}"#);
    let rows = listed[0]["services"].as_array().cloned().unwrap_or_default();
    let image: BTreeMap<String, String> = rows
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_owned(),
                r["image"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    // MinIO's stand-in (rclone's S3 server) is left out too: what it is
    // for here, backups, is tested in backup.rs and, for these clusters
    // with the store on another host, backup_clusters.rs.
    let (here, elsewhere): (Vec<&String>, Vec<&String>) = image
        .keys()
        .partition(|s| image[*s].starts_with("infra-local/") && image[*s] != "infra-local/s3:1");
    for must in ["pg-router", "pg-0", "etcd-1", "valkey-node-5", "galera-3", "prometheus"] {
        assert!(
            here.iter().any(|s| *s == must),
            "{must} in the ha selection here: {here:?}"
        );
    }
    for s in &here {
        assert!(
            SERVICE_IMAGES.contains(&image[*s].as_str()),
            "{s}'s image {} is loaded (SERVICE_IMAGES)",
            image[*s]
        );
    }
    println!(
        "ha here: {} services; not run here (no image on this machine): {elsewhere:?}",
        here.len()
    );
    let selection = json!({ "services": here });
    let deploy = json!({ "selection": selection, "timeoutSeconds": 600 }).to_string();

    let events = EngineEvents::start(&c);
    let since = now_nanos();
    let t0 = Instant::now();
    let progress = c.call("Deploy", &deploy);
    let done = progress.last().expect("a DONE line");
    assert_eq!(
        done["ready"].as_u64(),
        Some(here.len() as u64),
        "every service of ha ready: {done}\n{}",
        c.all_logs()
    );
    let deployed = t0.elapsed();
    let on = placement(&c);
    for s in &here {
        assert!(on.contains_key(*s), "{s} runs: {on:?}");
    }

    // The stacks' placement groups: one etcd, Patroni and Galera member per
    // host, two Valkey nodes per host.
    for group in [&ETCD[..], &PG[..], &GALERA[..]] {
        let at: BTreeSet<&str> = group.iter().map(|m| host_of(&on, m)).collect();
        assert_eq!(at.len(), 3, "{group:?} one per host: {on:?}");
    }
    for h in &hosts {
        let n = (0..6)
            .filter(|i| host_of(&on, &format!("valkey-node-{i}")) == h)
            .count();
        assert_eq!(n, 2, "two Valkey nodes on {h}: {on:?}");
    }

    // Every `depends_on` condition honoured across stacks and hosts, by the
    // engines' clocks: a service started after each dependency started
    // (`service_started`) or was healthy (`service_healthy`).
    let mut checked = 0;
    let mut health_test: BTreeMap<String, String> = BTreeMap::new();
    let mut dependents: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let described: BTreeMap<String, Value> = here
        .iter()
        .map(|s| {
            let d = c.call("DescribeService", &json!({ "name": s }).to_string());
            ((*s).clone(), d[0].clone())
        })
        .collect();
    for (s, d) in &described {
        let test = d["spec"]["healthcheck"]["test"]
            .as_array()
            .and_then(|t| t.last())
            .and_then(Value::as_str)
            .unwrap_or_default();
        health_test.insert(s.clone(), test.to_owned());
        dependents.insert(
            s.clone(),
            d["dependents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
        );
    }
    for (s, d) in &described {
        let at = |host: &str, service: &str, test: &str| {
            let (started, healthy) = events.started_and_healthy(host, service, test, since);
            (
                started.unwrap_or_else(|| panic!("{service} on {host} started during the deploy")),
                healthy,
            )
        };
        let (started, _) = at(host_of(&on, s), s, "");
        for dep in d["dependencies"].as_array().into_iter().flatten() {
            let name = dep["service"].as_str().unwrap_or_default();
            let Some(dep_hosts) = on.get(name) else {
                continue;
            };
            let (dep_started, dep_healthy) = at(&dep_hosts[0], name, &health_test[name]);
            let (what, at) = match dep["condition"].as_str() {
                Some("CONDITION_SERVICE_HEALTHY") => (
                    "healthy",
                    dep_healthy.unwrap_or_else(|| panic!("{name} was healthy before {s} started")),
                ),
                _ => ("started", dep_started),
            };
            assert!(
                started > at,
                "{s} (on {}) started at {started}, before {name} (on {}) was {what} at {at}\n{name}: {:#?}\n{s}: {:#?}\n{}",
                host_of(&on, s),
                dep_hosts[0],
                events.of(&dep_hosts[0], name),
                events.of(host_of(&on, s), s),
                c.coordinator_log(0)
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "the selection has cross-service conditions: {checked}");
    println!(
        "BENCH | ha selection, shipped catalog, three joined hosts, fenced coordinator | deploy {} services {:.1}s | {checked} depends_on conditions honoured by the engines' clocks",
        here.len(),
        deployed.as_secs_f64()
    );

    // ------------------------------------------------------------- clients
    let ips: BTreeMap<String, String> = hosts.iter().map(|h| (h.clone(), c.host_ip(h))).collect();
    let password = std::fs::read_to_string(catalog.join("secrets/valkey_cluster_password"))
        .expect("the checkout's secrets")
        .trim()
        .to_owned();
    let vaddrs: Vec<String> = (0..6)
        .map(|i| format!("{}:{}", ips[host_of(&on, &format!("valkey-node-{i}"))], 7000 + i))
        .collect();
    let names: BTreeMap<String, String> = (0..6)
        .map(|i| (format!("valkey-node-{i}:{}", 7000 + i), vaddrs[i].clone()))
        .collect();
    wait_for("a whole Valkey cluster", Duration::from_secs(120), || {
        valkey_whole(&vaddrs, &password)
    });
    let galera_at: Vec<String> = GALERA.iter().map(|g| host_of(&on, g).to_owned()).collect();
    for (g, h) in GALERA.iter().zip(&galera_at) {
        wait_for(
            &format!("{g} synced in a cluster of 3"),
            Duration::from_secs(120),
            || {
                galera_status(&c, h, g, "wsrep_cluster_size") == "3"
                    && galera_status(&c, h, g, "wsrep_local_state_comment") == "Synced"
            },
        );
    }
    through_router(&c, "create table acks(v bigint primary key)")
        .unwrap_or_else(|e| panic!("a table through pg-router: {e}\n{}", c.all_logs()));
    mariadb(
        &c,
        &galera_at[0],
        GALERA[0],
        "app",
        "mariadb_app_password",
        "CREATE TABLE w (n BIGINT PRIMARY KEY)",
    )
    .expect("a Galera table");

    let c = Arc::new(c);
    let pg = {
        let c = c.clone();
        Load::start(1, Duration::from_millis(50), move |n| {
            through_router(&c, &format!("insert into acks(v) values ({n})")).map(|_| ())
        })
    };
    let valkey = ValkeyWriter::start_naming(vaddrs.clone(), names.clone(), &password, 1, 500);
    let galera = {
        let (c, at) = (c.clone(), galera_at.clone());
        let current = Arc::new(Mutex::new(0usize));
        Load::start(1, Duration::from_millis(50), move |n| {
            let i = *current.lock().unwrap();
            let r = mariadb(
                &c,
                &at[i],
                GALERA[i],
                "app",
                "mariadb_app_password",
                &format!("INSERT INTO w VALUES ({n})"),
            );
            if r.is_err() {
                *current.lock().unwrap() = (i + 1) % 3;
            }
            r.map(|_| ())
        })
    };
    let mut clients = Clients {
        pg,
        valkey,
        galera,
        acked: Default::default(),
    };
    // Each client has written (a PostgreSQL write is a `docker exec` on a
    // simulated host: seconds on a busy machine).
    let mut warm = [Writes::default(), Writes::default(), Writes::default()];
    let by = Instant::now() + Duration::from_secs(90);
    while warm.iter().any(|w| w.acked.is_empty()) {
        std::thread::sleep(Duration::from_secs(1));
        for (i, w) in clients.phase().into_iter().enumerate() {
            warm[i].acked.extend(w.acked);
            warm[i].failed.extend(w.failed);
            warm[i].longest_gap = warm[i].longest_gap.max(w.longest_gap);
        }
        assert!(
            Instant::now() < by,
            "every client writes within 90 s: {:?}",
            warm.iter()
                .map(|w| (w.acked.len(), w.failed.last().cloned()))
                .collect::<Vec<_>>()
        );
    }
    let mut report = vec![format!("warm-up: {}", figures(&warm))];

    // ------------------------------------- 1. haproxy.cfg, a new revision
    let cfg = catalog.join("04-data/postgresql-cluster/haproxy.cfg");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("maxconn 1000"), "the shipped haproxy.cfg");
    std::fs::write(&cfg, text.replace("maxconn 1000", "maxconn 900")).unwrap();
    infra_e2e::shipped::catalog_push(&c, &catalog, &user);
    let plan = planned_updates(&c, &selection);
    assert_eq!(
        plan.keys().collect::<Vec<_>>(),
        ["pg-router"],
        "the new haproxy.cfg changes pg-router alone: {plan:?}"
    );
    let t1 = Instant::now();
    let progress = c.call("Deploy", &deploy);
    let done = progress.last().unwrap();
    assert_eq!(done["failed"].as_u64().unwrap_or(0), 0, "{progress:#?}");
    let router_host = placement(&c)["pg-router"][0].clone();
    let id = running(&c, &router_host, "pg-router").unwrap();
    let mounted = c.docker(
        &router_host,
        &["exec", &id, "cat", "/usr/local/etc/haproxy/haproxy.cfg"],
    );
    assert!(
        String::from_utf8_lossy(&mounted.stdout).contains("maxconn 900"),
        "the new haproxy.cfg is mounted"
    );
    let w = clients.phase();
    report.push(format!(
        "haproxy.cfg pushed and rolled {:.1}s: {}",
        t1.elapsed().as_secs_f64(),
        figures(&w)
    ));

    // ------------------------------------------ 2. a new image for it all
    let leader = patroni_leader(&c).expect("a Patroni leader");
    let primaries: Vec<usize> = valkey_roles(&vaddrs, &password)
        .iter()
        .enumerate()
        .filter(|(_, r)| *r == "master")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(primaries.len(), 3, "three Valkey primaries");
    let mut pinned = String::from("services:\n");
    for s in &here {
        pinned += &format!("  {s}:\n    image: {}\n", roll_image(&image[*s]));
    }
    std::fs::write(&user, pinned).unwrap();
    infra_e2e::shipped::catalog_push(&c, &catalog, &user);
    let plan = planned_updates(&c, &selection);
    for s in &here {
        assert!(
            plan.get(*s).is_some_and(|ch| ch.iter().any(|x| x.contains("image"))),
            "Plan rolls {s} to its new image: {plan:?}"
        );
    }
    let since2 = now_nanos();
    let t2 = Instant::now();
    let progress = c.call(
        "Deploy",
        &json!({ "selection": selection, "timeoutSeconds": 900 }).to_string(),
    );
    let rolled = t2.elapsed();
    let done = progress.last().unwrap();
    assert_eq!(
        done["failed"].as_u64().unwrap_or(0),
        0,
        "{progress:#?}\n{}",
        c.all_logs()
    );
    let on = placement(&c);
    for s in &here {
        for h in &on[*s] {
            assert_eq!(image_of(&c, h, s), roll_image(&image[*s]), "{s} on {h}");
        }
    }
    // Galera and etcd: one member down at a time.
    for group in [&GALERA[..], &ETCD[..]] {
        let members: Vec<(&str, &str)> = group.iter().map(|m| (*m, host_of(&on, m))).collect();
        let windows = shipped::windows(&members, |h, m| events.lifecycle(h, m, since2));
        for pair in windows.windows(2) {
            assert!(
                pair[1].0 > pair[0].1,
                "{} went down before {} was back: {windows:?}",
                pair[1].2,
                pair[0].2
            );
        }
    }
    // Patroni: the old leader restarted last, after a switchover.
    let members: Vec<(&str, &str)> = PG.iter().map(|m| (*m, host_of(&on, m))).collect();
    let windows = shipped::windows(&members, |h, m| events.lifecycle(h, m, since2));
    assert_eq!(
        windows.last().map(|w| w.2),
        Some(leader.as_str()),
        "the old leader {leader} restarted last: {windows:?}"
    );
    let leader2 = patroni_leader(&c).expect("a Patroni leader after the roll");
    assert_ne!(leader2, leader, "the leading role moved by a switchover");
    // Valkey: every replica restarted before any primary; roles swapped.
    let vnames: Vec<String> = (0..6).map(|i| format!("valkey-node-{i}")).collect();
    let members: Vec<(&str, &str)> = vnames.iter().map(|m| (m.as_str(), host_of(&on, m))).collect();
    let windows = shipped::windows(&members, |h, m| events.lifecycle(h, m, since2));
    let is_primary = |n: &str| primaries.iter().any(|&p| vnames[p] == n);
    let last_replica_back = windows.iter().filter(|w| !is_primary(w.2)).map(|w| w.1).max().unwrap();
    let first_primary_down = windows.iter().filter(|w| is_primary(w.2)).map(|w| w.0).min().unwrap();
    assert!(
        last_replica_back < first_primary_down,
        "Valkey replicas before primaries {primaries:?}: {windows:?}"
    );
    wait_for("a whole Valkey cluster after the roll", Duration::from_secs(60), || {
        valkey_whole(&vaddrs, &password)
    });
    let w = clients.phase();
    report.push(format!(
        "whole selection rolled to new images {:.1}s (Patroni {leader} -> {leader2}): {}",
        rolled.as_secs_f64(),
        figures(&w)
    ));

    // ----------------------------------------------- 3. a host is lost
    // The Patroni leader's host (it carries stateless services too).
    let on = placement(&c);
    let candidate = leader2.clone();
    let dead = host_of(&on, &candidate).to_owned();
    // In synchronous mode only the synchronous standby may take over: the
    // kill comes once one is named after the roll's switchover (and the
    // other replica streams), as an operator would wait before a risky step.
    wait_for(
        "a synchronous standby and a streaming replica",
        Duration::from_secs(90),
        || {
            // Patroni 3.0 says `running` of a replica that streams, later
            // versions `streaming`.
            let up = |state: &str| state == "running" || state == "streaming";
            let m = patroni_members(&c);
            m.values().any(|(role, state)| role == "sync_standby" && up(state))
                && m.values().filter(|(role, state)| role != "leader" && up(state)).count() == 2
        },
    );
    let _ = clients.phase();
    let stranded: Vec<String> = on
        .iter()
        .filter(|(_, hs)| hs.contains(&dead))
        .map(|(s, _)| s.clone())
        .collect();
    let t3 = Instant::now();
    c.kill_host(&dead);
    let by = Instant::now() + Duration::from_secs(120);
    while patroni_leader(&c).is_none_or(|l| l == candidate) {
        assert!(
            Instant::now() < by,
            "no new Patroni leader on a surviving host within 120 s of {dead}'s loss: {:?}\n{}",
            patroni_members(&c),
            diagnose(&c, &dead)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let elected = t3.elapsed();
    // Writes again in each client: its first acknowledgement after the
    // kill (Valkey's primaries on the other hosts never stop).
    let mut resumed = [None::<Duration>; 3];
    let mut during = [Writes::default(), Writes::default(), Writes::default()];
    wait_for("every client writes again", Duration::from_secs(240), || {
        for (i, w) in clients.phase().into_iter().enumerate() {
            if resumed[i].is_none() {
                resumed[i] = w.acked_at.iter().find(|t| **t > t3).map(|t| t.duration_since(t3));
            }
            during[i].acked.extend(w.acked);
            during[i].failed.extend(w.failed);
            during[i].longest_gap = during[i].longest_gap.max(w.longest_gap);
        }
        resumed.iter().all(Option::is_some)
    });
    // The stateless services of the lost host run elsewhere now; their
    // dependents on other hosts reach them there; the stateful ones (named
    // volumes: their data is on the lost host) stayed.
    let stateful = |s: &str| {
        described[s]["spec"]["mounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["kind"] == "MOUNT_KIND_VOLUME"))
    };
    let (kept, moved): (Vec<String>, Vec<String>) = stranded.iter().cloned().partition(|s| stateful(s));
    assert!(
        !moved.is_empty(),
        "the leader's host ran stateless services too: {stranded:?}"
    );
    for m in PG.iter().chain(&ETCD).chain(&GALERA) {
        assert!(
            !stranded.contains(&(*m).to_owned()) || kept.contains(&(*m).to_owned()),
            "{m} keeps its data"
        );
    }
    wait_for(
        "the lost host's stateless services elsewhere",
        Duration::from_secs(180),
        || {
            let now = placement(&c);
            moved.iter().all(|s| now.get(s).is_some_and(|hs| !hs.is_empty()))
        },
    );
    let now = placement(&c);
    for s in &kept {
        assert!(!now.contains_key(s), "{s} keeps state on {dead}: not moved ({now:?})");
    }
    let now = placement(&c);
    let mut followed = Vec::new();
    for s in &moved {
        let to = now[s][0].clone();
        for d in &dependents[s] {
            let Some(dh) = now.get(d).and_then(|hs| hs.first()) else {
                continue;
            };
            if *dh == to {
                continue;
            }
            let want = format!("{s}:{}", ips[&to]);
            wait_for(
                &format!("{d} on {dh} reaches {s} on {to}"),
                Duration::from_secs(120),
                || {
                    running(&c, dh, d).is_some_and(|id| {
                        let o = c.docker(dh, &["inspect", "-f", "{{json .HostConfig.ExtraHosts}}", &id]);
                        String::from_utf8_lossy(&o.stdout).contains(&want)
                    })
                },
            );
            followed.push(format!("{d}->{s}@{to}"));
        }
    }
    report.push(format!(
        "{dead} killed (Patroni leader {candidate}): new leader in {:.1}s; first write acknowledged after the kill: PostgreSQL {:.1}s, Valkey {:.1}s, Galera {:.1}s; moved {moved:?}, kept (stateful) {kept:?}, dependents followed {followed:?}; {}",
        elected.as_secs_f64(),
        resumed[0].unwrap().as_secs_f64(),
        resumed[1].unwrap().as_secs_f64(),
        resumed[2].unwrap().as_secs_f64(),
        figures(&during)
    ));

    // ------------------------------------------- 4. the host comes back
    let t4 = Instant::now();
    c.reboot_host(&dead);
    wait_for("the lost host rejoined every cluster", Duration::from_secs(300), || {
        let now = placement(&c);
        let moved_gone = moved.iter().all(|s| now.get(s).is_some_and(|hs| hs.len() == 1));
        let pg_ok = patroni_members(&c)
            .values()
            .filter(|(_, state)| state == "running" || state == "streaming")
            .count()
            == 3;
        let galera_ok = GALERA
            .iter()
            .zip(&galera_at)
            .all(|(g, h)| galera_status(&c, h, g, "wsrep_local_state_comment") == "Synced")
            && galera_status(&c, &galera_at[0], GALERA[0], "wsrep_cluster_size") == "3";
        moved_gone && pg_ok && galera_ok && valkey_whole(&vaddrs, &password)
    });
    let rejoined = t4.elapsed();
    let w = clients.phase();
    report.push(format!(
        "{dead} back with its disk: its members rejoined and the moved services left it in {:.1}s: {}",
        rejoined.as_secs_f64(),
        figures(&w)
    ));

    // ------------------------------------------- every write is there
    let Clients {
        pg,
        valkey,
        galera,
        mut acked,
    } = clients;
    let (vw, _) = valkey.finish();
    acked[1].extend(vw.acked);
    acked[0].extend(pg.take().acked);
    acked[2].extend(galera.take().acked);
    drop((pg, galera));
    let rows = through_router(&c, "select v from acks").expect("read back through pg-router");
    let have: BTreeSet<u64> = rows.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let lost: Vec<&u64> = acked[0].iter().filter(|v| !have.contains(v)).collect();
    assert!(
        lost.is_empty(),
        "PostgreSQL: {} acknowledged writes lost: {lost:?}",
        lost.len()
    );
    let tags = valkey_tags();
    let mut client = ValkeyClient::new(vaddrs.clone(), &password).naming(names);
    let lost: Vec<u64> = acked[1]
        .iter()
        .copied()
        .filter(|&n| client.get(&valkey_key(&tags, n)).ok().flatten() != Some(n.to_string()))
        .collect();
    assert!(
        lost.is_empty(),
        "Valkey: {} acknowledged writes lost: {lost:?}",
        lost.len()
    );
    for (g, h) in GALERA.iter().zip(&galera_at) {
        let rows = mariadb(
            &c,
            h,
            g,
            "app",
            "mariadb_app_password",
            "SET SESSION wsrep_sync_wait = 1; SELECT n FROM w",
        )
        .expect("read the rows");
        let have: BTreeSet<u64> = rows.lines().filter_map(|l| l.trim().parse().ok()).collect();
        let lost: Vec<&u64> = acked[2].iter().filter(|k| !have.contains(k)).collect();
        assert!(lost.is_empty(), "Galera: {g} lacks acknowledged writes {lost:?}");
    }
    assert!(!c.all_logs().contains(&password), "the Valkey password in a log");
    println!(
        "BENCH | ha headline | acked PostgreSQL {} Valkey {} Galera {}, 0 lost | {}",
        acked[0].len(),
        acked[1].len(),
        acked[2].len(),
        report.join(" | ")
    );
}
