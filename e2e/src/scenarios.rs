//! Multi-host scenarios shared by the tests (`e2e/tests/multihost.rs`) and
//! the benchmark (`bench-hosts`): a catalog of a web service with one
//! replica per host behind the gateway's Nginx on host1, an api, a stateful
//! db pinned to host2; a client that sends requests through the gateway the
//! whole time and counts what failed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::hosts::{Cluster, ClusterOptions};

pub fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A web service (nginx serving its VERSION at /version, unhealthy when
/// BROKEN=1), an api (nginx on 8081), and the gateway's Nginx on host1
/// that balances over every host's private address, retrying another
/// upstream when one refuses.
pub fn catalog(ips: &[String], web_replicas: u32) -> tempfile::TempDir {
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

pub fn start(name: &str, web_replicas: u32, lost_secs: u64) -> (Cluster, tempfile::TempDir) {
    start_with(name, web_replicas, lost_secs, 1, Vec::new())
}

/// [`start`] with `coordinators` coordinators (one leads by lease) and
/// extra environment for them (`INFRA_LEASE_SECS`, ...).
pub fn start_with(
    name: &str,
    web_replicas: u32,
    lost_secs: u64,
    coordinators: usize,
    env: Vec<(String, String)>,
) -> (Cluster, tempfile::TempDir) {
    // The hosts' addresses are known before the catalog is written: the
    // cluster hands them out in order (see `Cluster::host_ip`).
    let mut opts = ClusterOptions::new(3)
        .tiers(&["gateway", "data"])
        .images(&["infra-local/nginx:1", "infra-local/debian:bookworm"]);
    opts.project = name.into();
    opts.overrides.clear();
    opts.env.push(("INFRA_HOST_LOST_SECS".into(), lost_secs.to_string()));
    opts.env.push(("INFRA_HEARTBEAT_TTL_SECS".into(), "5".into()));
    opts.coordinators = coordinators;
    opts.env.extend(env);
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
pub fn get(addr: &str, path: &str) -> Result<String, String> {
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
pub type Tally = (u64, Vec<String>, BTreeMap<String, u64>);

/// One container: (id, name, VERSION, BROKEN, started at).
pub type Row = (String, String, String, String, String);

/// A client that sends requests through the gateway the whole time and
/// counts what failed.
pub struct Client {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Tally>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    pub fn start(addr: String, path: &'static str) -> Self {
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
    pub fn take(&self) -> Tally {
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
pub fn containers(c: &Cluster, host: &str, service: &str) -> Vec<Row> {
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
pub fn everywhere(c: &Cluster, service: &str) -> BTreeMap<String, Vec<Row>> {
    c.hosts()
        .into_iter()
        .map(|h| {
            let v = containers(c, &h, service);
            (h, v)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

pub fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    start.elapsed()
}
