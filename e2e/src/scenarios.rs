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

pub use crate::write;

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

    /// Waits until it has sent `more` requests beyond those counted now
    /// (a window of load before or after an operation, by requests, not
    /// by time).
    pub fn wait_sent(&self, more: u64) {
        let from = self.seen.lock().unwrap().0;
        wait_for("the client's requests", Duration::from_secs(60), || {
            self.seen.lock().unwrap().0 >= from + more
        });
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

/// The one container of `service` on `host`: (id, image, started at in
/// RFC 3339 with nanoseconds, sortable as text across the hosts, which
/// share one clock).
pub fn the_container(c: &Cluster, host: &str, service: &str) -> (String, String, String) {
    let o = c.docker(
        host,
        &["ps", "-q", "--filter", &format!("label=io.infra.service={service}")],
    );
    let id = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(!id.is_empty() && !id.contains('\n'), "one {service} on {host}: {id:?}");
    let o = c.docker(host, &["inspect", "-f", "{{.Config.Image}}|{{.State.StartedAt}}", &id]);
    let out = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let (image, started) = out.split_once('|').unwrap_or((&out, ""));
    (id, image.to_owned(), started.to_owned())
}

/// `DescribeService`'s member rows of `service` (through grpcurl).
pub fn described(c: &Cluster, service: &str) -> Vec<serde_json::Value> {
    c.call("DescribeService", &format!(r#"{{"name":"{service}"}}"#))[0]["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
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

pub use infra_test_support::wait_for;

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
        "global\n    log stdout format raw local0 info\ndefaults\n    mode tcp\n    log global\n    retries 0\n    \
         timeout connect 2s\n    timeout client 30m\n    timeout server 30m\n    timeout check 2s\n\
         frontend stats\n    mode http\n    bind :8404\n    monitor-uri /healthz\n    \
         monitor fail if {{ nbsrv(primary) lt 1 }}\n\
         listen primary\n    bind :5432\n    option httpchk GET /primary\n    http-check expect status 200\n    \
         default-server inter 500ms downinter 200ms fall 2 rise 1 on-marked-down shutdown-sessions\n{}\
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

pub use infra_test_support::load::{Load as Writer, Writes};

/// A client that inserts a sequence of numbers (`first`, `first + 1`, ...)
/// into `acks(v)` (created by the caller, a primary key) through HAProxy's
/// write port at `addr:port` the whole time, and records every write
/// PostgreSQL acknowledged.
pub fn pg_writer(addr: String, port: u16, first: u64) -> Writer {
    Writer::start(first, Duration::from_millis(20), move |n| {
        match psql(&addr, port, &format!("insert into acks(v) values ({n}) returning v")) {
            Ok(v) if v.lines().next() == Some(n.to_string().as_str()) => Ok(()),
            Ok(v) => Err(format!("unexpected answer {v:?}")),
            Err(e) => Err(e),
        }
    })
}

// ------------------------------------------------------------- Valkey ---

/// The client port of node `i` of [`valkey_replication_catalog`]
/// (`valkey-rep-i`, on host `i + 1`).
pub fn valkey_rep_port(i: usize) -> u16 {
    7100 + i as u16
}

/// The port of [`valkey_replication_catalog`]'s proxy on host1's private
/// address: the primary, whichever node it is.
pub const VALKEY_REP_PROXY_PORT: u16 = 16379;

/// The primary with replicas of `compose/04-data/valkey-replication` on
/// three hosts, as a test fixture: `valkey-rep-0..2`, one per host
/// (`node.hostname == hostN`), each on its own port ([`valkey_rep_port`],
/// published on its host's private address, announced with its name, which
/// every other member resolves to that address), started from a config
/// file in its volume whose first version makes `valkey-rep-0` the
/// primary; the `valkey` update-order labels; and `valkey-rep-proxy`
/// (HAProxy, host1, [`VALKEY_REP_PROXY_PORT`]) routing to the node that
/// answers `role:master`. The password is the secret
/// `valkey_replication_password` (`password`, written under
/// `dir/secrets/`). `image` is the nodes' image: change it to roll them.
pub fn valkey_replication_catalog(dir: &Path, ips: &[String], image: &str, password: &str) {
    write(dir, "secrets/valkey_replication_password", &format!("{password}\n"));
    let mut y = String::from("services:\n");
    for i in 0..3 {
        let port = valkey_rep_port(i);
        let first = if i == 0 {
            String::new()
        } else {
            format!("replicaof valkey-rep-0 {}", valkey_rep_port(0))
        };
        y += &format!(
            r#"  valkey-rep-{i}:
    image: {image}
    user: "999:999"
    read_only: true
    tmpfs: ["/tmp"]
    expose: ["{port}"]
    labels:
      infra.update-order: valkey
      infra.update-order.cluster: valkey-replication
      infra.update-order.port: "{port}"
      infra.update-order.password-secret: valkey_replication_password
    secrets: [valkey_replication_password]
    environment:
      VALKEY_FIRST_ROLE: "{first}"
    command:
      - sh
      - -c
      - >-
        umask 077;
        [ -f /data/valkey.conf ] || printf '%s\n' "$$VALKEY_FIRST_ROLE" > /data/valkey.conf;
        exec valkey-server /data/valkey.conf
        --port {port}
        --replica-announce-ip valkey-rep-{i}
        --requirepass "$$(cat /run/secrets/valkey_replication_password)"
        --masterauth "$$(cat /run/secrets/valkey_replication_password)"
        --appendonly yes
        --maxmemory 128mb
        --maxmemory-policy noeviction
    volumes: ["valkey-rep-{i}-data:/data"]
    healthcheck:
      test: ["CMD-SHELL", "valkey-cli -p {port} -a \"$$(cat /run/secrets/valkey_replication_password)\" --no-auth-warning ping | grep -q PONG"]
      interval: 1s
      timeout: 3s
      retries: 5
    deploy:
      placement:
        constraints: ["node.hostname == host{h}"]
      update_config:
        parallelism: 1
        order: stop-first
        failure_action: pause
"#,
            h = i + 1,
        );
    }
    let servers: String = (0..3)
        .map(|i| format!("    server valkey-rep-{i} {}:{} check\n", ips[i], valkey_rep_port(i)))
        .collect();
    let cfg = format!(
        "global\n    log stdout format raw local0 info\ndefaults\n    mode tcp\n    log global\n    \
         timeout connect 2s\n    timeout client 30m\n    timeout server 30m\n    timeout check 2s\n\
         frontend stats\n    mode http\n    bind :8404\n    monitor-uri /healthz\n    \
         monitor fail if {{ nbsrv(primary) lt 1 }}\n\
         listen primary\n    bind :6379\n    option tcp-check\n    tcp-check connect\n    \
         tcp-check send \"AUTH ${{VALKEY_PASSWORD}}\\r\\n\"\n    tcp-check expect string +OK\n    \
         tcp-check send \"INFO replication\\r\\nQUIT\\r\\n\"\n    tcp-check expect string role:master\n    \
         default-server inter 250ms fall 1 rise 1 on-marked-down shutdown-sessions\n{servers}"
    );
    // YAML double quotes, and `$$` for Compose's interpolation.
    let cfg_yaml = cfg
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .replace('$', "$$");
    y += &format!(
        r#"  valkey-rep-proxy:
    image: infra-local/haproxy:2
    ports: ["{VALKEY_REP_PROXY_PORT}:6379"]
    secrets: [valkey_replication_password]
    environment:
      CFG: "{cfg_yaml}"
    command: ["sh", "-c", "export VALKEY_PASSWORD=\"$$(cat /run/secrets/valkey_replication_password)\"; printf '%s' \"$$CFG\" > /tmp/haproxy.cfg && exec haproxy -W -db -f /tmp/haproxy.cfg"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8404/healthz"]
      interval: 1s
      timeout: 2s
      retries: 3
    depends_on:
      valkey-rep-0: {{ condition: service_healthy }}
      valkey-rep-1: {{ condition: service_healthy }}
      valkey-rep-2: {{ condition: service_healthy }}
    deploy:
      placement:
        constraints: ["node.hostname == host1"]
volumes:
"#
    );
    for i in 0..3 {
        y += &format!("  valkey-rep-{i}-data: {{}}\n");
    }
    y += "secrets:\n  valkey_replication_password:\n    file: ../../secrets/valkey_replication_password\n";
    write(dir, "04-data/valkey-replication/docker-compose.yml", &y);
}

/// The image a Valkey roll goes to: `infra-local/redis:7` retagged (a
/// changed image is what a roll is about; what it holds does not matter).
pub fn valkey_roll_image() -> &'static str {
    let tag = std::process::Command::new("docker")
        .args(["tag", "infra-local/redis:7", "infra-local/redis:7-roll"])
        .status()
        .expect("docker");
    assert!(
        tag.success(),
        "docker tag infra-local/redis:7 (run e2e/images/build.sh redis)"
    );
    "infra-local/redis:7-roll"
}

/// How long each Valkey failover took (`took_ms` of the coordinator's
/// `valkey: failover done` lines, JSON logs), in order.
pub fn valkey_failovers_ms(coordinator_log: &str) -> Vec<u64> {
    coordinator_log
        .lines()
        .filter(|l| l.contains("valkey: failover done"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["took_ms"].as_u64().or_else(|| v["fields"]["took_ms"].as_u64()))
        .collect()
}

pub use infra_products::valkey::Reply;

/// A blocking connection to one Valkey node, for the tests' threads: the
/// platform's own RESP client ([`infra_products::valkey::Conn`]) on a
/// runtime of its own.
pub struct ValkeyConn {
    rt: tokio::runtime::Runtime,
    conn: infra_products::valkey::Conn,
}

impl ValkeyConn {
    /// Connects (3 s) and authenticates. Not from inside a runtime.
    pub fn open(addr: &str, password: &str) -> Result<Self, String> {
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("{addr}: not host:port"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let secret = infra_products::Secret(password.to_owned());
        let conn = rt
            .block_on(infra_products::valkey::Conn::open(host, port, Some(&secret)))
            .map_err(|e| e.0)?;
        Ok(Self { rt, conn })
    }

    /// One command and its reply.
    pub fn call(&mut self, args: &[&str]) -> Result<Reply, String> {
        self.rt.block_on(self.conn.call(args)).map_err(|e| e.0)
    }

    /// A command whose reply is text (`INFO`, `CLUSTER NODES`).
    pub fn text(&mut self, args: &[&str]) -> Result<String, String> {
        self.rt.block_on(self.conn.text(args)).map_err(|e| e.0)
    }

    /// `INFO <section>` (or `CLUSTER INFO`) as its `key:value` fields.
    pub fn fields(&mut self, args: &[&str]) -> Result<BTreeMap<String, String>, String> {
        self.text(args).map(|t| infra_products::valkey::fields(&t))
    }
}

/// CRC16 (XMODEM) of a key's hash tag, mod 16384: the cluster slot.
pub fn valkey_slot(key: &str) -> u16 {
    let k = key.as_bytes();
    let tag = match (
        key.find('{'),
        key.find('{').and_then(|s| key[s + 1..].find('}').map(|e| s + 1 + e)),
    ) {
        (Some(s), Some(e)) if e > s + 1 => &k[s + 1..e],
        _ => k,
    };
    let mut crc: u16 = 0;
    for &b in tag {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// Three hash tags whose slots fall in the three slot ranges `valkey-cli
/// --cluster create` gives three primaries (0-5460, 5461-10922,
/// 10923-16383): one key stream per primary.
pub fn valkey_tags() -> [String; 3] {
    let mut out: [Option<String>; 3] = Default::default();
    for i in 0.. {
        let t = format!("t{i}");
        let r = match valkey_slot(&t) {
            0..=5460 => 0,
            5461..=10922 => 1,
            _ => 2,
        };
        if out[r].is_none() {
            out[r] = Some(t);
        }
        if out.iter().all(Option::is_some) {
            break;
        }
    }
    out.map(Option::unwrap)
}

/// The key a [`ValkeyWriter`] writes for sequence number `n`.
pub fn valkey_key(tags: &[String; 3], n: u64) -> String {
    format!("{{{}}}:ack:{n}", tags[(n % 3) as usize])
}

/// A cluster-aware client: talks to the node that serves a key's slot,
/// learnt from `MOVED` redirections (starting at any node it knows).
pub struct ValkeyClient {
    nodes: Vec<String>,
    /// `name:port` → `ip:port`, for nodes that redirect by name (as a
    /// client with the cluster's DNS names would resolve them).
    names: BTreeMap<String, String>,
    password: String,
    by_tag: BTreeMap<u16, String>,
    conns: BTreeMap<String, ValkeyConn>,
}

impl ValkeyClient {
    /// A client that knows the nodes at `nodes` (`ip:port`).
    pub fn new(nodes: Vec<String>, password: &str) -> Self {
        Self {
            nodes,
            names: BTreeMap::new(),
            password: password.to_owned(),
            by_tag: BTreeMap::new(),
            conns: BTreeMap::new(),
        }
    }

    /// Resolves redirections to `name:port` through `names` (to `ip:port`).
    #[must_use]
    pub fn naming(mut self, names: BTreeMap<String, String>) -> Self {
        self.names = names;
        self
    }

    /// `args` for `key`, following up to 5 redirections; then `then` on the
    /// same connection (`WAIT` after `SET`). A connection that fails is
    /// dropped (the next call opens a new one).
    pub fn call_then(
        &mut self,
        key: &str,
        args: &[&str],
        then: Option<&[&str]>,
    ) -> Result<(Reply, Option<Reply>), String> {
        let slot = valkey_slot(key);
        let mut tried_others = 0;
        for _ in 0..6 {
            let addr = self
                .by_tag
                .get(&slot)
                .cloned()
                .unwrap_or_else(|| self.nodes[tried_others % self.nodes.len()].clone());
            if !self.conns.contains_key(&addr) {
                match ValkeyConn::open(&addr, &self.password) {
                    Ok(c) => {
                        self.conns.insert(addr.clone(), c);
                    }
                    Err(e) => {
                        self.by_tag.remove(&slot);
                        tried_others += 1;
                        if tried_others >= self.nodes.len() {
                            return Err(e);
                        }
                        continue;
                    }
                }
            }
            let c = self.conns.get_mut(&addr).expect("just opened");
            let r = match c.call(args) {
                Ok(r) => r,
                Err(e) => {
                    self.conns.remove(&addr);
                    self.by_tag.remove(&slot);
                    return Err(format!("{addr}: {e}"));
                }
            };
            match &r {
                Reply::Error(e) if e.starts_with("MOVED ") => {
                    let to = e.split_whitespace().nth(2).unwrap_or("").to_owned();
                    let to = self.names.get(&to).cloned().unwrap_or(to);
                    self.by_tag.insert(slot, to);
                    continue;
                }
                Reply::Error(_) => return Ok((r, None)),
                _ => {}
            }
            self.by_tag.insert(slot, addr.clone());
            let after = match then {
                Some(t) => match c.call(t) {
                    Ok(x) => Some(x),
                    Err(e) => {
                        self.conns.remove(&addr);
                        return Err(format!("{addr}: {e}"));
                    }
                },
                None => None,
            };
            return Ok((r, after));
        }
        Err(format!("{key}: too many redirections"))
    }

    /// `GET key`.
    pub fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        match self.call_then(key, &["GET", key], None)?.0 {
            Reply::Bulk(v) => Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned())),
            other => Err(format!("GET {key}: {other:?}")),
        }
    }
}

/// A client that writes `SET <key n> n` then `WAIT 1 <wait_ms>` the whole
/// time, one [`Writer`] per primary's slot range (key stream `n % 3`), so a
/// primary that stalls does not stall the others, and records as
/// acknowledged only the writes `WAIT` says reached a replica.
pub struct ValkeyWriter {
    loads: [Writer; 3],
    started: Instant,
}

impl ValkeyWriter {
    /// Starts at sequence number `first` (then `first + 1`, ... over the
    /// three streams).
    pub fn start(nodes: Vec<String>, password: &str, first: u64, wait_ms: u64) -> Self {
        Self::start_naming(nodes, BTreeMap::new(), password, first, wait_ms)
    }

    /// [`ValkeyWriter::start`] with clients that resolve redirections by
    /// name through `names` ([`ValkeyClient::naming`]).
    pub fn start_naming(
        nodes: Vec<String>,
        names: BTreeMap<String, String>,
        password: &str,
        first: u64,
        wait_ms: u64,
    ) -> Self {
        let started = Instant::now();
        let loads = [0u64, 1, 2].map(|t| {
            let mut client = ValkeyClient::new(nodes.clone(), password).naming(names.clone());
            let tags = valkey_tags();
            let wait = wait_ms.to_string();
            // The first number of this stream at or after `first`.
            let n0 = first + (t + 3 - first % 3) % 3;
            Writer::stepping(n0, 3, Duration::from_millis(10), move |n| {
                let key = valkey_key(&tags, n);
                let val = n.to_string();
                match client.call_then(&key, &["SET", &key, &val], Some(&["WAIT", "1", &wait]))? {
                    (Reply::Simple(ok), Some(Reply::Int(k))) if ok == "OK" && k >= 1 => Ok(()),
                    (Reply::Simple(_), Some(Reply::Int(0))) => Err(format!("WAIT 1: no replica within {wait}ms")),
                    other => Err(format!("{other:?}")),
                }
            })
        });
        Self { loads, started }
    }

    /// Stops, and says what it saw: every stream's writes as one
    /// ([`Writes::longest_gap`]: the longest time without an acknowledged
    /// write on any primary) and the longest gap of each stream (the
    /// primaries' slot ranges in order).
    pub fn finish(mut self) -> (Writes, [Duration; 3]) {
        self.take()
    }

    /// What it saw since it started or since the last `take`, as
    /// [`ValkeyWriter::finish`] says it; it goes on writing.
    pub fn take(&mut self) -> (Writes, [Duration; 3]) {
        let parts = self.loads.each_ref().map(Writer::take);
        let gaps = parts.each_ref().map(|w| w.longest_gap);
        let since = std::mem::replace(&mut self.started, Instant::now());
        (Writes::merge(parts.into(), since), gaps)
    }
}
