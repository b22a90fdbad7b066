//! A three-node RabbitMQ cluster (`rabbit-0`..`rabbit-2`, RabbitMQ 3.10
//! from Debian, `infra-local/rabbitmq:3`) deployed through the real
//! coordinator and messaging operator on one host, clustered by a shared
//! Erlang cookie (a Docker secret) and classic peer discovery, then rolled
//! to a new image with the `rabbitmq` update-order hook while a client
//! publishes with confirms to a quorum queue the whole time.
//!
//! What is checked is what an operator of the cluster would check: the
//! nodes restart one at a time; each is back in the cluster with the quorum
//! queue's members all online before the next goes down; every message the
//! broker confirmed is still there to consume after the roll; the
//! management password is in no log.
//!
//! Prints `FAULT | ...` and `BENCH | rabbitmq roll ...` (e2e/BENCH.md).
//!
//! Needs `cargo build --workspace --bins` and `e2e/images/build.sh
//! rabbitmq`.
//!
//! The nodes form their cluster with classic peer discovery
//! (`cluster_nodes` in `RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS`), each
//! depending on the one before being healthy, so every node joins a
//! running cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use infra_bus::testing::free_port;
use infra_e2e::scenarios::{wait_for, write};
use infra_e2e::{Options, Platform};

const USER: &str = "admin";
const IMAGE: &str = "infra-local/rabbitmq:3";
const ROLLED: &str = "infra-local/rabbitmq:3-roll";
const NODES: [&str; 3] = ["rabbit-0", "rabbit-1", "rabbit-2"];

fn fault(what: &str, survived: &str) {
    println!("FAULT | {what} | {survived}");
}

/// A random token of `n` hex characters (from the kernel).
fn token(n: usize) -> String {
    let mut b = vec![0u8; n / 2];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The management API of one node, at `127.0.0.1:port`.
#[derive(Clone)]
struct Api {
    ports: Vec<u16>,
    auth: String,
}

impl Api {
    /// `method path` on node `i`: (status, body). HTTP/1.0, so cowboy
    /// answers with a plain body and closes.
    fn call(&self, i: usize, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
        let addr = format!("127.0.0.1:{}", self.ports[i]);
        let mut s = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let body = body.unwrap_or("");
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Basic {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.auth,
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).map_err(|e| format!("read {addr}: {e}"))?;
        let (head, rest) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("{addr}: not HTTP: {head:?}"))?;
        Ok((code, rest.to_owned()))
    }

    /// `GET path` as JSON from the first node that answers 200.
    fn json(&self, path: &str) -> Option<serde_json::Value> {
        (0..self.ports.len()).find_map(|i| match self.call(i, "GET", path, None) {
            Ok((200, b)) => serde_json::from_str(&b).ok(),
            _ => None,
        })
    }

    /// Nodes running, as the cluster says.
    fn running(&self) -> Option<BTreeSet<String>> {
        let v = self.json("/api/nodes?columns=name,running")?;
        Some(
            v.as_array()?
                .iter()
                .filter(|n| n["running"] == true)
                .filter_map(|n| n["name"].as_str().map(str::to_owned))
                .collect(),
        )
    }

    /// The quorum queue's members online in every copy of `online` (3.10
    /// lists it twice while its own view and the statistics differ), and
    /// its members; raw text, since a JSON map would keep only one copy.
    fn online(&self, queue: &str) -> Option<(BTreeSet<String>, usize)> {
        let (_, body) = (0..self.ports.len()).find_map(|i| {
            self.call(i, "GET", "/api/queues?columns=name,members,online", None)
                .ok()
                .filter(|(c, _)| *c == 200)
        })?;
        let obj = body
            .split("},{")
            .find(|o| o.contains(&format!("\"name\":\"{queue}\"")))?
            .to_owned();
        let lists = |key: &str| -> Vec<BTreeSet<String>> {
            obj.match_indices(&format!("\"{key}\":["))
                .map(|(at, k)| {
                    let rest = &obj[at + k.len()..];
                    let end = rest.find(']').unwrap_or(rest.len());
                    rest[..end]
                        .split(',')
                        .map(|s| s.trim_matches('"').to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .collect()
        };
        let members = lists("members").into_iter().next().unwrap_or_default();
        let mut online = members.clone();
        for copy in lists("online") {
            online = online.intersection(&copy).cloned().collect();
        }
        Some((online, members.len()))
    }

    /// Publishes `payload` to `queue` through node `i`, with a confirm (the
    /// management API publishes on a channel in confirm mode and answers
    /// only once the broker acknowledged): whether it was confirmed and
    /// routed.
    fn publish(&self, i: usize, queue: &str, payload: &str) -> bool {
        let body = serde_json::json!({
            "properties": { "delivery_mode": 2 },
            "routing_key": queue,
            "payload": payload,
            "payload_encoding": "string",
        })
        .to_string();
        matches!(
            self.call(i, "POST", "/api/exchanges/%2F/amq.default/publish", Some(&body)),
            Ok((200, b)) if b.contains("\"routed\":true")
        )
    }
}

fn base64(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                char::from(A[((n >> (18 - 6 * i)) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// The catalog: three nodes, each publishing its management port on a
/// port of its own on 127.0.0.1, the update-order labels, the password and
/// the Erlang cookie as Docker secrets.
fn catalog(dir: &Path, ports: &[u16]) {
    let nodes = "{['rabbit@rabbit-0','rabbit@rabbit-1','rabbit@rabbit-2'],disc}";
    let mut y = String::from("services:\n");
    for (i, name) in NODES.iter().enumerate() {
        // Each node joins a running cluster: two blank nodes booting at
        // once may pick each other and form a second cluster.
        let depends = if i == 0 {
            String::new()
        } else {
            format!(
                "    depends_on:\n      rabbit-{}: {{ condition: service_healthy }}\n",
                i - 1
            )
        };
        y += &format!(
            r#"  {name}:
    image: {IMAGE}
    hostname: {name}
    ports: ["127.0.0.1:{port}:15672"]
    expose: ["5672", "4369", "25672"]
    labels:
      infra.update-order: rabbitmq
      infra.update-order.cluster: rabbit
      infra.update-order.port: "15672"
      infra.update-order.rabbitmq-user: {USER}
      infra.update-order.rabbitmq-password-secret: rabbitmq_password
    environment:
      RABBITMQ_DEFAULT_USER: {USER}
      RABBITMQ_DEFAULT_PASS_FILE: /run/secrets/rabbitmq_password
      RABBITMQ_ERLANG_COOKIE_FILE: /run/secrets/rabbitmq_erlang_cookie
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: "-rabbit cluster_nodes {nodes}"
    secrets: [rabbitmq_password, rabbitmq_erlang_cookie]
    volumes: ["{name}-data:/var/lib/rabbitmq"]
    stop_grace_period: 30s
    healthcheck:
      test: ["CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/5672"]
      interval: 1s
      timeout: 3s
      retries: 3
      start_period: 120s
{depends}    deploy:
      update_config:
        parallelism: 1
        order: stop-first
        failure_action: pause
"#,
            port = ports[i]
        );
    }
    y += "volumes:\n";
    for name in NODES {
        y += &format!("  {name}-data: {{}}\n");
    }
    y += "secrets:\n  rabbitmq_password:\n    file: ./rabbitmq_password\n  rabbitmq_erlang_cookie:\n    file: ./rabbitmq_erlang_cookie\n";
    write(dir, "05-messaging/rabbitmq-cluster/docker-compose.yml", &y);
}

/// The one running container of service `name` in `project`: its start
/// time and image.
fn started_at(project: &str, name: &str) -> String {
    let o = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=io.infra.project={project}"),
            "--filter",
            &format!("label=io.infra.service={name}"),
        ])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(!id.is_empty() && !id.contains('\n'), "one {name} container: {id:?}");
    let o = Command::new("docker")
        .args(["inspect", "-f", "{{.State.StartedAt}} {{.Config.Image}}", &id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// One sample of the cluster during the roll.
struct Sample {
    at: Duration,
    running: Option<BTreeSet<String>>,
    online: Option<(BTreeSet<String>, usize)>,
}

#[test]
fn a_rabbitmq_cluster_rolls_one_node_at_a_time_each_back_with_its_queue_members_online_and_keeps_every_confirmed_message()
 {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let dir = tempfile::tempdir().unwrap();
    let password = token(24);
    write(
        dir.path(),
        "05-messaging/rabbitmq-cluster/rabbitmq_password",
        &format!("{password}\n"),
    );
    write(
        dir.path(),
        "05-messaging/rabbitmq-cluster/rabbitmq_erlang_cookie",
        &token(32),
    );
    catalog(dir.path(), &ports);
    let mut opts = Options::local("rabbitmq");
    opts.tiers = vec!["messaging".into()];
    opts.compose_dir = dir.path().to_owned();
    opts.overrides.clear();
    let project = opts.project.clone();
    let p = Platform::start(opts);
    let api = Api {
        ports: ports.clone(),
        auth: base64(format!("{USER}:{password}").as_bytes()),
    };

    // 1. Bring-up: rabbit-0, then rabbit-1 joins it, then rabbit-2.
    let t0 = Instant::now();
    let progress = p.call(
        "Deploy",
        r#"{"selection":{"services":["rabbit-0","rabbit-1","rabbit-2"]},"timeoutSeconds":300}"#,
    );
    let done = progress.iter().find(|m| m["phase"] == "PHASE_DONE");
    assert!(
        done.is_some_and(|d| d["ready"].as_u64() == Some(3)),
        "{progress:#?}\n{}",
        p.all_logs()
    );
    let all: BTreeSet<String> = NODES.iter().map(|n| format!("rabbit@{n}")).collect();
    let formed = Instant::now();
    while api.running().as_ref() != Some(&all) {
        if formed.elapsed() > Duration::from_secs(180) {
            let views: Vec<String> = (0..3)
                .map(|i| format!("{:?}", api.call(i, "GET", "/api/nodes?columns=name,running", None)))
                .collect();
            panic!(
                "three nodes not running in one cluster within 180s: {views:#?}\n{}",
                p.all_logs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let up = t0.elapsed();

    // 2. A quorum queue on all three, and messages published with confirms.
    let (code, body) = api
        .call(
            0,
            "PUT",
            "/api/queues/%2F/orders",
            Some(r#"{"durable":true,"arguments":{"x-queue-type":"quorum"}}"#),
        )
        .unwrap();
    assert!(code == 201 || code == 204, "declare orders: {code} {body}");
    wait_for("orders has three members online", Duration::from_secs(60), || {
        api.online("orders").is_some_and(|(on, n)| n == 3 && on.len() == 3)
    });
    let confirmed: Arc<Mutex<Vec<String>>> = Arc::default();
    for k in 0..200 {
        let m = format!("before-{k}");
        assert!(api.publish(k % 3, "orders", &m), "publish {m}");
        confirmed.lock().unwrap().push(m);
    }

    // 3. Roll: the three nodes to a new image (the same bits, retagged), a
    // Rollout each, all at once, so the cluster lock and the hook decide
    // the order; a publisher and a sampler run the whole time.
    let o = Command::new("docker").args(["tag", IMAGE, ROLLED]).output().unwrap();
    assert!(o.status.success(), "docker tag: {}", String::from_utf8_lossy(&o.stderr));
    let before: BTreeMap<&str, String> = NODES.iter().map(|n| (*n, started_at(&project, n))).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let t1 = Instant::now();
    let sampler = {
        let (api, stop, samples) = (api.clone(), stop.clone(), samples.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let running = api.running();
                let online = api.online("orders");
                samples.lock().unwrap().push(Sample {
                    at: t1.elapsed(),
                    running,
                    online,
                });
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let failed_publishes = Arc::new(Mutex::new(0u64));
    let publisher = {
        let (api, stop, confirmed, failed) = (api.clone(), stop.clone(), confirmed.clone(), failed_publishes.clone());
        std::thread::spawn(move || {
            let mut k = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let m = format!("during-{k}");
                let ok = (0..3).any(|i| api.publish((k as usize + i) % 3, "orders", &m));
                if ok {
                    confirmed.lock().unwrap().push(m);
                } else {
                    *failed.lock().unwrap() += 1;
                }
                k += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let grpc = p.grpc.clone();
    let rolls: Vec<_> = NODES
        .iter()
        .map(|n| {
            let grpc = grpc.clone();
            let req = format!(r#"{{"service":"{n}","image":"{ROLLED}","timeoutSeconds":180}}"#);
            std::thread::spawn(move || infra_e2e::call_at(&grpc, "Rollout", &req))
        })
        .collect();
    let results: Vec<Vec<serde_json::Value>> = rolls.into_iter().map(|h| h.join().unwrap()).collect();
    let took = t1.elapsed();
    // Publish a little longer: the cluster must take writes after the roll.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    publisher.join().unwrap();
    for (n, r) in NODES.iter().zip(&results) {
        let last = r.last().cloned().unwrap_or_default();
        assert!(
            last["phase"] == "PHASE_DONE" && last["failed"].as_u64().unwrap_or(0) == 0,
            "Rollout {n}: {r:#?}\n{}",
            p.log("coordinator")
        );
        assert!(
            r.iter().any(|m| m["message"]
                .as_str()
                .is_some_and(|s| s.contains(&format!("({n}) on the new spec and caught up")))),
            "Rollout {n} went through the hook: {r:#?}"
        );
    }
    let after: BTreeMap<&str, String> = NODES.iter().map(|n| (*n, started_at(&project, n))).collect();
    for n in NODES {
        assert!(after[n].ends_with(ROLLED), "{n} runs {ROLLED}: {}", after[n]);
        assert_ne!(before[n], after[n], "{n} restarted");
    }

    // One at a time, each back in full before the next: from the samples,
    // the windows in which a node was missing (not running, or its queue
    // member not online) never overlap, and between two windows there is a
    // sample with all three running and all three members online.
    let samples = samples.lock().unwrap();
    let answered: Vec<&Sample> = samples.iter().filter(|s| s.running.is_some()).collect();
    assert!(answered.len() > 10, "the sampler got answers: {}", answered.len());
    let mut windows: Vec<(String, Duration, Duration)> = Vec::new();
    let mut whole_between = Vec::new();
    for s in &answered {
        let running = s.running.clone().unwrap_or_default();
        let missing: Vec<String> = all.iter().filter(|n| !running.contains(*n)).cloned().collect();
        assert!(
            missing.len() <= 1,
            "at {:?} two nodes were down at once: {missing:?}",
            s.at
        );
        let whole = missing.is_empty() && s.online.as_ref().is_some_and(|(on, n)| *n == 3 && on.len() == 3);
        if let Some(m) = missing.first() {
            match windows.last_mut() {
                Some(w) if &w.0 == m && whole_between.last() == Some(&false) => w.2 = s.at,
                _ => {
                    windows.push((m.clone(), s.at, s.at));
                    whole_between.push(false);
                }
            }
        } else if whole && let Some(last) = whole_between.last_mut() {
            *last = true;
        }
    }
    let order: Vec<&str> = windows.iter().map(|w| w.0.as_str()).collect();
    let distinct: BTreeSet<&str> = order.iter().copied().collect();
    assert_eq!(
        (order.len(), distinct.len()),
        (3, 3),
        "each node seen down once, one after another: {windows:?}"
    );
    assert!(
        whole_between.iter().all(|w| *w),
        "after each node came back, the cluster was whole with the queue's members online before the next went down: {windows:?} {whole_between:?}"
    );

    // 4. Every confirmed message is still there to consume.
    let confirmed = confirmed.lock().unwrap().clone();
    let mut got: BTreeSet<String> = BTreeSet::new();
    wait_for("the queue answers after the roll", Duration::from_secs(30), || {
        api.online("orders").is_some_and(|(on, _)| on.len() == 3)
    });
    for _ in 0..20 {
        let (code, body) = api
            .call(
                0,
                "POST",
                "/api/queues/%2F/orders/get",
                Some(r#"{"count":500,"ackmode":"ack_requeue_false","encoding":"auto"}"#),
            )
            .unwrap();
        assert_eq!(code, 200, "get: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let batch: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["payload"].as_str().map(str::to_owned))
            .collect();
        if batch.is_empty() {
            break;
        }
        got.extend(batch);
    }
    let lost: Vec<&String> = confirmed.iter().filter(|m| !got.contains(*m)).collect();
    assert!(
        lost.is_empty(),
        "{} confirmed messages lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );

    // 5. The password is in no log.
    assert!(!p.all_logs().contains(&password), "the management password is in a log");

    let failed = *failed_publishes.lock().unwrap();
    let down: Vec<String> = windows
        .iter()
        .map(|(n, a, b)| format!("{n} {:.1}s", (*b - *a).as_secs_f64()))
        .collect();
    fault(
        "roll rabbit-0..2 to a new image (three Rollouts at once) while a client publishes with confirms to a quorum queue",
        &format!(
            "nodes down one at a time ({}), each back with the queue's 3 members online before the next; {} confirmed, 0 lost, {failed} unconfirmed attempts; {:.1}s",
            down.join(", "),
            confirmed.len(),
            took.as_secs_f64()
        ),
    );
    println!(
        "BENCH | rabbitmq roll | bring-up {:.1}s | roll {:.1}s | per node down {} | confirmed {} | lost 0 | unconfirmed attempts {failed}",
        up.as_secs_f64(),
        took.as_secs_f64(),
        down.join(" "),
        confirmed.len()
    );
}
