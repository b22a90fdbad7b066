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

/// The PostgreSQL HA stack of `compose/04-data/postgresql-cluster` on
/// three hosts, as a test fixture: one etcd and one Patroni member per
/// host (`node.hostname == hostN`), HAProxy on host1 publishing the write
/// port on 15432 and the read port on 15433 (5432 is pg-0's, published on
/// host1's private address). The members reach each other by name across
/// hosts (the coordinator's cross-host reach); HAProxy checks every member
/// at its host's private address, as the gateway does. `roll` is an
/// environment value of the Patroni members: change it to roll them.
pub fn patroni_catalog(dir: &Path, ips: &[String], roll: &str) {
    patroni_catalog_with(dir, ips, roll, "");
}

/// As [`patroni_catalog`], with `spilo` (YAML, flow style) as the members'
/// `SPILO_CONFIGURATION`, merged over their Patroni configuration: e.g.
/// `{bootstrap: {dcs: {synchronous_mode: true}}}`, so a failover keeps
/// every acknowledged write.
pub fn patroni_catalog_with(dir: &Path, ips: &[String], roll: &str, spilo: &str) {
    let cluster = "etcd-1=http://etcd-1:2380,etcd-2=http://etcd-2:2380,etcd-3=http://etcd-3:2380";
    let mut y = String::from("services:\n");
    for i in 1..=3 {
        y += &format!(
            r#"  etcd-{i}:
    image: infra-local/etcd:3
    expose: ["2379", "2380"]
    environment:
      ETCD_NAME: etcd-{i}
      ETCD_INITIAL_CLUSTER: {cluster}
      ETCD_INITIAL_CLUSTER_STATE: new
      ETCD_INITIAL_CLUSTER_TOKEN: pg-cluster-etcd
      ETCD_LISTEN_CLIENT_URLS: http://0.0.0.0:2379
      ETCD_LISTEN_PEER_URLS: http://0.0.0.0:2380
      ETCD_ADVERTISE_CLIENT_URLS: http://etcd-{i}:2379
      ETCD_INITIAL_ADVERTISE_PEER_URLS: http://etcd-{i}:2380
      ETCD_DATA_DIR: /etcd-data
    volumes: ["etcd-{i}-data:/etcd-data"]
    healthcheck:
      test: ["CMD", "etcdctl", "--endpoints=http://127.0.0.1:2379", "endpoint", "health"]
      interval: 1s
      timeout: 3s
      retries: 30
    deploy:
      placement:
        constraints: ["node.hostname == host{i}"]
"#
        );
    }
    for i in 0..3 {
        y += &format!(
            r#"  pg-{i}:
    image: infra-local/patroni:3
    hostname: pg-{i}
    expose: ["5432", "8008"]
    labels:
      infra.update-order: patroni
      infra.update-order.cluster: pg-cluster
      infra.update-order.port: "8008"
    environment:
      SCOPE: pg-cluster
      ETCD3_HOSTS: '"etcd-1:2379","etcd-2:2379","etcd-3:2379"'
      PGPASSWORD_SUPERUSER: e2e-superuser
      PGPASSWORD_STANDBY: e2e-standby
      PGPASSWORD_ADMIN: e2e-admin
      ROLL: "{roll}"
      SPILO_CONFIGURATION: '{spilo}'
    volumes: ["pg-{i}-data:/home/postgres/pgdata"]
    stop_grace_period: 30s
    healthcheck:
      test: ["CMD-SHELL", "curl -fsS -o /dev/null http://127.0.0.1:8008/health"]
      interval: 1s
      timeout: 3s
      retries: 3
      start_period: 120s
    depends_on:
      etcd-1: {{ condition: service_healthy }}
      etcd-2: {{ condition: service_healthy }}
      etcd-3: {{ condition: service_healthy }}
    deploy:
      placement:
        constraints: ["node.hostname == host{}"]
      update_config:
        parallelism: 1
        order: stop-first
        failure_action: pause
"#,
            i + 1
        );
    }
    let servers = |_: &str| {
        (0..3)
            .map(|i| format!("    server pg-{i} {}:5432 check port 8008\n", ips[i]))
            .collect::<String>()
    };
    let cfg = format!(
        "global\n    log stdout format raw local0 info\ndefaults\n    mode tcp\n    log global\n    retries 3\n    \
         timeout connect 2s\n    timeout client 30m\n    timeout server 30m\n    timeout check 2s\n\
         frontend stats\n    mode http\n    bind :8404\n    monitor-uri /healthz\n    \
         monitor fail if {{ nbsrv(primary) lt 1 }}\n\
         listen primary\n    bind :5432\n    option httpchk GET /primary\n    http-check expect status 200\n    \
         default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions\n{}\
         listen replicas\n    bind :5433\n    balance roundrobin\n    option httpchk GET /replica\n    \
         http-check expect status 200\n    default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions\n{}",
        servers("primary"),
        servers("replicas")
    );
    let cfg_yaml = cfg.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    y += &format!(
        r#"  pg-router:
    image: infra-local/haproxy:2
    ports: ["15432:5432", "15433:5433"]
    environment:
      CFG: "{cfg_yaml}"
    command: ["sh", "-c", "printf '%s' \"$$CFG\" > /tmp/haproxy.cfg && exec haproxy -W -db -f /tmp/haproxy.cfg"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8404/healthz"]
      interval: 1s
      timeout: 2s
      retries: 3
    depends_on:
      pg-0: {{ condition: service_healthy }}
      pg-1: {{ condition: service_healthy }}
      pg-2: {{ condition: service_healthy }}
    deploy:
      placement:
        constraints: ["node.hostname == host1"]
volumes:
"#
    );
    for i in 1..=3 {
        y += &format!("  etcd-{i}-data: {{}}\n");
    }
    for i in 0..3 {
        y += &format!("  pg-{i}-data: {{}}\n");
    }
    write(dir, "04-data/postgresql-cluster/docker-compose.yml", &y);
}

/// One statement through `psql` (the host's) at `addr:port` as the
/// fixture's superuser; its output on success.
pub fn psql(addr: &str, port: u16, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .arg(format!(
            "host={addr} port={port} user=postgres dbname=postgres connect_timeout=2"
        ))
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-Atc", sql])
        .env("PGPASSWORD", "e2e-superuser")
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// What a [`Writer`] saw: values PostgreSQL acknowledged, failed attempts
/// (one line each), and the longest gap between two acknowledged writes.
#[derive(Clone, Debug, Default)]
pub struct Writes {
    pub acked: Vec<u64>,
    pub failed: Vec<String>,
    pub longest_gap: Duration,
}

/// A client that inserts a sequence of numbers through HAProxy's write
/// port the whole time and records every write PostgreSQL acknowledged.
pub struct Writer {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Writes>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts writing `first`, `first + 1`, ... into `acks(v)` (created by
    /// the caller, a primary key) at `addr:port`.
    pub fn start(addr: String, port: u16, first: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Writes>> = Arc::default();
        let (s, out) = (stop.clone(), seen.clone());
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(900);
            let mut last_ok = Instant::now();
            let mut n = first.saturating_sub(1);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                n += 1;
                let r = psql(&addr, port, &format!("insert into acks(v) values ({n}) returning v"));
                let mut g = out.lock().unwrap();
                match r {
                    Ok(v) if v.lines().next() == Some(n.to_string().as_str()) => {
                        let gap = last_ok.elapsed();
                        g.longest_gap = g.longest_gap.max(gap);
                        last_ok = Instant::now();
                        g.acked.push(n);
                    }
                    Ok(v) => g.failed.push(format!("write {n}: unexpected answer {v:?}")),
                    Err(e) => g.failed.push(format!("write {n}: {e}")),
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

    /// What it saw so far, and reset (the gap restarts from now).
    pub fn take(&self) -> Writes {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
