//! What our users run across several VPS, on simulated hosts (each a
//! container with its own Docker engine, a NATS cluster of three, the real
//! coordinator and operators, the real grpcurl): a web service with
//! replicas on three hosts behind the gateway's Nginx, rolled while a
//! client sends requests the whole time; a rollout that fails and reverts;
//! a host cut off and healed; a NATS server stopped during a deploy; a host
//! drained; a host killed.
//!
//! Each fault prints one line, `FAULT | what was done | what survived`;
//! together they are the table in the README.
//!
//! Needs `cargo build --workspace --bins` and the images `host`, `nats`,
//! `nginx` and `debian` from `e2e/images/build.sh`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use infra_e2e::hosts::{Cluster, ClusterOptions};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A web service (nginx serving its VERSION at /version, unhealthy when
/// BROKEN=1), an api (nginx on 8081), and the gateway's Nginx on host1
/// that balances over every host's private address, retrying another
/// upstream when one refuses.
fn catalog(ips: &[String], web_replicas: u32) -> tempfile::TempDir {
    let upstream = |port: u16| {
        ips.iter()
            .map(|ip| format!("server {ip}:{port} max_fails=1 fail_timeout=2s;"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let gw_conf = format!(
        "upstream web {{ {} }} upstream api {{ {} }} \
         server {{ listen 8088; \
         proxy_connect_timeout 500ms; proxy_read_timeout 5s; \
         proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent; proxy_next_upstream_tries 6; \
         location /api/ {{ proxy_pass http://api/; }} location / {{ proxy_pass http://web; }} }}",
        upstream(80),
        upstream(8081)
    );
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "01-gateway/web/docker-compose.yml",
        &format!(
            r#"services:
  web:
    image: infra-local/nginx:1
    expose: ["80"]
    environment:
      VERSION: "1"
    command: ["sh", "-c", "echo \"$$VERSION\" > /usr/share/nginx/html/version && exec nginx -g 'daemon off;'"]
    deploy:
      replicas: {web_replicas}
      placement:
        max_replicas_per_node: 1
      update_config:
        parallelism: 1
        order: stop-first
        monitor: 2s
        failure_action: rollback
    healthcheck:
      test: ["CMD-SHELL", "[ \"$$BROKEN\" != 1 ] && wget -q -O /dev/null http://127.0.0.1/version"]
      interval: 1s
      timeout: 2s
      retries: 2
  api:
    image: infra-local/nginx:1
    expose: ["8081"]
    command: ["sh", "-c", "sed -i 's/listen       80;/listen 8081;/; /\\[::\\]:80/d' /etc/nginx/conf.d/default.conf && echo api > /usr/share/nginx/html/version && exec nginx -g 'daemon off;'"]
    deploy:
      replicas: 2
      placement:
        max_replicas_per_node: 1
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8081/version"]
      interval: 1s
      retries: 3
  gw:
    image: infra-local/nginx:1
    ports: ["8088:8088"]
    environment:
      GW_CONF: "{gw_conf}"
    command: ["sh", "-c", "printf '%s\n' \"$$GW_CONF\" > /etc/nginx/conf.d/default.conf && exec nginx -g 'daemon off;'"]
    depends_on:
      web: {{ condition: service_healthy }}
      api: {{ condition: service_healthy }}
    deploy:
      placement:
        constraints: ["node.hostname == host1"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8088/version"]
      interval: 1s
      retries: 5
"#
        ),
    );
    write(
        dir.path(),
        "04-data/db/docker-compose.yml",
        r#"services:
  db:
    image: infra-local/debian:bookworm
    command: ["sleep", "infinity"]
    init: true
    volumes: ["db-data:/data"]
    deploy:
      placement:
        constraints: ["node.hostname == host2"]
  cache:
    image: infra-local/debian:bookworm
    command: ["sleep", "infinity"]
    init: true
volumes:
  db-data: {}
"#,
    );
    dir
}

fn start(name: &str, web_replicas: u32, lost_secs: u64) -> (Cluster, tempfile::TempDir) {
    // The hosts' addresses are known before the catalog is written: the
    // cluster hands them out in order (see `Cluster::host_ip`).
    let mut opts = ClusterOptions::new(3)
        .tiers(&["gateway", "data"])
        .images(&["infra-local/nginx:1", "infra-local/debian:bookworm"]);
    opts.project = name.into();
    opts.overrides.clear();
    opts.env.push(("INFRA_HOST_LOST_SECS".into(), lost_secs.to_string()));
    opts.env.push(("INFRA_HEARTBEAT_TTL_SECS".into(), "5".into()));
    let placeholder = tempfile::tempdir().unwrap();
    opts.compose_dir = placeholder.path().to_owned();
    let c = Cluster::start(opts);
    let ips: Vec<String> = c.hosts().iter().map(|h| c.host_ip(h)).collect();
    let dir = catalog(&ips, web_replicas);
    // The coordinator reads the catalog afresh on every call.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let e = entry.unwrap();
        let _ = std::process::Command::new("cp")
            .arg("-r")
            .arg(e.path())
            .arg(placeholder.path())
            .status();
    }
    (c, placeholder)
}

/// GET `path` from `addr`; the body on 200.
fn get(addr: &str, path: &str) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: web\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| format!("read: {e}"))?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") {
        Ok(body.trim().to_owned())
    } else {
        Err(head.lines().next().unwrap_or("no status").to_owned())
    }
}

/// Requests sent, failures (one line each), and how often each body came.
type Tally = (u64, Vec<String>, BTreeMap<String, u64>);

/// One container: (id, name, VERSION, BROKEN, started at).
type Row = (String, String, String, String, String);

/// A client that sends requests through the gateway the whole time and
/// counts what failed.
struct Client {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Tally>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(addr: String, path: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Tally>> = Arc::default();
        let (s, out) = (stop.clone(), seen.clone());
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                let r = get(&addr, path);
                let mut g = out.lock().unwrap();
                g.0 += 1;
                match r {
                    Ok(body) => *g.2.entry(body).or_default() += 1,
                    Err(e) => g.1.push(e),
                }
                drop(g);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            seen,
            handle: Some(handle),
        }
    }

    /// (requests, failures, bodies seen) so far, and reset.
    fn take(&self) -> Tally {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `service` containers in `host`'s engine: (id, name, VERSION, BROKEN, started at).
fn containers(c: &Cluster, host: &str, service: &str) -> Vec<Row> {
    let ids = c.docker(
        host,
        &["ps", "-q", "--filter", &format!("label=io.infra.service={service}")],
    );
    let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
    let mut out = Vec::new();
    for id in ids.split_whitespace() {
        let o = c.docker(
            host,
            &[
                "inspect",
                "-f",
                "{{.Name}}|{{range .Config.Env}}{{.}},{{end}}|{{.State.StartedAt}}",
                id,
            ],
        );
        let line = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        let mut parts = line.split('|');
        let name = parts.next().unwrap_or("").trim_start_matches('/').to_owned();
        let env = parts.next().unwrap_or("").to_owned();
        let var = |k: &str| {
            env.split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or("")
                .to_owned()
        };
        out.push((
            id.to_owned(),
            name,
            var("VERSION"),
            var("BROKEN"),
            parts.next().unwrap_or("").to_owned(),
        ));
    }
    out.sort();
    out
}

/// Host -> containers of `service` on every host.
fn everywhere(c: &Cluster, service: &str) -> BTreeMap<String, Vec<Row>> {
    c.hosts()
        .into_iter()
        .map(|h| {
            let v = containers(c, &h, service);
            (h, v)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    start.elapsed()
}

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
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    let progress = c.call(
        "Rollout",
        r#"{"service":"web","environment":{"VERSION":"2"},"timeoutSeconds":60}"#,
    );
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_secs(1));
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
    std::thread::sleep(Duration::from_secs(8));
    c.heal("host3");
    wait_for("host3 heartbeats again", Duration::from_secs(30), || {
        c.list_hosts().is_some_and(|h| h.contains_key("host3"))
    });
    std::thread::sleep(Duration::from_secs(3));
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
    fault(
        "stop one of three NATS servers as a deploy starts",
        "the deploy finished; the service runs",
    );

    // 3. Drain a host: api's replica there runs elsewhere before it stops.
    let api_before = everywhere(&c, "api");
    assert_eq!(api_before.len(), 2, "{api_before:#?}");
    let drained = api_before.keys().find(|h| *h != "host1").unwrap().clone();
    let api_client = Client::start(gw.clone(), "/api/version");
    std::thread::sleep(Duration::from_millis(500));
    let progress = c.call("Drain", &format!(r#"{{"host":"{drained}","timeoutSeconds":60}}"#));
    std::thread::sleep(Duration::from_secs(2));
    let (n, failed, _) = api_client.take();
    let done = progress.last().unwrap();
    assert!(done["message"].as_str().unwrap().contains("api -> "), "{progress:#?}");
    let api_after = everywhere(&c, "api");
    assert_eq!(api_after.len(), 2, "{api_after:#?}");
    assert!(!api_after.contains_key(&drained), "{api_after:#?}");
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
    std::thread::sleep(Duration::from_secs(3));
    let web = everywhere(&c, "web");
    assert_eq!(
        web.keys().cloned().collect::<Vec<_>>(),
        vec!["host1", "host3"],
        "{web:#?}"
    );
    fault(
        "host2 comes back",
        "web not started twice (host1, host3); db running on host2 again",
    );
}
