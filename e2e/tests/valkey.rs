//! The Valkey cluster, end to end on one host: the real coordinator, data
//! operator, NATS, Docker engine and grpcurl deploy the six nodes of
//! `compose/04-data/valkey-cluster` (Redis 7.0 stand-ins,
//! `infra-local/redis:7`), and the data operator forms them into a cluster
//! of three primaries and three replicas, once.
//!
//! Needs: `cargo build --workspace --bins`, `e2e/images/build.sh redis`,
//! `e2e/images/make-dev-secrets.sh`.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use infra_e2e::{Options, Platform};
use infra_proto::bus::v1::{Event, EventKind};
use prost::Message;

const NODES: [&str; 6] = [
    "valkey-node-0",
    "valkey-node-1",
    "valkey-node-2",
    "valkey-node-3",
    "valkey-node-4",
    "valkey-node-5",
];

/// `valkey-cli <args>` in a node container, authenticated from the node's
/// secret file (the password never on a command line here either).
fn cli(container: &str, args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(["exec", container, "sh", "-c"])
        .arg(r#"REDISCLI_AUTH="$(cat /run/secrets/valkey_cluster_password)" exec valkey-cli --no-auth-warning "$@""#)
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
    let mut sub = nats.subscribe(format!("infra.events.{host}.>")).await.unwrap();
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let sink = events.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Ok(ev) = Event::decode(m.payload) {
                sink.lock().unwrap().push(ev);
            }
        }
    });

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
    assert!(
        took < Duration::from_secs(30),
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
