//! Multi-host benchmark on simulated hosts (three Docker-in-Docker hosts, a
//! NATS cluster of three, the real coordinator and operators): a rolling
//! update of a service with three replicas over three hosts while a client
//! sends requests through the gateway, against the sum of the health gates
//! it had to wait for; and the time from a host's death to its replicas
//! healthy elsewhere. Prints figures; `just bench-hosts [ROUNDS]`; see
//! e2e/BENCH.md.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures::StreamExt;
use infra_e2e::scenarios::{Client, everywhere, start_with, wait_for};
use infra_proto::bus::v1::{Event, EventKind};
use prost::Message;

/// Multi-host rollout and host-loss benchmark.
#[derive(Parser, Debug)]
#[command(name = "bench-hosts")]
struct Args {
    /// Rollouts to measure (each to a new VERSION).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// `host_lost_secs` of the coordinator.
    #[arg(long, default_value_t = 5)]
    lost_secs: u64,
    /// `lease_secs` of the coordinators (two run; one leads).
    #[arg(long, default_value_t = 5)]
    lease_secs: u64,
}

/// A harmless write (make an unknown host active): accepted only by the
/// leader.
fn leads(c: &infra_e2e::hosts::Cluster, i: usize) -> bool {
    let out = infra_e2e::grpcurl_at(
        &c.grpc_addrs()[i],
        &["infra.coordinator.v1.CoordinatorService/Drain"],
        Some(r#"{"host":"nohost","undo":true}"#),
    );
    out.status.success()
}

/// Monitor time of the catalog's update_config (see scenarios::catalog).
const MONITOR: Duration = Duration::from_secs(2);

fn ns(t: &prost_types::Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let (mut c, _catalog) = start_with(
        "benchhosts",
        3,
        args.lost_secs,
        2,
        vec![("INFRA_LEASE_SECS".into(), args.lease_secs.to_string())],
    );
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let servers: Vec<async_nats::ServerAddr> = c.nats_urls().iter().filter_map(|u| u.parse().ok()).collect();
    let opts = match async_nats::ConnectOptions::with_credentials(c.admin_creds()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-hosts: the harness's NATS credential: {e}");
            return ExitCode::FAILURE;
        }
    };
    let nats = match opts.add_root_certificates(c.nats_ca()).connect(servers).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("bench-hosts: cannot reach the cluster's NATS: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut sub = nats.subscribe("infra.events.>").await.expect("subscribe");
    let sink = events.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Ok(ev) = Event::decode(m.payload) {
                sink.lock().unwrap().push(ev);
            }
        }
    });
    let progress = c.call("Deploy", r#"{"selection":{"services":["gw"]},"timeoutSeconds":120}"#);
    if progress.last().map(|d| d["ready"].as_u64()) != Some(Some(3)) {
        eprintln!("bench-hosts: the deploy did not come up: {progress:#?}");
        return ExitCode::FAILURE;
    }
    let gw = format!("{}:8088", c.host_ip("host1"));
    let client = Client::start(gw.clone(), "/version");
    std::thread::sleep(Duration::from_secs(1));
    client.take();

    println!("rolling update: web, 3 replicas on 3 hosts, stop-first, parallelism 1, monitor {MONITOR:?}");
    println!(
        "{:>5} {:>9} {:>13} {:>9} {:>9} {:>8}",
        "round", "total_s", "health_gates_s", "over_%", "requests", "failed"
    );
    let mut overs = Vec::new();
    let mut breakdown: Vec<(f64, f64)> = Vec::new();
    for round in 1..=args.rounds {
        let version = round + 1;
        events.lock().unwrap().clear();
        let t0 = now_ns();
        let started = Instant::now();
        let progress = c.call(
            "Rollout",
            &format!(r#"{{"service":"web","environment":{{"VERSION":"{version}"}},"timeoutSeconds":60}}"#),
        );
        let total = started.elapsed();
        if progress.last().map(|d| d["ready"].as_u64()) != Some(Some(1)) {
            eprintln!("bench-hosts: round {round} failed: {progress:#?}");
            return ExitCode::FAILURE;
        }
        let (n, failed, _) = client.take();
        // A gate per new container: started -> healthy (the operator's
        // events), plus the monitor time the rollout must watch it.
        let evs = events.lock().unwrap().clone();
        let mut started_at: HashMap<String, i128> = HashMap::new();
        let mut gates = Duration::ZERO;
        // Where the rest goes: batch start (rollout start or the previous
        // batch's end) -> old container removed -> new one started.
        let (mut stop, mut create, mut batch_start, mut removed_at) = (0i128, 0i128, t0, None::<i128>);
        for e in evs
            .iter()
            .filter(|e| e.service == "web" && e.time.as_ref().is_some_and(|t| ns(t) >= t0))
        {
            let t = ns(e.time.as_ref().unwrap());
            match e.kind() {
                EventKind::RolloutBatchDone => batch_start = t,
                EventKind::Removed => {
                    stop += t - batch_start;
                    removed_at = Some(t);
                }
                EventKind::Started => {
                    if let Some(r) = removed_at.take() {
                        create += t - r;
                    }
                    started_at.insert(e.container_id.clone(), t);
                }
                EventKind::Healthy => {
                    if let Some(s) = started_at.remove(&e.container_id) {
                        gates += Duration::from_nanos((t - s).max(0) as u64) + MONITOR;
                    }
                }
                _ => {}
            }
        }
        breakdown.push((stop as f64 / 1e9, create as f64 / 1e9));
        let over = (total.as_secs_f64() / gates.as_secs_f64().max(1e-9) - 1.0) * 100.0;
        overs.push(over);
        println!(
            "{round:>5} {:>9.2} {:>13.2} {:>9.1} {n:>9} {:>8}",
            total.as_secs_f64(),
            gates.as_secs_f64(),
            over,
            failed.len()
        );
    }
    for (i, (stop, create)) in breakdown.iter().enumerate() {
        println!(
            "round {}: outside the gates, {stop:.2}s went to dispatching and stopping old containers, {create:.2}s to creating and starting new ones",
            i + 1
        );
    }
    overs.sort_by(f64::total_cmp);
    println!(
        "median overhead above the health gates: {:.1}% (aim: within 10%)",
        overs[overs.len() / 2]
    );

    // Host death: web's replica on host3 must be healthy elsewhere. With one
    // replica per host and three hosts, scale to 2 first so a host is free.
    c.call("Scale", r#"{"service":"web","replicas":2,"timeoutSeconds":60}"#);
    let web = everywhere(&c, "web");
    let victim = web
        .keys()
        .find(|h| *h != "host1")
        .cloned()
        .expect("a web replica off host1");
    c.kill_host(&victim);
    let lost = wait_for("the host declared lost", Duration::from_secs(120), || {
        c.call("ListHosts", "{}")[0].to_string().contains("\"lost\"")
    });
    let moved = wait_for("web healthy on another host", Duration::from_secs(120), || {
        let st = c.call("GetStatus", "{}");
        st[0]["services"].as_array().is_some_and(|rows| {
            rows.iter()
                .filter(|r| r["service"] == "web" && r["host"] != victim.as_str() && r["healthyReplicas"] == 1)
                .count()
                >= 2
        })
    });
    let (n, failed, _) = client.take();
    println!(
        "host death ({victim}): declared lost after {:.1}s (heartbeat TTL 5s + host_lost_secs {}), replicas healthy elsewhere {:.1}s after the kill; {n} requests meanwhile, {} failed",
        lost.as_secs_f64(),
        args.lost_secs,
        (lost + moved).as_secs_f64(),
        failed.len()
    );
    // A new coordinator takes the lead: after a clean stop (the lease is
    // released) and after a crash (the lease must run out).
    let first = (0..2).find(|i| leads(&c, *i)).expect("one coordinator leads");
    let other = 1 - first;
    c.stop_coordinator(first);
    let handover = wait_for("the other coordinator leads", Duration::from_secs(60), || {
        leads(&c, other)
    });
    c.start_coordinator(first);
    c.kill_coordinator(other);
    let takeover = wait_for("the first coordinator leads again", Duration::from_secs(60), || {
        leads(&c, first)
    });
    println!(
        "new leader: {:.2}s after a clean stop (lease released), {:.2}s after a crash (lease {}s)",
        handover.as_secs_f64(),
        takeover.as_secs_f64(),
        args.lease_secs
    );
    drop(client);
    ExitCode::SUCCESS
}
