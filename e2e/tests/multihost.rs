//! What our users run across several VPS, on simulated hosts (each a
//! container with its own Docker engine, a NATS cluster of three, the real
//! coordinator and operators, the real grpcurl): a web service with
//! replicas on three hosts behind the gateway's Nginx, rolled while a
//! client sends requests the whole time; a rollout that fails and reverts;
//! a host cut off and healed; a NATS server stopped during a deploy; a host
//! drained; a host killed.
//!
//! Each fault prints one line, `FAULT | what was done | what survived`;
//! together they are the table in docs/multi-host.md.
//!
//! Needs `cargo build --workspace --bins` and the images `host`, `nats`,
//! `nginx` and `debian` from `e2e/images/build.sh`.

use std::time::{Duration, Instant};

use infra_e2e::scenarios::{Client, containers, everywhere, get, start, wait_for};

fn fault(what: &str, survived: &str) {
    println!("FAULT | {what} | {survived}");
}

#[test]
fn replicas_over_three_hosts_survive_rollouts_a_cut_a_nats_server_and_a_drain_with_no_failed_request() {
    let (c, _catalog) = start("mh", 3, 60);
    let progress = c.call("Deploy", r#"{"selection":{"services":["gw"]},"timeoutSeconds":120}"#);
    let done = progress.last().unwrap();
    assert_eq!(done["ready"], 3, "web, api, gw: {progress:#?}\n{}", c.all_logs());
    // One web replica on each host, reached across hosts through the
    // gateway on host1.
    let web = everywhere(&c, "web");
    assert_eq!(web.len(), 3, "{web:#?}");
    let gw = format!("{}:8088", c.host_ip("host1"));
    assert_eq!(get(&gw, "/version").as_deref(), Ok("1"));
    assert_eq!(get(&gw, "/api/version").as_deref(), Ok("api"));

    // 1. A rolling update while a client sends requests the whole time.
    let client = Client::start(gw.clone(), "/version");
    client.wait_sent(20);
    let t0 = Instant::now();
    let progress = c.call(
        "Rollout",
        r#"{"service":"web","environment":{"VERSION":"2"},"timeoutSeconds":60}"#,
    );
    let took = t0.elapsed();
    client.wait_sent(20);
    let (n, failed, bodies) = client.take();
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    assert!(failed.is_empty(), "{} of {n} requests failed: {failed:?}", failed.len());
    let web = everywhere(&c, "web");
    assert_eq!(web.len(), 3, "{web:#?}");
    assert!(
        web.values().flatten().all(|r| r.2 == "2"),
        "every replica on VERSION=2: {web:#?}"
    );
    assert!(bodies.contains_key("2"), "{bodies:?}");
    fault(
        "roll web (3 replicas on 3 hosts, stop-first, 1 at a time) to VERSION=2 under load",
        &format!(
            "{n} requests, 0 failed; every replica on the new version; {:.1}s",
            took.as_secs_f64()
        ),
    );

    // 2. A rollout whose health check fails: first batch only, reverted.
    let before = everywhere(&c, "web");
    let progress = c.call(
        "Rollout",
        r#"{"service":"web","environment":{"BROKEN":"1"},"timeoutSeconds":30}"#,
    );
    let (n, failed, _) = client.take();
    let done = progress.last().unwrap();
    assert_eq!(done["failed"], 1, "{progress:#?}");
    assert!(done["message"].as_str().unwrap().contains("rolled back"), "{done}");
    let tried: Vec<_> = progress.iter().filter(|m| m["phase"] == "PHASE_UPDATING").collect();
    assert_eq!(tried.len(), 1, "only the first batch: {progress:#?}");
    assert!(failed.is_empty(), "{} of {n} requests failed: {failed:?}", failed.len());
    let after = everywhere(&c, "web");
    assert!(
        after.values().flatten().all(|r| r.3.is_empty() && r.2 == "2"),
        "{after:#?}"
    );
    let untouched = before
        .values()
        .flatten()
        .filter(|r| after.values().flatten().any(|a| a.0 == r.0))
        .count();
    assert_eq!(untouched, 2, "two replicas never restarted: {before:#?} {after:#?}");
    fault(
        "roll web to a spec whose health check fails (failure_action: rollback)",
        &format!("stopped at batch 1, reverted; {n} requests, 0 failed; 2 replicas never restarted"),
    );

    // 7. Cut host3 off the network, heal it: its container ran throughout.
    let host3_before = containers(&c, "host3", "web");
    c.cut("host3");
    // The fault's length, not a wait for anything: a partition of 8 s,
    // several heartbeats long and short of host_lost_secs (60).
    let partition = Duration::from_secs(8);
    std::thread::sleep(partition);
    c.heal("host3");
    c.wait_heartbeats_again("host3 heartbeats again", Duration::from_secs(30));
    client.wait_sent(50);
    let (n, failed, _) = client.take();
    let host3_after = containers(&c, "host3", "web");
    assert_eq!(host3_before, host3_after, "same container, same start time");
    let web = everywhere(&c, "web");
    assert_eq!(
        web.values().map(Vec::len).sum::<usize>(),
        3,
        "nothing duplicated: {web:#?}"
    );
    assert!(failed.is_empty(), "{} of {n} requests failed: {failed:?}", failed.len());
    fault(
        "cut host3 off the network for 8s, then heal it",
        &format!(
            "its web container ran throughout (same id and start time); 3 replicas, none twice; {n} requests, 0 failed"
        ),
    );

    // 6. Stop one of the three NATS servers during a deploy.
    let deploy = {
        let addr = c.grpc().to_owned();
        std::thread::spawn(move || {
            infra_e2e::call_at(
                &addr,
                "Deploy",
                r#"{"selection":{"services":["cache"]},"timeoutSeconds":60}"#,
            )
        })
    };
    c.stop_nats(1);
    let progress = deploy.join().unwrap();
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    assert_eq!(everywhere(&c, "cache").len(), 1);
    c.start_nats(1);
    // The operators that were on it are back on the bus before the drain
    // counts on them.
    c.wait_heartbeats_again(
        "every operator heartbeats after the NATS restart",
        Duration::from_secs(30),
    );
    fault(
        "stop one of three NATS servers as a deploy starts",
        "the deploy finished; the service runs",
    );

    // 3. Drain a host: api's replica there runs elsewhere before it stops.
    let api_before = everywhere(&c, "api");
    assert_eq!(api_before.len(), 2, "{api_before:#?}");
    let drained = api_before.keys().find(|h| *h != "host1").unwrap().clone();
    let api_client = Client::start(gw.clone(), "/api/version");
    api_client.wait_sent(10);
    let progress = c.call("Drain", &format!(r#"{{"host":"{drained}","timeoutSeconds":60}}"#));
    api_client.wait_sent(40);
    let (n, failed, _) = api_client.take();
    let done = progress.last().unwrap();
    assert!(done["message"].as_str().unwrap().contains("api -> "), "{progress:#?}");
    // The drained host's replica stops once its operator sees it removed
    // (after the new one is healthy: the requests above show none failed).
    wait_for(
        &format!("api's replica on {drained} stopped"),
        Duration::from_secs(30),
        || {
            let now = everywhere(&c, "api");
            now.len() == 2 && !now.contains_key(&drained)
        },
    );
    assert!(failed.is_empty(), "{} of {n} requests failed: {failed:?}", failed.len());
    let hosts = c.call("ListHosts", "{}");
    assert!(hosts[0].to_string().contains("drained"), "{hosts:#?}");
    fault(
        &format!("drain {drained} (api: 2 replicas, 1 per host)"),
        &format!("api started elsewhere and was healthy before it stopped on {drained}; {n} requests, 0 failed"),
    );
    drop(api_client);
    drop(client);
}

#[test]
fn a_killed_hosts_stateless_replicas_start_elsewhere_and_its_stateful_service_is_reported_not_moved() {
    let (c, _catalog) = start("mhkill", 2, 5);
    let progress = c.call(
        "Deploy",
        r#"{"selection":{"services":["web","db"]},"timeoutSeconds":120}"#,
    );
    assert_eq!(progress.last().unwrap()["ready"], 2, "{progress:#?}");
    let web = everywhere(&c, "web");
    assert_eq!(
        web.keys().cloned().collect::<Vec<_>>(),
        vec!["host1", "host2"],
        "{web:#?}"
    );
    assert_eq!(everywhere(&c, "db").keys().cloned().collect::<Vec<_>>(), vec!["host2"]);

    let t0 = Instant::now();
    c.kill_host("host2");
    let moved = wait_for("web healthy on host3", Duration::from_secs(60), || {
        let st = c.call("GetStatus", "{}");
        st[0]["services"].as_array().is_some_and(|rows| {
            rows.iter()
                .any(|r| r["service"] == "web" && r["host"] == "host3" && r["healthyReplicas"] == 1)
        })
    });
    let _ = moved;
    let elapsed = t0.elapsed();
    // The stateful db is reported, not moved.
    assert!(everywhere(&c, "db").is_empty(), "db runs nowhere else");
    let events = c.coordinator_log(0);
    assert!(
        events.contains("host lost") || events.contains("host_lost") || events.contains("lost"),
        "{events}"
    );
    let hosts = c.call("ListHosts", "{}");
    assert!(hosts[0].to_string().contains("\"lost\""), "{hosts:#?}");
    let st = c.call("GetStatus", "{}");
    let db_row = st[0]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "db")
        .cloned()
        .unwrap_or_default();
    assert_eq!(db_row["host"], "host2", "db stays placed on host2: {st:#?}");
    fault(
        "kill host2 (web replica, stateful db pinned there); host_lost_secs 5",
        &format!(
            "web healthy on host3 {:.1}s after the kill; db reported on host2, not moved",
            elapsed.as_secs_f64()
        ),
    );

    // The host comes back: nothing runs twice, db is back where its data is.
    c.start_host("host2");
    wait_for("host2 heartbeats", Duration::from_secs(60), || {
        c.list_hosts().is_some_and(|h| h.contains_key("host2"))
    });
    wait_for("db runs on host2 again", Duration::from_secs(60), || {
        !containers(&c, "host2", "db").is_empty()
    });
    // Its operators removed what moved away while it was lost.
    wait_for("web only on host1 and host3", Duration::from_secs(30), || {
        everywhere(&c, "web").keys().cloned().collect::<Vec<_>>() == ["host1", "host3"]
    });
    fault(
        "host2 comes back",
        "web not started twice (host1, host3); db running on host2 again",
    );
}

#[test]
fn a_dependent_on_another_host_follows_its_dependency_when_a_drain_moves_it() {
    use infra_e2e::hosts::{Cluster, ClusterOptions};
    let dir = tempfile::tempdir().unwrap();
    infra_e2e::write(
        dir.path(),
        "01-gateway/app/docker-compose.yml",
        r#"services:
  echo:
    image: infra-local/nginx:1
    expose: ["8081"]
    command: ["sh", "-c", "sed -i 's/listen       80;/listen 8081;/; /\\[::\\]:80/d' /etc/nginx/conf.d/default.conf && hostname > /usr/share/nginx/html/version && exec nginx -g 'daemon off;'"]
    deploy:
      placement:
        constraints: ["node.hostname != host1"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8081/version"]
      interval: 1s
      retries: 3
  client:
    image: infra-local/nginx:1
    depends_on:
      echo: { condition: service_healthy }
    deploy:
      placement:
        constraints: ["node.hostname == host1"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://echo:8081/version"]
      interval: 1s
      retries: 3
"#,
    );
    let c = Cluster::start(
        ClusterOptions::new(3)
            .tiers(&["gateway"])
            .images(&["infra-local/nginx:1"])
            .catalog(dir.path()),
    );
    let progress = c.call("Deploy", r#"{"timeoutSeconds":120}"#);
    assert_eq!(progress.last().unwrap()["ready"], 2, "{progress:#?}\n{}", c.all_logs());
    let on = |svc: &str| -> String {
        let hosts: Vec<String> = everywhere(&c, svc).into_keys().collect();
        assert_eq!(hosts.len(), 1, "{svc} runs on one host: {hosts:?}");
        hosts[0].clone()
    };
    let from = on("echo");
    assert_ne!(from, "host1");
    // The client's container (its name alternates between updates).
    let client = || {
        let out = c.docker("host1", &["ps", "-q", "--filter", "label=io.infra.service=client"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let hosts_file = || {
        let out = c.docker("host1", &["exec", &client(), "cat", "/etc/hosts"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        hosts_file().contains(&c.host_ip(&from)),
        "client reaches echo on {from}: {}",
        hosts_file()
    );

    // Drain echo's host: echo starts on the third host, and the client on
    // host1 follows it there (made again with the new address).
    let t0 = Instant::now();
    let progress = c.call("Drain", &format!(r#"{{"host":"{from}","timeoutSeconds":90}}"#));
    assert!(
        progress.iter().all(|p| p["phase"] != "PHASE_FAILED"),
        "{progress:#?}\n{}",
        c.all_logs()
    );
    wait_for("echo off the drained host", Duration::from_secs(60), || {
        everywhere(&c, "echo").keys().all(|h| *h != from)
    });
    let to = on("echo");
    assert!(to != from && to != "host1", "echo moved to the third host, not {to}");
    wait_for(
        "the client reaches echo on its new host",
        Duration::from_secs(90),
        || {
            hosts_file().contains(&c.host_ip(&to))
                && c.docker(
                    "host1",
                    &["exec", &client(), "wget", "-q", "-O", "-", "http://echo:8081/version"],
                )
                .status
                .success()
        },
    );
    let status = c.call("GetStatus", r#"{"selection":{"services":["client"]}}"#);
    assert_eq!(
        status[0]["services"][0]["health"], "HEALTH_HEALTHY",
        "the client is healthy again: {status:#?}"
    );
    fault(
        &format!("drain {from}, where echo runs, with its client on host1"),
        &format!(
            "echo started on {to}; the client followed it (new address, healthy) {:.1}s after the drain began",
            t0.elapsed().as_secs_f64()
        ),
    );
}
