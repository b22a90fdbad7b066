//! The platform across simulated hosts: each host a container with its own
//! Docker engine (Docker-in-Docker) and its own operators, a NATS cluster
//! of three, the coordinator on this machine, driven with the real
//! `grpcurl`. See `e2e/src/hosts.rs`.
//!
//! Needs: `cargo build --workspace --bins` and
//! `bash e2e/images/build.sh host nats nginx` (the `just test` recipe builds
//! every image).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use infra_e2e::hosts::{Cluster, ClusterOptions, HEARTBEAT_TTL_SECS, NATS_IMAGE, fixture};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// The address the outer engine gives `host` on the cluster's network.
fn address_on_cluster_network(c: &Cluster, host: &str) -> String {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", c.id);
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", &format, &c.container(host)])
        .output()
        .expect("docker");
    stdout(&out)
}

fn all_hosts(n: usize) -> BTreeSet<String> {
    (1..=n).map(|i| format!("host{i}")).collect()
}

#[test]
fn three_simulated_hosts_run_their_own_engines_and_every_operator_heartbeats_over_the_nats_cluster() {
    let mut opts = ClusterOptions::new(3).images(&[NATS_IMAGE]);
    opts.coordinators = 2;
    let c = Cluster::start(opts);

    // Through the real grpcurl: three hosts, nine operators each.
    let hosts = c.call("ListHosts", "{}");
    let listed = hosts[0]["hosts"].as_array().expect("hosts");
    let names: BTreeSet<String> = listed
        .iter()
        .filter_map(|h| h["host"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, all_hosts(3), "{hosts:#?}");
    for h in listed {
        let ops = h["operators"].as_array().expect("operators");
        assert_eq!(ops.len(), 9, "nine operators on {}: {h:#?}", h["host"]);
    }

    // Every NATS server takes TLS only, from clients and on its routes; a
    // client that does not trust the bed's CA is refused, one that does
    // gets in.
    for i in 0..3 {
        let v = c.nats_varz(i);
        assert_eq!(v["tls_required"], true, "nats{} clients: {v:#}", i + 1);
        assert_eq!(v["cluster"]["tls_required"], true, "nats{} routes: {v:#}", i + 1);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let plain = rt.block_on(async {
        let opts = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5));
        tokio::time::timeout(Duration::from_secs(10), opts.connect(c.nats_url())).await
    });
    assert!(!matches!(plain, Ok(Ok(_))), "a client without the CA is refused");
    let admin = rt
        .block_on(infra_bus::Bus::connect(&c.bus_config("e2e-tls-check")))
        .unwrap_or_else(|e| panic!("with the CA (and the harness's credential): {e}"));

    // The bed's default: each host's operators hold a credential that
    // reaches only that host (their heartbeats above came through it).
    // With host2's, NATS itself refuses everything that is not host2's.
    rt.block_on(admin.put_host_secret("host1", "e2e_probe", "probe-secret-4f1c9a".into()))
        .expect("a secret for host1");
    let host2 = rt
        .block_on(infra_bus::Bus::connect(&infra_bus::BusConfig {
            creds: Some(c.host_creds("host2")),
            inbox_prefix: Some("_INBOX_host2".into()),
            ..c.bus_config("e2e-as-host2")
        }))
        .expect("host2's credential binds to the buckets");
    rt.block_on(async {
        assert!(
            host2.list_heartbeats().await.expect("every heartbeat").len() >= 27,
            "host2 reads the heartbeats"
        );
        host2
            .list_desired(Some(("host2", "data")))
            .await
            .expect("host2 reads its own desired state");
        let refused = |what: &'static str, r: Result<Result<String, String>, tokio::time::error::Elapsed>| {
            assert!(
                !matches!(r, Ok(Ok(_))),
                "with host2's credential, {what} must be refused: {r:?}"
            );
        };
        let t = Duration::from_secs(3);
        let fmt = |r: infra_bus::Result<String>| r.map_err(|e| e.to_string());
        let beat = infra_proto::bus::v1::Heartbeat {
            host: "host1".into(),
            tier: "data".into(),
            ..Default::default()
        };
        let event = infra_proto::bus::v1::Event {
            host: "host1".into(),
            tier: "data".into(),
            kind: infra_proto::bus::v1::EventKind::Started as i32,
            ..Default::default()
        };
        let (a, b, d, e, f, g) = tokio::join!(
            tokio::time::timeout(t, async {
                fmt(host2.list_desired(None).await.map(|v| format!("{v:?}")))
            }),
            tokio::time::timeout(t, async {
                fmt(host2.get_secret("host1", "e2e_probe").await.map(|v| format!("{v:?}")))
            }),
            tokio::time::timeout(t, async { fmt(host2.heartbeat(&beat).await.map(|()| "sent".into())) }),
            tokio::time::timeout(t, async {
                fmt(host2.publish_event(&event).await.map(|()| "sent".into()))
            }),
            tokio::time::timeout(t, async {
                host2
                    .jetstream()
                    .delete_key_value("infra_desired")
                    .await
                    .map(|d| format!("{}", d.success))
                    .map_err(|e| e.to_string())
            }),
            tokio::time::timeout(t, async {
                fmt(host2
                    .get_desired("host1", "gateway", "any")
                    .await
                    .map(|v| format!("{v:?}")))
            }),
        );
        refused("reading every host's desired state", a);
        refused("reading host1's secret", b);
        refused("a heartbeat as host1", d);
        refused("an event as host1", e);
        refused("deleting a bucket", f);
        refused("reading host1's desired state", g);
    });
    // JetStream is encrypted at rest: no server's store holds the secret.
    assert!(
        !c.nats_store_holds(b"probe-secret-4f1c9a"),
        "a NATS server's store holds a secret in plain text"
    );

    // The second coordinator sees the same hosts.
    let other = c.call_on(1, "ListHosts", "{}");
    assert_eq!(other[0]["hosts"].as_array().map(Vec::len), Some(3), "{other:#?}");

    // Each engine is its own: names and ids differ from each other and
    // from the outer engine's.
    let mut ids = BTreeSet::new();
    for h in c.hosts() {
        let out = c.docker(&h, &["info", "--format", "{{.Name}} {{.ID}} {{.Driver}}"]);
        assert!(out.status.success(), "docker info on {h}: {out:?}");
        let info = stdout(&out);
        assert!(info.starts_with(&format!("{h} ")), "{h}: {info}");
        assert!(info.ends_with(" vfs"), "{h}: {info}");
        ids.insert(info.split_whitespace().nth(1).unwrap_or_default().to_owned());
    }
    let outer = std::process::Command::new("docker")
        .args(["info", "--format", "{{.ID}}"])
        .output()
        .expect("docker");
    ids.insert(stdout(&outer));
    assert_eq!(ids.len(), 4, "four distinct engines: {ids:?}");

    // A container started in host1's engine runs there and nowhere else
    // (the nats image is small: a static binary).
    let name = format!("probe-{}", c.id);
    let run = c.docker("host1", &["run", "-d", "--name", &name, NATS_IMAGE]);
    assert!(run.status.success(), "docker run on host1: {run:?}");
    let ps = |h: &str| stdout(&c.docker(h, &["ps", "--format", "{{.Names}} {{.State}}"]));
    assert!(
        ps("host1").lines().any(|l| l == format!("{name} running")),
        "{}",
        ps("host1")
    );
    for h in ["host2", "host3"] {
        assert!(!ps(h).contains(&name), "{h}: {}", ps(h));
    }
    let outer_ps = std::process::Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .expect("docker");
    assert!(!stdout(&outer_ps).lines().any(|l| l == name));

    // Every operator's inspection API answers on its host's address.
    let op = c.operator_grpc("host2", "data");
    let out = std::process::Command::new(std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into()))
        .args(["-plaintext", &op, "list"])
        .output()
        .expect("grpcurl");
    assert!(
        stdout(&out).contains("infra.operator.v1.OperatorService"),
        "{op}: {out:?}"
    );
}

#[test]
fn a_service_deployed_through_the_coordinator_runs_and_is_healthy_in_exactly_one_inner_engine() {
    let c = Cluster::start(
        ClusterOptions::new(3)
            .tiers(&["gateway"])
            .images(&["infra-local/nginx:1"])
            .catalog(fixture("hosts")),
    );
    // The coordinators are fenced in, as behind a VPS firewall: they reach
    // the NATS servers and no host (everything goes through the bus),
    // while this harness reaches both.
    let nats_ip = c.nats_urls()[0]
        .rsplit_once("//")
        .map_or("", |(_, a)| a)
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let host_ip = c.host_ip("host1");
    let port = infra_e2e::hosts::tier_port("gateway");
    assert!(
        c.coordinator_reaches(&nats_ip, 4222),
        "a coordinator reaches NATS at {nats_ip}"
    );
    assert!(
        !c.coordinator_reaches(&host_ip, port),
        "a coordinator cannot reach host1's operator at {host_ip}:{port}"
    );
    assert!(
        std::net::TcpStream::connect_timeout(&format!("{host_ip}:{port}").parse().unwrap(), Duration::from_secs(2))
            .is_ok(),
        "the harness reaches host1's operator"
    );

    let t0 = Instant::now();
    let progress = c.call("Deploy", r#"{"selection":{"services":["web"]},"timeoutSeconds":120}"#);
    let done = progress.last().expect("a DONE message");
    assert_eq!(
        done["ready"].as_u64(),
        Some(1),
        "web ready: {progress:#?}\n{}",
        c.all_logs()
    );
    eprintln!("deploy took {:.1?}", t0.elapsed());

    let status = c.call("GetStatus", r#"{"selection":{"services":["web"]}}"#);
    // One row per host that runs it (a row with no host carries pending
    // replicas): exactly one here.
    let rows: Vec<&serde_json::Value> = status[0]["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["host"].as_str().is_some_and(|h| !h.is_empty()))
        .collect();
    assert_eq!(rows.len(), 1, "web runs on one host: {status:#?}");
    let svc = rows[0];
    let host = svc["host"].as_str().expect("a host").to_owned();
    assert!(c.hosts().contains(&host), "{status:#?}");

    let mut running_on = Vec::new();
    for h in c.hosts() {
        let out = c.docker(
            &h,
            &[
                "ps",
                "--filter",
                "label=io.infra.service=web",
                "--format",
                "{{.ID}} {{.Status}}",
            ],
        );
        assert!(out.status.success(), "docker ps on {h}: {out:?}");
        if !stdout(&out).is_empty() {
            running_on.push((h, stdout(&out)));
        }
    }
    assert_eq!(running_on.len(), 1, "one engine runs web: {running_on:?}");
    assert_eq!(running_on[0].0, host, "where GetStatus says: {running_on:?}");
    // Healthy by Docker's own verdict (bounded: the first probe runs one
    // interval after start on Engine 20.10).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = c.docker(
            &host,
            &[
                "ps",
                "--filter",
                "label=io.infra.service=web",
                "--format",
                "{{.Status}}",
            ],
        );
        if stdout(&out).contains("(healthy)") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web is not healthy on {host} within 30s: {}\n{}",
            stdout(&out),
            c.log(&host, "gateway")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let ids = svc["containerIds"].as_array().expect("container ids");
    let inspect = c.docker(
        &host,
        &["inspect", "-f", "{{.State.Health.Status}}", ids[0].as_str().unwrap()],
    );
    assert_eq!(stdout(&inspect), "healthy", "{status:#?}");
}

#[test]
fn the_fault_operations_stop_a_nats_server_cut_and_heal_a_host_stop_an_operator_and_kill_and_restart_a_host() {
    let c = Cluster::start(ClusterOptions::new(3).tiers(&["data", "gateway"]).images(&[NATS_IMAGE]));
    let ttl = Duration::from_secs(HEARTBEAT_TTL_SECS);
    let limit = ttl * 4;

    // One NATS server of three down: the quorum holds, heartbeats go on.
    let t0 = Instant::now();
    c.stop_nats(0);
    eprintln!("nats1 stopped in {:.1?}", t0.elapsed());
    std::thread::sleep(ttl + Duration::from_secs(2));
    c.wait_hosts("all hosts with nats1 down", limit, |h| {
        h.keys().cloned().collect::<BTreeSet<_>>() == all_hosts(3) && h.values().all(|t| t.len() == 2)
    });
    let t0 = Instant::now();
    c.start_nats(0);
    eprintln!(
        "nats1 back in the JetStream cluster {:.1?} after its start",
        t0.elapsed()
    );

    // A host cut off the network drops out after the TTL, and comes back
    // when healed (same address).
    let ip = c.host_ip("host2");
    let t0 = Instant::now();
    c.cut("host2");
    c.wait_hosts("host2 gone after the cut", limit, |h| !h.contains_key("host2"));
    eprintln!("host2 dropped out {:.1?} after the cut", t0.elapsed());
    let t0 = Instant::now();
    c.heal("host2");
    c.wait_hosts("host2 back after the heal", limit * 2, |h| {
        h.get("host2").is_some_and(|t| t.len() == 2)
    });
    eprintln!("host2 back {:.1?} after the heal", t0.elapsed());
    assert_eq!(address_on_cluster_network(&c, "host2"), ip);

    // One operator stopped and started again.
    let t0 = Instant::now();
    c.stop_operator("host3", "data");
    eprintln!("host3's data operator stopped in {:.1?}", t0.elapsed());
    c.wait_hosts("host3's data operator gone", limit, |h| {
        h.get("host3")
            .is_some_and(|t| !t.contains("data") && t.contains("gateway"))
    });
    c.start_operator("host3", "data");

    // A killed host drops out; started again, its engine is empty (tmpfs)
    // but the harness has loaded the images again and its operators are back.
    let t0 = Instant::now();
    c.kill_host("host1");
    c.wait_hosts("host1 gone after the kill", limit, |h| !h.contains_key("host1"));
    eprintln!("host1 dropped out {:.1?} after the kill", t0.elapsed());
    let t0 = Instant::now();
    c.start_host("host1");
    eprintln!("host1 back {:.1?} after the start", t0.elapsed());
    let images = stdout(&c.docker("host1", &["images", "--format", "{{.Repository}}:{{.Tag}}"]));
    assert_eq!(images, NATS_IMAGE, "host1's engine after the restart");
    assert_eq!(address_on_cluster_network(&c, "host1"), c.host_ip("host1"));
    // Nothing survived in the engine but what the harness loaded.
    let ps = stdout(&c.docker("host1", &["ps", "-aq"]));
    assert!(ps.is_empty(), "host1 after the restart: {ps}");
}
