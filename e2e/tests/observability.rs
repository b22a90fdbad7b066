//! Scrape targets on simulated hosts, with the real Prometheus (2.42, from
//! `infra-local/prometheus:2`) on host1 reading the stack's own
//! `prometheus.yml` (its `infra` file_sd job): the observability operator
//! lists every operator (from their heartbeats), the coordinator, and a
//! service on host2 that declares a metrics port by label (an Nginx serving
//! a static `metrics` file), copies `targets.json` into Prometheus, and
//! Prometheus scrapes them all, `up`. A service deployed later is a target,
//! up, within a scrape interval and the file_sd refresh of being healthy.
//!
//! Needs `cargo build --workspace --bins` and the images `host`, `nats`,
//! `nginx` and `prometheus` from `e2e/images/build.sh`.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use infra_e2e::hosts::{Cluster, ClusterOptions};
use infra_e2e::write;
use infra_proto::bus::v1::EventKind;

/// The scrape interval the test runs Prometheus with (the stack's is 15s).
const SCRAPE_INTERVAL: Duration = Duration::from_secs(2);
/// The stack's file_sd refresh interval (prometheus.yml).
const FILE_SD_REFRESH: Duration = Duration::from_secs(5);

/// Prometheus as compose/06-observability/prometheus runs it, with the
/// stack's prometheus.yml (scrape interval shortened) written by the
/// command: a bind mount's source is a path on the coordinator's machine,
/// which a simulated host does not have. Two static metrics pages on host2
/// (data tier) that ask to be scraped; the second is deployed later.
fn catalog() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let conf = include_str!("../../compose/06-observability/prometheus/prometheus.yml").replace(
        "scrape_interval: 15s",
        &format!("scrape_interval: {}s", SCRAPE_INTERVAL.as_secs()),
    );
    assert!(
        conf.contains("/etc/prometheus/targets/*.json"),
        "the stack's file_sd job"
    );
    let conf: String = conf.lines().map(|l| format!("        {l}\n")).collect();
    write(
        dir.path(),
        "06-observability/prometheus/docker-compose.yml",
        &format!(
            r#"services:
  prometheus:
    image: infra-local/prometheus:2
    entrypoint: ["/bin/sh", "-c", "printf '%s\n' \"$$PROM_CONF\" > /tmp/prometheus.yml && exec /bin/prometheus --config.file=/tmp/prometheus.yml --storage.tsdb.path=/prometheus"]
    environment:
      PROM_CONF: |
{conf}    ports: ["9090:9090"]
    volumes:
      - prometheus-targets:/etc/prometheus/targets
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9090/-/healthy"]
      interval: 1s
      retries: 30
    deploy:
      placement:
        constraints: ["node.hostname == host1"]
    networks: [infra_net]
volumes:
  prometheus-targets:
networks:
  infra_net: {{}}
"#
        ),
    );
    let page = |name: &str, port: u16| {
        format!(
            r#"  {name}:
    image: infra-local/nginx:1
    command: ["sh", "-c", "sed -i 's/listen       80;/listen {port};/; /\\[::\\]:80/d' /etc/nginx/conf.d/default.conf && printf '# TYPE demo_up gauge\ndemo_up{{page=\"{name}\"}} 1\n' > /usr/share/nginx/html/metrics && exec nginx -g 'daemon off;'"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:{port}/metrics"]
      interval: 1s
      retries: 5
    ports: ["{port}:{port}"]
    labels:
      - prometheus.io/scrape=true
      - prometheus.io/port={port}
    deploy:
      placement:
        constraints: ["node.hostname == host2"]
    networks: [infra_net]
"#
        )
    };
    write(
        dir.path(),
        "04-data/pages/docker-compose.yml",
        &format!(
            "services:\n{}{}networks:\n  infra_net: {{}}\n",
            page("metrics-page", 9113),
            page("late-page", 9114)
        ),
    );
    dir
}

/// `GET path` on `addr`: the body of a 200 answer.
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let out = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = out.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Some(dechunk(body));
    }
    Some(body.to_owned())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// One active target of job `infra`, as `/api/v1/targets` shows it.
#[derive(Debug)]
#[allow(dead_code)] // `error` is read through Debug, in failure messages
struct Target {
    service: String,
    host: String,
    tier: String,
    health: String,
    error: String,
}

/// The active targets of job `infra`.
fn targets(prometheus: &str) -> Option<Vec<Target>> {
    let body = http_get(prometheus, "/api/v1/targets?state=active")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let s = |t: &serde_json::Value, k: &str| t[k].as_str().unwrap_or_default().to_owned();
    Some(
        v["data"]["activeTargets"]
            .as_array()?
            .iter()
            .filter(|t| t["labels"]["job"] == "infra")
            .map(|t| {
                let l = &t["labels"];
                Target {
                    service: s(l, "service"),
                    host: s(l, "host"),
                    tier: s(l, "tier"),
                    health: s(t, "health"),
                    error: s(t, "lastError"),
                }
            })
            .collect(),
    )
}

/// The value of an instant query that returns one series.
fn query(prometheus: &str, q: &str) -> Option<f64> {
    let enc: String = q
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_.-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let body = http_get(prometheus, &format!("/api/v1/query?query={enc}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn wait_for<T>(what: &str, limit: Duration, c: &Cluster, f: impl FnMut() -> Option<T>) -> T {
    infra_test_support::eventually::poll_with(what, limit, Duration::from_millis(100), f, || c.all_logs())
}

#[test]
fn prometheus_scrapes_every_operator_the_coordinator_and_a_labelled_service_on_another_host_and_a_new_service_within_a_refresh()
 {
    let dir = catalog();
    let coordinator_port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut opts = ClusterOptions::new(2)
        .images(&["infra-local/nginx:1", "infra-local/prometheus:2"])
        .catalog(dir.path());
    opts.host_tiers
        .insert("host1".into(), vec!["observability".into(), "gateway".into()]);
    opts.host_tiers
        .insert("host2".into(), vec!["data".into(), "gateway".into()]);
    opts.project = "obs".into();
    // Every operator listens on a free port on all addresses (published in
    // its heartbeats as addr:port); the coordinator, on the outer machine,
    // on a known port that Prometheus reaches at the network's gateway.
    opts.operator_env
        .push(("INFRA_METRICS_LISTEN".into(), "0.0.0.0:0".into()));
    opts.env
        .push(("INFRA_METRICS_LISTEN".into(), format!("0.0.0.0:{coordinator_port}")));
    let mut c = Cluster::start(opts);
    let host1 = c.host_ip("host1");
    assert!(
        http_get(&format!("127.0.0.1:{coordinator_port}"), "/metrics")
            .is_some_and(|m| m.contains("infra_coordinator_leader 1")),
        "the coordinator serves its metrics and leads"
    );
    // Coordinators publish no heartbeat: the observability operator is told
    // where they are. The coordinator runs on the outer machine, which the
    // hosts reach at their network's gateway (.1), known once the cluster
    // runs: restart the observability operator with it.
    let outer = format!("{}.1", host1.rsplit_once('.').unwrap().0);
    c.opts.operator_env.push((
        "OBSERVABILITY_COORDINATORS".into(),
        format!("coordinator1={outer}:{coordinator_port}"),
    ));
    c.stop_operator("host1", "observability");
    c.start_operator("host1", "observability");
    let events = infra_e2e::record_events(&c.nats_urls(), Some(&c.nats_ca()), Some(c.admin_creds()));
    let prometheus = format!("{host1}:9090");

    let progress = c.call(
        "Deploy",
        r#"{"selection":{"services":["prometheus","metrics-page"]},"timeoutSeconds":120}"#,
    );
    assert_eq!(progress.last().unwrap()["ready"], 2, "{progress:#?}");

    // The coordinator, every operator (4), and the page on host2, all up.
    let want = [
        ("coordinator", "coordinator1", "coordinator"),
        ("observability-operator", "host1", "observability"),
        ("gateway-operator", "host1", "gateway"),
        ("data-operator", "host2", "data"),
        ("gateway-operator", "host2", "gateway"),
        ("metrics-page", "host2", "data"),
    ];
    let t0 = Instant::now();
    let seen = wait_for("every target up in Prometheus", Duration::from_secs(60), &c, || {
        let t = targets(&prometheus)?;
        want.iter()
            .all(|(s, h, tier)| {
                t.iter()
                    .any(|t| t.service == *s && t.host == *h && t.tier == *tier && t.health == "up")
            })
            .then_some(t)
    });
    println!(
        "all {} targets up {:.1}s after the deploy returned: {seen:#?}",
        seen.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(seen.iter().all(|t| t.health == "up"), "every target is up: {seen:#?}");

    // What the targets say, through Prometheus: the data operator on host2
    // counts its healthy service, the coordinator the services it made
    // ready.
    let healthy_services = wait_for(
        "host2's data operator: healthy services",
        Duration::from_secs(30),
        &c,
        || {
            query(
                &prometheus,
                r#"infra_operator_services{health="healthy",host="host2",tier="data"}"#,
            )
        },
    );
    assert!(
        healthy_services >= 1.0,
        "metrics-page is healthy on host2: {healthy_services}"
    );
    let ready = wait_for(
        "the coordinator's ready deploy steps",
        Duration::from_secs(30),
        &c,
        || query(&prometheus, r#"infra_coordinator_deploy_steps_total{step="ready"}"#).filter(|n| *n >= 2.0),
    );
    println!("through Prometheus: {healthy_services} healthy data service(s) on host2, {ready} services made ready");

    // A new service: a target, up, within a scrape interval and the file_sd
    // refresh of being healthy.
    let progress = c.call(
        "Deploy",
        r#"{"selection":{"services":["late-page"]},"timeoutSeconds":60}"#,
    );
    assert_eq!(progress.last().unwrap()["ready"], 1, "{progress:#?}");
    let healthy = wait_for("late-page's healthy event", Duration::from_secs(10), &c, || {
        events
            .lock()
            .unwrap()
            .iter()
            .find(|(_, e)| e.kind() == EventKind::Healthy && e.service == "late-page")
            .map(|(t, _)| *t)
    });
    let limit = SCRAPE_INTERVAL + FILE_SD_REFRESH + Duration::from_secs(3);
    wait_for("late-page up in Prometheus", Duration::from_secs(30), &c, || {
        targets(&prometheus)?
            .iter()
            .any(|t| t.service == "late-page" && t.host == "host2" && t.health == "up")
            .then_some(())
    });
    let took = healthy.elapsed();
    println!(
        "late-page: healthy -> up in Prometheus's targets in {:.2}s (scrape interval {}s, file_sd refresh {}s)",
        took.as_secs_f64(),
        SCRAPE_INTERVAL.as_secs(),
        FILE_SD_REFRESH.as_secs()
    );
    assert!(took <= limit, "late-page took {took:?} (limit {limit:?})");
}

/// The stack's Prometheus configuration and every rule file, as the real
/// `promtool` (from `infra-local/prometheus:2`) checks them: the file_sd job,
/// and the platform alerts (a service unhealthy for long, a host lost, a
/// rollout reverted) with their expressions parsed.
#[test]
fn promtool_accepts_the_stacks_prometheus_config_and_the_platform_alert_rules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/06-observability/prometheus");
    let dir = dir.canonicalize().unwrap();
    let mount = format!("{}:/etc/prometheus:ro", dir.display());
    let promtool = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                "promtool",
                "-v",
                &mount,
            ])
            .arg("infra-local/prometheus:2")
            .args(args)
            .output()
            .expect("docker runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
        text
    };
    let rules = promtool(&[
        "check",
        "rules",
        "/etc/prometheus/rules/platform.yml",
        "/etc/prometheus/rules/alerts.yml",
    ]);
    println!("{rules}");
    assert!(rules.contains("SUCCESS: 7 rules found"), "{rules}");
    let config = promtool(&["check", "config", "/etc/prometheus/prometheus.yml"]);
    println!("{config}");
    assert!(config.contains("SUCCESS"), "{config}");
}
