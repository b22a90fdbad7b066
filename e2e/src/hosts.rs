//! Simulated hosts: a multi-host test bed on one machine.
//!
//! [`Cluster::start`] makes, on the outer Docker engine and on a network of
//! its own:
//!
//! - a NATS cluster of three servers (`infra-local/nats`, JetStream, one
//!   cluster named `infra`), so the platform runs on replicated buckets
//!   (`nats.replicas = 3`) the way it does across real VPS;
//! - N host containers (`infra-local/host`, hostnames `host1`..`hostN`),
//!   each running its **own** Docker engine (Docker-in-Docker, `vfs`
//!   storage), so a container one host's operator starts is invisible to the
//!   others, as on separate machines;
//! - inside every host, the real tier operators (the binaries of
//!   `target/<profile>`, bind-mounted read-only at `/opt/infra/bin`), each
//!   talking to its host's inner engine and to all three NATS servers over
//!   TLS (clients and routes; a CA made per cluster, `Cluster::nats_ca`);
//! - one or more coordinators as processes on the outer machine (it reaches
//!   the containers' bridge addresses), driven with the real `grpcurl`.
//!
//! Faults are one call each: kill or restart a host, stop a NATS server,
//! cut a host off the network and heal it, stop one operator. Everything is
//! labelled `io.infra.e2e.cluster=<id>` and removed on drop (unless
//! `E2E_KEEP` is set, then `just hosts-down <id>` removes it).
//!
//! The containers run with the flags that work on the project's machines
//! (`--privileged` does not: SYS_RESOURCE is not granted), see
//! [`HOST_RUN_FLAGS`]. `/var/lib/docker` is a tmpfs by default: a host that
//! is killed and started again comes back with an **empty** engine (no
//! images, no containers), like a machine whose disk was replaced;
//! [`Cluster::start_host`] loads the cluster's images again. With
//! [`ClusterOptions::engine_disks`] it is a volume instead, and a killed host
//! comes back as a VPS does after a power cut ([`Cluster::reboot_host`]).
//!
//! Needs: `cargo build --workspace --bins` and
//! `bash e2e/images/build.sh host nats` plus the images a test loads.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use infra_bus::testing::free_port;

use crate::pki::Pki;
use crate::{TIERS, bin_dir, call_at, grpcurl_at, repo_root};

/// Label on every outer container and network a cluster creates; its value
/// is the cluster id. `hosts-down` and [`remove_cluster`] find them by it.
pub const CLUSTER_LABEL: &str = "io.infra.e2e.cluster";
/// Label saying who started a cluster (`test` or `cli`), so `hosts-down`
/// without an id removes only what `hosts-up` left running.
pub const ORIGIN_LABEL: &str = "io.infra.e2e.origin";
/// The simulated host's image (`e2e/images/recipes/host`).
pub const HOST_IMAGE: &str = "infra-local/host:1";
/// The install image of the operators (`e2e/images/recipes/operators`),
/// as `just test` builds it.
pub const OPERATORS_IMAGE: &str = "infra-local/operators:dev";
/// The NATS image (`e2e/images/recipes/nats`).
pub const NATS_IMAGE: &str = "infra-local/nats:2.15";
/// The NATS cluster's name.
pub const NATS_CLUSTER: &str = "infra";
/// How many NATS servers a cluster runs (a JetStream quorum survives one loss).
pub const NATS_SERVERS: usize = 3;
/// Heartbeat interval the operators are given, seconds.
pub const HEARTBEAT_SECS: u64 = 1;
/// Heartbeat TTL: an operator silent this long drops out of `ListHosts`.
pub const HEARTBEAT_TTL_SECS: u64 = 5;

/// `docker run` flags of a host container: the capabilities dockerd needs,
/// named one by one (`--privileged` and `--cap-add ALL` fail here because
/// SYS_RESOURCE is not granted), no seccomp or AppArmor filter, a tmpfs for
/// `/run`, and the cgroup tree so the inner engine can make cgroups. The
/// engine's store is added per cluster: a tmpfs (`exec`: runc runs binaries
/// from it) or a volume ([`ClusterOptions::engine_disks`]).
pub const HOST_RUN_FLAGS: &[&str] = &[
    "--cap-add",
    "SYS_ADMIN",
    "--cap-add",
    "NET_ADMIN",
    "--cap-add",
    "SYS_PTRACE",
    "--cap-add",
    "MKNOD",
    "--cap-add",
    "SYS_CHROOT",
    "--cap-add",
    "NET_RAW",
    "--cap-add",
    "SETFCAP",
    "--cap-add",
    "IPC_LOCK",
    "--cap-add",
    "SYS_NICE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--tmpfs",
    "/run",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
];

/// Where the operator binaries are mounted in a host.
const BIN_MOUNT: &str = "/opt/infra/bin";
/// Where a host's logs are (a bind mount of `<dir>/<host>/` on the outer
/// machine, so they can be read while the host is down).
const LOG_MOUNT: &str = "/var/lib/infra/log";
/// The operators' state directory in a host (its inner engine sees it).
const STATE_DIR: &str = "/var/lib/infra/state";
/// Where a host (and the operators image run on it) has the NATS CA.
const TLS_DIR: &str = "/var/lib/infra/tls";
/// Operator pid files (tmpfs: gone with a restart, as the processes are).
const RUN_DIR: &str = "/run/infra";

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Number of hosts (`host1`..`hostN`).
    pub hosts: usize,
    /// Tiers whose operator runs on every host not named in `host_tiers`.
    pub tiers: Vec<String>,
    /// Per-host tiers, overriding `tiers` for the hosts named.
    pub host_tiers: BTreeMap<String, Vec<String>>,
    /// Images (on the outer engine) loaded into every inner engine. Keep
    /// it short: with `vfs` each load copies the whole image.
    pub images: Vec<String>,
    /// Coordinators to run (0 is allowed: a test can drive the bus itself).
    pub coordinators: usize,
    /// The coordinators' catalog root.
    pub compose_dir: PathBuf,
    /// The coordinators' override files.
    pub overrides: Vec<PathBuf>,
    /// Compose project (prefix of the names in the inner engines).
    pub project: String,
    /// Extra environment for the coordinators (interpolation variables).
    pub env: Vec<(String, String)>,
    /// Extra environment for every operator.
    pub operator_env: Vec<(String, String)>,
    /// Where the binaries are: `$E2E_BIN_DIR`, else `target/debug`.
    pub bin_dir: PathBuf,
    /// Value of [`ORIGIN_LABEL`] on everything created.
    pub origin: String,
    /// Fence the coordinators' network in (the default): they may reach
    /// the NATS servers and nothing else of the cluster's network, as on
    /// VPS where only the operators dial out. See [`Cluster::fence`].
    pub fence_coordinators: bool,
    /// Keep each host's engine store on disk (an anonymous volume of the
    /// host container) instead of a tmpfs: a killed host then comes back
    /// with its images, containers and volumes, as a VPS after a power cut
    /// does ([`Cluster::reboot_host`]), and the store does not take memory.
    pub engine_disks: bool,
}

impl ClusterOptions {
    /// `hosts` hosts with every tier, one coordinator on the repository's
    /// catalog with the local image override, no images loaded.
    pub fn new(hosts: usize) -> Self {
        let root = repo_root();
        Self {
            hosts,
            tiers: TIERS.iter().map(|s| (*s).to_owned()).collect(),
            host_tiers: BTreeMap::new(),
            images: Vec::new(),
            coordinators: 1,
            compose_dir: root.join("compose"),
            overrides: vec![root.join("e2e/images/local.override.yml")],
            project: "infra".into(),
            env: Vec::new(),
            operator_env: Vec::new(),
            bin_dir: std::env::var_os("E2E_BIN_DIR").map_or_else(|| bin_dir("debug"), PathBuf::from),
            origin: "test".into(),
            fence_coordinators: true,
            engine_disks: false,
        }
    }

    /// Engine stores on disk: see [`ClusterOptions::engine_disks`].
    #[must_use]
    pub fn engine_disks(mut self) -> Self {
        self.engine_disks = true;
        self
    }

    /// Only these tiers on every host.
    #[must_use]
    pub fn tiers(mut self, tiers: &[&str]) -> Self {
        self.tiers = tiers.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// These images in every inner engine.
    #[must_use]
    pub fn images(mut self, images: &[&str]) -> Self {
        self.images = images.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// The coordinators read this catalog, with no override.
    #[must_use]
    pub fn catalog(mut self, dir: impl Into<PathBuf>) -> Self {
        self.compose_dir = dir.into();
        self.overrides.clear();
        self
    }

    /// Hosts with no operators (they join by token: [`Cluster::join_zones`])
    /// under a user's checkout of the shipped catalog
    /// ([`crate::catalog_checkout`]) with the local image override.
    #[must_use]
    pub fn bare_over(mut self, catalog: &Path) -> Self {
        self.compose_dir = catalog.to_owned();
        for i in 1..=self.hosts {
            self.host_tiers.insert(format!("host{i}"), Vec::new());
        }
        self
    }

    /// An override file of the user's, beside the catalog and empty for
    /// now, read after the local one (where a test pins a new image or
    /// environment, as a user would); its path.
    pub fn user_override(&mut self) -> PathBuf {
        let pin = self
            .compose_dir
            .parent()
            .expect("the catalog is in a folder")
            .join("user.override.yml");
        std::fs::write(&pin, "services: {}\n").expect("write the override");
        self.overrides.push(pin.clone());
        pin
    }
}

#[derive(Debug)]
struct Node {
    /// `host1`, `nats2`: the short name (and hostname).
    name: String,
    /// The outer container's name: `<cluster id>-<name>`.
    container: String,
    ip: String,
    tiers: Vec<String>,
}

#[derive(Debug)]
struct Coord {
    id: String,
    grpc: String,
    child: Option<Child>,
}

/// A running multi-host test bed. See the module documentation.
pub struct Cluster {
    /// Unique id: the network's name, the containers' prefix, the label value.
    pub id: String,
    /// The options it was started with.
    pub opts: ClusterOptions,
    /// Coordinator logs, host log mounts, the saved images.
    pub dir: tempfile::TempDir,
    nats: Vec<Node>,
    hosts: Vec<Node>,
    coords: Vec<Coord>,
    images_tar: Option<PathBuf>,
    /// The NATS operator, system and platform account keys: every
    /// credential of the bed is signed with them.
    authority: infra_bus::auth::Authority,
    /// The harness's own credential (everything, as the coordinator's).
    admin_creds: String,
}

impl Cluster {
    /// Starts the network, the NATS cluster, the hosts (loading the images
    /// and starting the operators) and the coordinators; returns when
    /// `ListHosts` shows every operator (with no coordinator, once the
    /// operators are started: a test driving the bus itself waits itself).
    /// Each step is bounded and panics with the logs that explain it.
    pub fn start(opts: ClusterOptions) -> Self {
        let id = format!("e2ehosts{}{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        Self::start_named(&id, opts)
    }

    /// As [`Cluster::start`], with a chosen id (letters and digits; the CLI
    /// uses it so `hosts-down <id>` can name it).
    pub fn start_named(id: &str, opts: ClusterOptions) -> Self {
        let t0 = Instant::now();
        preflight(&opts);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir()
            .expect("temp dir");
        let mut me = Self {
            id: id.to_owned(),
            opts,
            dir,
            nats: Vec::new(),
            hosts: Vec::new(),
            coords: Vec::new(),
            images_tar: None,
            authority: infra_bus::auth::Authority::generate(),
            admin_creds: String::new(),
        };
        let prefix = me.create_network();
        for i in 1..=NATS_SERVERS {
            me.nats.push(Node {
                name: format!("nats{i}"),
                container: format!("{id}-nats{i}"),
                ip: format!("{prefix}.{}", 10 + i),
                tiers: Vec::new(),
            });
        }
        for i in 1..=me.opts.hosts {
            let name = format!("host{i}");
            let tiers = me.opts.host_tiers.get(&name).unwrap_or(&me.opts.tiers).clone();
            me.hosts.push(Node {
                container: format!("{id}-{name}"),
                name,
                ip: format!("{prefix}.{}", 100 + i),
                tiers,
            });
        }
        me.make_pki();
        for i in 0..NATS_SERVERS {
            me.run_nats(i);
        }
        // Hosts boot while NATS forms its cluster.
        for i in 0..me.hosts.len() {
            me.run_host(i);
        }
        me.wait_nats_cluster(Duration::from_secs(60));
        me.create_buckets();
        for i in 0..me.hosts.len() {
            me.wait_engine(i, Duration::from_secs(60));
        }
        if !me.opts.images.is_empty() {
            me.save_images();
            let names: Vec<String> = me.hosts.iter().map(|h| h.name.clone()).collect();
            me.load_images(&names);
        }
        for h in 0..me.hosts.len() {
            for tier in me.hosts[h].tiers.clone() {
                me.spawn_operator(h, &tier);
            }
        }
        if me.opts.fence_coordinators && me.opts.coordinators > 0 {
            me.fence(&prefix);
        }
        for i in 0..me.opts.coordinators {
            let grpc = format!("127.0.0.1:{}", free_port());
            me.coords.push(Coord {
                id: format!("coordinator{}", i + 1),
                grpc,
                child: None,
            });
            me.start_coordinator(i);
        }
        let want = me.expected();
        if !me.coords.is_empty() {
            me.wait_hosts("every operator heartbeats", Duration::from_secs(90), |h| {
                want.iter()
                    .all(|(host, tiers)| h.get(host).is_some_and(|t| t.is_superset(tiers)))
            });
        }
        eprintln!("cluster {} up in {:.1?}", me.id, t0.elapsed());
        me
    }

    // ------------------------------------------------------------ names ---

    /// Host names, in order.
    pub fn hosts(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.name.clone()).collect()
    }

    fn host(&self, name: &str) -> &Node {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name:?} in cluster {} ({:?})", self.id, self.hosts()))
    }

    fn host_index(&self, name: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name:?} in cluster {}", self.id))
    }

    /// The host's address on the cluster network (stable across restarts,
    /// cuts and heals).
    pub fn host_ip(&self, name: &str) -> String {
        self.host(name).ip.clone()
    }

    /// The outer container of a host (`<id>-hostN`), for `docker` calls a
    /// helper here does not cover.
    pub fn container(&self, name: &str) -> String {
        self.host(name).container.clone()
    }

    /// The tiers whose operator runs on `host`.
    pub fn tiers_of(&self, host: &str) -> Vec<String> {
        self.host(host).tiers.clone()
    }

    /// `nats://ip:4222` of each server.
    pub fn nats_urls(&self) -> Vec<String> {
        self.nats.iter().map(|n| format!("nats://{}:4222", n.ip)).collect()
    }

    /// The comma-separated list operators and coordinators are given.
    pub fn nats_url(&self) -> String {
        self.nats_urls().join(",")
    }

    /// The address of coordinator 0 (`127.0.0.1:port`).
    pub fn grpc(&self) -> &str {
        &self.coords.first().expect("the cluster runs no coordinator").grpc
    }

    /// Every coordinator's address.
    pub fn grpc_addrs(&self) -> Vec<String> {
        self.coords.iter().map(|c| c.grpc.clone()).collect()
    }

    /// The gRPC inspection address of an operator (reachable from here).
    pub fn operator_grpc(&self, host: &str, tier: &str) -> String {
        format!("{}:{}", self.host_ip(host), tier_port(tier))
    }

    // ------------------------------------------------------------- grpc ---

    /// The real `grpcurl` against coordinator 0.
    pub fn grpcurl(&self, args: &[&str], data: Option<&str>) -> Output {
        grpcurl_at(self.grpc(), args, data)
    }

    /// A `CoordinatorService` call on coordinator 0 that must succeed,
    /// parsed (one object, or the objects of a stream).
    pub fn call(&self, method: &str, data: &str) -> Vec<serde_json::Value> {
        call_at(self.grpc(), method, data)
    }

    /// As [`Cluster::call`], on coordinator `i`.
    pub fn call_on(&self, i: usize, method: &str, data: &str) -> Vec<serde_json::Value> {
        call_at(&self.coords[i].grpc, method, data)
    }

    /// `ListHosts` of the first coordinator that answers, as host → tiers
    /// heard from within the TTL. `None` if no coordinator answers.
    pub fn list_hosts(&self) -> Option<BTreeMap<String, BTreeSet<String>>> {
        for c in self.coords.iter().filter(|c| c.child.is_some()) {
            let out = grpcurl_at(&c.grpc, &["infra.coordinator.v1.CoordinatorService/ListHosts"], None);
            if !out.status.success() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let mut map = BTreeMap::new();
            for h in v["hosts"].as_array().into_iter().flatten() {
                let tiers: BTreeSet<String> = h["operators"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o["tier"].as_str().map(str::to_owned))
                    .collect();
                map.insert(h["host"].as_str().unwrap_or_default().to_owned(), tiers);
            }
            return Some(map);
        }
        None
    }

    /// `docker events` of `host`'s engine from `since` (unix seconds) to
    /// now, with `filters` (`--filter` values) and `format`.
    pub fn engine_events(&self, host: &str, since: u64, filters: &[String], format: &str) -> String {
        let until = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_secs()
            + 1;
        let (since, until) = (since.to_string(), until.to_string());
        let mut args = vec!["events", "--since", &since, "--until", &until];
        for f in filters {
            args.extend(["--filter", f.as_str()]);
        }
        args.extend(["--format", format]);
        String::from_utf8_lossy(&self.docker(host, &args).stdout).into_owned()
    }

    /// Joins every bare host (one started with no tiers) with the command
    /// `AddHost` printed for it, run as is on the host, with the label
    /// `zone` = a, b, c, ... in host order; returns once each host's nine
    /// operators are listed.
    pub fn join_zones(&self) {
        let hosts = self.hosts();
        for (i, h) in hosts.iter().enumerate() {
            let zone = char::from(b'a' + u8::try_from(i).expect("few hosts"));
            let r = self.call("AddHost", &format!(r#"{{"host":"{h}","labels":{{"zone":"{zone}"}}}}"#));
            let command = r[0]["command"].as_str().expect("a command").to_owned();
            let out = Command::new("docker")
                .args(["exec", &self.container(h), "sh", "-c", &command])
                .output()
                .expect("docker");
            assert!(out.status.success(), "{h}: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.wait_hosts(
            "every host joined, nine operators each",
            Duration::from_secs(120),
            |l| hosts.iter().all(|h| l.get(h).is_some_and(|t| t.len() == 9)),
        );
    }

    /// Waits (bounded by `limit`) until `ok` holds for [`Cluster::list_hosts`];
    /// panics naming `what`, with the last answer and every log.
    pub fn wait_hosts(
        &self,
        what: &str,
        limit: Duration,
        ok: impl Fn(&BTreeMap<String, BTreeSet<String>>) -> bool,
    ) -> BTreeMap<String, BTreeSet<String>> {
        let deadline = Instant::now() + limit;
        let mut last = None;
        loop {
            if let Some(h) = self.list_hosts() {
                if ok(&h) {
                    return h;
                }
                last = Some(h);
            }
            if Instant::now() > deadline {
                panic!(
                    "cluster {}: not within {limit:?}: {what}\nlast ListHosts: {last:?}\n{}",
                    self.id,
                    self.all_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits (bounded by `limit`) until every operator the harness started
    /// has heartbeated again since this call (its `lastHeartbeat` in
    /// `ListHosts` changed): after a partition or a NATS server's restart,
    /// an entry still listed may be an old one, not a live connection.
    pub fn wait_heartbeats_again(&self, what: &str, limit: Duration) {
        let snapshot = || -> BTreeMap<(String, String), String> {
            let mut out = BTreeMap::new();
            let v = self.call("ListHosts", "{}");
            for h in v[0]["hosts"].as_array().into_iter().flatten() {
                for o in h["operators"].as_array().into_iter().flatten() {
                    let key = (
                        h["host"].as_str().unwrap_or_default().to_owned(),
                        o["tier"].as_str().unwrap_or_default().to_owned(),
                    );
                    out.insert(key, o["lastHeartbeat"].as_str().unwrap_or_default().to_owned());
                }
            }
            out
        };
        let before = snapshot();
        let want: Vec<(String, String)> = self
            .expected()
            .into_iter()
            .flat_map(|(h, tiers)| tiers.into_iter().map(move |t| (h.clone(), t)))
            .collect();
        let deadline = Instant::now() + limit;
        loop {
            let now = snapshot();
            let stale: Vec<&(String, String)> = want
                .iter()
                .filter(|k| now.get(*k).is_none_or(|t| before.get(*k) == Some(t)))
                .collect();
            if stale.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster {}: not within {limit:?}: {what}; no new heartbeat from {stale:?}\n{}",
                self.id,
                self.all_logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn expected(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.hosts
            .iter()
            .filter(|h| !h.tiers.is_empty())
            .map(|h| (h.name.clone(), h.tiers.iter().cloned().collect()))
            .collect()
    }

    // ------------------------------------------------------------ docker ---

    /// Runs `docker ARGS` against `host`'s inner engine.
    pub fn docker(&self, host: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("docker");
        cmd.args(["exec", &self.host(host).container, "docker"]).args(args);
        cmd.output().expect("docker on PATH")
    }

    /// Loads the cluster's images into these hosts' engines, in parallel
    /// (one `docker load` per host from one `docker save`).
    pub fn load_images(&self, hosts: &[String]) {
        let Some(tar) = &self.images_tar else { return };
        let t0 = Instant::now();
        std::thread::scope(|s| {
            let jobs: Vec<_> = hosts
                .iter()
                .map(|h| {
                    let container = self.host(h).container.clone();
                    s.spawn(move || {
                        let file = std::fs::File::open(tar).expect("saved images");
                        let out = Command::new("docker")
                            .args(["exec", "-i", &container, "timeout", "300", "docker", "load", "-q"])
                            .stdin(file)
                            .output()
                            .expect("docker");
                        (container, out)
                    })
                })
                .collect();
            for j in jobs {
                let (container, out) = j.join().expect("load thread");
                assert!(
                    out.status.success(),
                    "docker load into {container}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        });
        eprintln!(
            "cluster {}: loaded {:?} into {hosts:?} in {:.1?}",
            self.id,
            self.opts.images,
            t0.elapsed()
        );
    }

    // -------------------------------------------------------------- logs ---

    /// The log of `tier`'s operator on `host` (every run, appended), or of
    /// the inner engine with `tier = "dockerd"`. Readable while the host is
    /// down.
    pub fn log(&self, host: &str, tier: &str) -> String {
        let file = if tier == "dockerd" {
            "dockerd.log".to_owned()
        } else {
            format!("{tier}-operator.log")
        };
        match std::fs::read_to_string(self.dir.path().join(host).join(file)) {
            Ok(text) => text,
            // A host that joined runs its operators in the install
            // container: its log, every tier's lines.
            Err(_) if tier != "dockerd" => {
                let o = self.docker(host, &["logs", "infra-operators"]);
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            }
            Err(_) => String::new(),
        }
    }

    /// The logs of the `tier` operators of every host, one after the other
    /// (where the member-aware update orders run and log what they did).
    pub fn tier_logs(&self, tier: &str) -> String {
        self.hosts
            .iter()
            .map(|h| self.log(&h.name, tier))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Resident memory of coordinator `i` (a process on this machine), in
    /// KiB; `None` when it does not run.
    pub fn coordinator_rss_kib(&self, i: usize) -> Option<u64> {
        let pid = self.coords.get(i)?.child.as_ref()?.id();
        rss_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
    }

    /// Resident memory of the `tier` operator the harness runs on `host`,
    /// in KiB; `None` when it does not run.
    pub fn operator_rss_kib(&self, host: &str, tier: &str) -> Option<u64> {
        let out = Command::new("docker")
            .args(["exec", &self.host(host).container, "sh", "-c"])
            .arg(format!("cat /proc/$(cat {RUN_DIR}/{tier}.pid)/status"))
            .output()
            .ok()?;
        rss_kib(&String::from_utf8_lossy(&out.stdout))
    }

    /// The log of coordinator `i`.
    pub fn coordinator_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.coords[i].id))).unwrap_or_default()
    }

    /// `docker logs` of NATS server `i` (0-based).
    pub fn nats_log(&self, i: usize) -> String {
        let out = Command::new("docker")
            .args(["logs", "--tail", "200", &self.nats[i].container])
            .output()
            .expect("docker");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The tail of every log (coordinators, operators, inner engines, NATS),
    /// for panic messages.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.coords.len() {
            out += &format!(
                "==> {} <==\n{}\n",
                self.coords[i].id,
                tail(&self.coordinator_log(i), 40)
            );
        }
        for h in &self.hosts {
            for t in h.tiers.iter().map(String::as_str).chain(["dockerd"]) {
                out += &format!("==> {} {t} <==\n{}\n", h.name, tail(&self.log(&h.name, t), 15));
            }
        }
        for i in 0..self.nats.len() {
            out += &format!("==> {} <==\n{}\n", self.nats[i].name, tail(&self.nats_log(i), 15));
        }
        out
    }

    // ------------------------------------------------------------ faults ---

    /// Kills a host container (`docker kill`): its engine, its containers
    /// and its operators die at once, as with a power cut.
    pub fn kill_host(&self, name: &str) {
        docker_ok(&["kill", &self.host(name).container]);
    }

    /// Starts a killed host again: waits for its engine, loads the
    /// cluster's images again (its `/var/lib/docker` is a tmpfs, so it comes
    /// back empty: no image, no container), starts its operators and waits
    /// for their heartbeats.
    pub fn start_host(&self, name: &str) {
        let i = self.host_index(name);
        docker_ok(&["start", &self.hosts[i].container]);
        self.wait_engine(i, Duration::from_secs(60));
        self.load_images(&[name.to_owned()]);
        for tier in &self.hosts[i].tiers {
            self.spawn_operator(i, tier);
        }
        self.wait_host_tiers(name, Duration::from_secs(60));
    }

    /// Starts a killed host whose engine store is on disk
    /// ([`ClusterOptions::engine_disks`]) again, as a VPS comes back after a
    /// power cut: its engine starts the containers whose restart policy says
    /// so (a joined host's `infra-operators` among them), the harness starts
    /// the operators it runs itself, and this returns once the host's
    /// operators heartbeat (nine on a joined host).
    pub fn reboot_host(&self, name: &str) {
        assert!(
            self.opts.engine_disks,
            "reboot_host needs engine stores on disk (ClusterOptions::engine_disks)"
        );
        let i = self.host_index(name);
        docker_ok(&["start", &self.hosts[i].container]);
        self.wait_engine(i, Duration::from_secs(120));
        for tier in &self.hosts[i].tiers {
            self.spawn_operator(i, tier);
        }
        let joined = self.hosts[i].tiers.is_empty();
        self.wait_hosts(
            &format!("the operators of {name} heartbeat again"),
            Duration::from_secs(180),
            |h| {
                h.get(name).is_some_and(|t| {
                    if joined {
                        t.len() == TIERS.len()
                    } else {
                        self.hosts[i].tiers.iter().all(|x| t.contains(x))
                    }
                })
            },
        );
    }

    /// Stops NATS server `i` (0-based) with `docker stop`.
    pub fn stop_nats(&self, i: usize) {
        docker_ok(&["stop", "-t", "5", &self.nats[i].container]);
    }

    /// Starts NATS server `i` again (same address, same JetStream store)
    /// and waits until it is back in the JetStream cluster.
    pub fn start_nats(&self, i: usize) {
        docker_ok(&["start", &self.nats[i].container]);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if jsz_ready(&self.nats[i].ip) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not rejoin the JetStream cluster within 60s:\n{}",
                self.nats[i].name,
                self.nats_log(i)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Disconnects a host from the cluster network: it keeps running but
    /// reaches nothing (its operators lose NATS).
    pub fn cut(&self, host: &str) {
        docker_ok(&["network", "disconnect", &self.id, &self.host(host).container]);
    }

    /// Reconnects a cut host with its old address.
    pub fn heal(&self, host: &str) {
        let h = self.host(host);
        docker_ok(&["network", "connect", "--ip", &h.ip, &self.id, &h.container]);
    }

    /// Stops one operator (SIGTERM, SIGKILL after 15 s), waiting until it
    /// is gone.
    pub fn stop_operator(&self, host: &str, tier: &str) {
        let script = format!(
            "f={RUN_DIR}/{tier}.pid; [ -f $f ] || exit 0; p=$(cat $f); kill -TERM $p 2>/dev/null; i=0; \
             while kill -0 $p 2>/dev/null; do i=$((i+1)); [ $i -eq 150 ] && kill -KILL $p; \
             [ $i -gt 200 ] && exit 1; sleep 0.1; done; rm -f $f"
        );
        let out = Command::new("docker")
            .args(["exec", &self.host(host).container, "sh", "-c", &script])
            .output()
            .expect("docker");
        assert!(
            out.status.success(),
            "cannot stop {tier}-operator on {host}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(host, tier), 30)
        );
    }

    /// Starts one operator on a host (also a tier the host was not started
    /// with) and waits for its heartbeat.
    pub fn start_operator(&self, host: &str, tier: &str) {
        let i = self.host_index(host);
        self.spawn_operator(i, tier);
        if self.coords.iter().any(|c| c.child.is_some()) {
            self.wait_hosts(
                &format!("{tier}-operator on {host} heartbeats"),
                Duration::from_secs(60),
                |h| h.get(host).is_some_and(|t| t.contains(tier)),
            );
        }
    }

    /// Stops coordinator `i` (SIGTERM, bounded).
    pub fn stop_coordinator(&mut self, i: usize) {
        if let Some(mut child) = self.coords[i].child.take() {
            stop_child(&mut child);
        }
    }

    /// Kills coordinator `i` with SIGKILL (a crash: no lease released).
    pub fn kill_coordinator(&mut self, i: usize) {
        if let Some(mut child) = self.coords[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts coordinator `i` (again, on the same address) and waits until
    /// it answers.
    pub fn start_coordinator(&mut self, i: usize) {
        let bin = self.opts.bin_dir.join("coordinator");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", self.coords[i].id)))
            .expect("log file");
        let mut cmd = match self.fence_gid() {
            // Under the fenced group: its sockets meet the fence's rules.
            Some(gid) if self.opts.fence_coordinators => {
                let mut c = Command::new("setpriv");
                c.args(["--regid", &gid.to_string(), "--clear-groups", "--"]).arg(&bin);
                c
            }
            _ => Command::new(&bin),
        };
        cmd.args(["--grpc-listen", &self.coords[i].grpc, "--compose-dir"])
            .arg(&self.opts.compose_dir)
            .args(["--project", &self.opts.project]);
        for o in &self.opts.overrides {
            cmd.arg("--override").arg(o);
        }
        let child = cmd
            // Clusters run side by side on this machine: no default port.
            .env("INFRA_METRICS_LISTEN", "127.0.0.1:0")
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .env("INFRA_ID", &self.coords[i].id)
            .env("INFRA_NATS__URL", self.nats_url())
            .env("INFRA_NATS__REPLICAS", NATS_SERVERS.to_string())
            .env("INFRA_NATS__CA_FILE", self.nats_ca())
            .env("INFRA_NATS__CREDS_FILE", self.creds_dir().join("coordinator.creds"))
            // Hosts join by token (AddHost), with the install image.
            .env("INFRA_JOIN__AUTHORITY_FILE", self.creds_dir().join("authority.seeds"))
            .env("INFRA_JOIN__OPERATOR_IMAGE", OPERATORS_IMAGE)
            .env("INFRA_LOG__FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.coords[i].child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = grpcurl_at(&self.coords[i].grpc, &["grpc.health.v1.Health/Check"], None);
            if out.status.success() {
                return;
            }
            if let Some(Ok(Some(st))) = self.coords[i].child.as_mut().map(Child::try_wait) {
                panic!("{} exited ({st}):\n{}", self.coords[i].id, self.coordinator_log(i));
            }
            assert!(
                Instant::now() < deadline,
                "{} does not answer on {} within 60s:\n{}",
                self.coords[i].id,
                self.coords[i].grpc,
                self.coordinator_log(i)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The group the coordinators run under when fenced: one per cluster
    /// (from its subnet), so clusters side by side keep their own rules.
    fn fence_gid(&self) -> Option<u32> {
        let k: u32 = self.nats.first()?.ip.split('.').nth(2)?.parse().ok()?;
        Some(61_000 + k)
    }

    fn fence_chain(gid: u32) -> String {
        format!("INFRA-E2E-{gid}")
    }

    /// Fences the coordinators in, as a firewall between a coordinator and
    /// the hosts would on VPS: their processes run under a group of their
    /// own (root still, so they read the bed's files), and the connections
    /// that group's sockets open may go to the NATS servers only, not to a
    /// host (no Patroni REST, no Valkey port, no operator gRPC). What the
    /// coordinator asks of a host goes through NATS, to its operators. A
    /// host may still connect to it (Prometheus scraping its metrics).
    fn fence(&self, prefix: &str) {
        let Some(gid) = self.fence_gid() else { return };
        let chain = Self::fence_chain(gid);
        let ipt = |args: &[&str]| {
            Command::new("iptables")
                .args(args)
                .output()
                .expect("iptables (the bed fences the coordinators' network with it)")
        };
        // A chain left by an earlier run on this subnet is made again.
        let gid_s = gid.to_string();
        let jump = ["-m", "owner", "--gid-owner", gid_s.as_str(), "-j", chain.as_str()];
        while ipt(&[&["-D", "OUTPUT"][..], &jump[..]].concat()).status.success() {}
        let _ = ipt(&["-F", &chain]);
        let _ = ipt(&["-X", &chain]);
        let ok = |o: Output, what: &str| {
            assert!(
                o.status.success(),
                "iptables {what}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        ok(ipt(&["-N", &chain]), "-N");
        // Answers on connections the hosts opened (Prometheus scraping the
        // coordinator's metrics) go out; only what it opens itself is fenced.
        ok(
            ipt(&[
                "-A",
                &chain,
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "RETURN",
            ]),
            "-A conntrack",
        );
        for n in &self.nats {
            ok(ipt(&["-A", &chain, "-d", &n.ip, "-j", "RETURN"]), "-A RETURN");
        }
        ok(
            ipt(&["-A", &chain, "-d", &format!("{prefix}.0/24"), "-j", "REJECT"]),
            "-A REJECT",
        );
        ok(ipt(&[&["-I", "OUTPUT", "1"][..], &jump[..]].concat()), "-I OUTPUT");
    }

    fn unfence(&self) {
        let Some(gid) = self.fence_gid() else { return };
        let chain = Self::fence_chain(gid);
        let gid_s = gid.to_string();
        let ipt = |args: &[&str]| Command::new("iptables").args(args).output();
        let jump = ["-m", "owner", "--gid-owner", gid_s.as_str(), "-j", chain.as_str()];
        while ipt(&[&["-D", "OUTPUT"][..], &jump[..]].concat()).is_ok_and(|o| o.status.success()) {}
        let _ = ipt(&["-F", &chain]);
        let _ = ipt(&["-X", &chain]);
    }

    /// Whether a process of the coordinators' fenced group reaches
    /// `ip:port` (a TCP connect, 2 s at most).
    pub fn coordinator_reaches(&self, ip: &str, port: u16) -> bool {
        let mut cmd = match self.fence_gid() {
            Some(gid) if self.opts.fence_coordinators => {
                let mut c = Command::new("setpriv");
                c.args([
                    "--regid",
                    &gid.to_string(),
                    "--clear-groups",
                    "--",
                    "timeout",
                    "2",
                    "bash",
                    "-c",
                ]);
                c
            }
            _ => {
                let mut c = Command::new("timeout");
                c.args(["2", "bash", "-c"]);
                c
            }
        };
        cmd.arg(format!("exec 3<>/dev/tcp/{ip}/{port}"))
            .status()
            .is_ok_and(|s| s.success())
    }

    // ---------------------------------------------------------- internals ---

    /// Creates the network with a /24 of its own (static addresses need a
    /// configured subnet): tries `10.213.K.0/24` from a per-cluster start
    /// until the engine accepts one that overlaps no other network.
    fn create_network(&self) -> String {
        let start = (std::process::id() as usize * 7 + SEQ.load(Ordering::SeqCst) * 13) % 250;
        for k in 0..250 {
            let prefix = format!("10.213.{}", (start + k) % 250 + 1);
            let out = Command::new("docker")
                .args(["network", "create", "--driver", "bridge"])
                .args([
                    "--subnet",
                    &format!("{prefix}.0/24"),
                    "--gateway",
                    &format!("{prefix}.1"),
                ])
                .args(self.labels())
                .arg(&self.id)
                .output()
                .expect("docker");
            if out.status.success() {
                return prefix;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("overlap"), "docker network create {}: {err}", self.id);
        }
        panic!("no free 10.213.K.0/24 subnet for cluster {}", self.id);
    }

    fn labels(&self) -> Vec<String> {
        vec![
            "--label".into(),
            format!("{CLUSTER_LABEL}={}", self.id),
            "--label".into(),
            format!("{ORIGIN_LABEL}={}", self.opts.origin),
        ]
    }

    /// The NATS servers' certificates, credentials and configuration, in
    /// `<dir>/tls` (mounted into each server at `/tls`): TLS for clients
    /// and routes; decentralized JWT authentication (operator mode, the
    /// full resolver), so each host's operators hold a credential that
    /// reaches only that host's keys (`infra_bus::auth`); JetStream
    /// encryption at rest, so no server's store holds a secret in plain
    /// text.
    fn make_pki(&mut self) {
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
        for n in &self.nats {
            names.push(n.name.clone());
            names.push(n.ip.clone());
        }
        let pki = Pki::new(&self.tls_dir(), &names);
        let tls =
            r#"{ cert_file: "/tls/server.pem", key_file: "/tls/server.key", ca_file: "/tls/ca.pem", timeout: 5 }"#;
        let key: String = (0..4).map(|_| format!("{:016x}", rand_u64())).collect();
        let conf = format!(
            "# Clients and routes over TLS, JWT authentication, JetStream encrypted at rest (e2e/src/hosts.rs).
             tls {tls}
cluster {{
  tls {tls}
}}
jetstream {{ cipher: chachapoly, key: \"{key}\" }}
{}",
            self.authority.server_config("/data/resolver")
        );
        std::fs::write(pki.dir.join("nats.conf"), conf).expect("nats.conf");
        self.admin_creds = self.authority.user("e2e-harness", None).text;
        std::fs::create_dir_all(self.creds_dir()).expect("creds dir");
        write_private(&self.creds_dir().join("authority.seeds"), &self.authority.seeds());
        write_private(
            &self.creds_dir().join("coordinator.creds"),
            &self.authority.user("coordinator", None).text,
        );
        for h in &self.hosts {
            let token = infra_bus::Token::new("host", &h.name).expect("a host name is a token");
            let creds = self
                .authority
                .user(&h.name, Some(&infra_bus::auth::host_permissions(&token)));
            write_private(&self.host_creds_file(&h.name), &creds.text);
        }
    }

    /// Where the credential of `host`'s operators is, on this machine (a
    /// host has it at `/var/lib/infra/tls/host.creds`).
    pub fn host_creds_file(&self, host: &str) -> PathBuf {
        self.creds_dir().join(format!("{host}.creds"))
    }

    /// The coordinators' credential (everything but the servers' own
    /// system account), on this machine.
    pub fn coordinator_creds_file(&self) -> PathBuf {
        self.creds_dir().join("coordinator.creds")
    }

    /// Credentials, apart from what the NATS servers mount.
    fn creds_dir(&self) -> PathBuf {
        self.dir.path().join("creds")
    }

    /// The text of `host`'s credential.
    pub fn host_creds(&self, host: &str) -> String {
        std::fs::read_to_string(self.host_creds_file(host)).expect("host credential")
    }

    /// The harness's credential: everything, as the coordinator's.
    pub fn admin_creds(&self) -> &str {
        &self.admin_creds
    }

    /// The keys the bed's credentials are signed with (to make another
    /// credential, or revoke one).
    pub fn authority(&self) -> &infra_bus::auth::Authority {
        &self.authority
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// The CA that signed the NATS servers' certificate: every client of
    /// the bed's NATS needs it (the servers take TLS only).
    pub fn nats_ca(&self) -> PathBuf {
        self.tls_dir().join("ca.pem")
    }

    /// Whether any NATS server's store directory holds `needle` (its
    /// files' bytes, as `docker cp` reads them: a tar of `/data`).
    pub fn nats_store_holds(&self, needle: &[u8]) -> bool {
        self.nats_stores()
            .iter()
            .any(|s| s.windows(needle.len()).any(|w| w == needle))
    }

    /// Every NATS server's store directory, as the bytes of a tar of
    /// `/data` (`docker cp`): what is on its disk.
    pub fn nats_stores(&self) -> Vec<Vec<u8>> {
        self.nats
            .iter()
            .map(|n| {
                let out = Command::new("docker")
                    .args(["cp", &format!("{}:/data", n.container), "-"])
                    .output()
                    .expect("docker");
                assert!(
                    out.status.success(),
                    "docker cp {}:/data: {}",
                    n.container,
                    String::from_utf8_lossy(&out.stderr)
                );
                out.stdout
            })
            .collect()
    }

    /// The names of the clients connected to any NATS server now
    /// (`operator-gateway@host1`, ...), from each server's `/connz`.
    pub fn nats_connection_names(&self) -> Vec<String> {
        self.nats
            .iter()
            .filter_map(|n| http_get(&n.ip, 8222, "/connz?limit=1024"))
            .filter_map(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .flat_map(|v| {
                v["connections"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// NATS server `i`'s `/varz` (its monitoring port, plain HTTP).
    pub fn nats_varz(&self, i: usize) -> serde_json::Value {
        let body = http_get(&self.nats[i].ip, 8222, "/varz").unwrap_or_default();
        serde_json::from_str(&body).unwrap_or_default()
    }

    /// A bus configuration for the bed's NATS cluster (TLS with its CA).
    pub fn bus_config(&self, name: &str) -> infra_bus::BusConfig {
        infra_bus::BusConfig {
            url: self.nats_url(),
            name: name.to_owned(),
            heartbeat_ttl: Duration::from_secs(HEARTBEAT_TTL_SECS),
            replicas: NATS_SERVERS,
            tls: infra_bus::BusTls {
                ca_file: Some(self.nats_ca()),
                ..Default::default()
            },
            creds: Some(self.admin_creds.clone()),
            ..Default::default()
        }
    }

    fn run_nats(&self, i: usize) {
        let n = &self.nats[i];
        let routes: Vec<String> = self
            .nats
            .iter()
            .filter(|o| o.name != n.name)
            .map(|o| format!("nats://{}:6222", o.ip))
            .collect();
        let mut args: Vec<String> = ["run", "-d", "--name", &n.container, "--hostname", &n.name]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.extend(["--network".into(), self.id.clone(), "--ip".into(), n.ip.clone()]);
        args.extend(self.labels());
        args.extend(["-v".into(), format!("{}:/tls:ro", self.tls_dir().display())]);
        args.push(NATS_IMAGE.into());
        args.extend(
            [
                "--config",
                "/tls/nats.conf",
                "--server_name",
                &n.name,
                "-p",
                "4222",
                "-m",
                "8222",
                "-js",
                "-sd",
                "/data",
                "--cluster_name",
                NATS_CLUSTER,
                "--cluster",
                "nats://0.0.0.0:6222",
                "--routes",
                &routes.join(","),
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        docker_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    fn wait_nats_cluster(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.nats.iter().all(|n| jsz_ready(&n.ip)) {
            if Instant::now() > deadline {
                let logs: String = (0..self.nats.len())
                    .map(|i| format!("==> {} <==\n{}\n", self.nats[i].name, tail(&self.nats_log(i), 30)))
                    .collect();
                panic!("the NATS cluster has no JetStream leader with 3 peers within {limit:?}:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Creates the stream and buckets (replicas 3) before any operator or
    /// coordinator connects, so the hosts bucket gets the operators' TTL:
    /// the first process to connect decides it, and the coordinator's is a
    /// fixed 20 s.
    fn create_buckets(&self) {
        let cfg = self.bus_config(&format!("e2e-hosts@{}", self.id));
        // A thread of its own: a runtime cannot be made inside another.
        let res = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut last = String::new();
                for _ in 0..20 {
                    match infra_bus::Bus::connect(&cfg).await {
                        Ok(_) => return Ok(()),
                        Err(e) => last = format!("{e:#}"),
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(last)
            })
        })
        .join()
        .expect("bucket thread");
        if let Err(e) = res {
            let logs: String = (0..self.nats.len())
                .map(|i| format!("==> {} <==\n{}\n", self.nats[i].name, tail(&self.nats_log(i), 30)))
                .collect();
            panic!("cannot create the replicated buckets: {e}\n{logs}");
        }
    }

    fn run_host(&self, i: usize) {
        let h = &self.hosts[i];
        let logs = self.dir.path().join(&h.name);
        std::fs::create_dir_all(&logs).expect("log dir");
        let mut args: Vec<String> = ["run", "-d", "--name", &h.container, "--hostname", &h.name]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.extend(["--network".into(), self.id.clone(), "--ip".into(), h.ip.clone()]);
        args.extend(self.labels());
        args.extend(HOST_RUN_FLAGS.iter().map(|s| (*s).to_owned()));
        args.extend(if self.opts.engine_disks {
            ["-v".into(), "/var/lib/docker".into()]
        } else {
            ["--tmpfs".into(), "/var/lib/docker:exec".into()]
        });
        args.extend([
            "-v".into(),
            format!("{}:{BIN_MOUNT}:ro", self.opts.bin_dir.display()),
            "-v".into(),
            format!("{}:{LOG_MOUNT}", logs.display()),
            "-v".into(),
            format!("{}:{TLS_DIR}/ca.pem:ro", self.nats_ca().display()),
            "-v".into(),
            format!("{}:{TLS_DIR}/host.creds:ro", self.host_creds_file(&h.name).display()),
            "-e".into(),
            format!("DOCKERD_LOG={LOG_MOUNT}/dockerd.log"),
            HOST_IMAGE.into(),
        ]);
        docker_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    fn wait_engine(&self, i: usize, limit: Duration) {
        let h = &self.hosts[i];
        let deadline = Instant::now() + limit;
        loop {
            let ok = Command::new("docker")
                .args(["exec", &h.container, "test", "-f", "/run/host-ready"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            let running = docker_inspect(&h.container, "{{.State.Running}}");
            assert!(
                Instant::now() < deadline && running != "false",
                "the engine of {} is not ready within {limit:?} (running: {running}):\n{}\n{}",
                h.name,
                tail(&self.log(&h.name, "dockerd"), 40),
                docker_logs(&h.container)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn save_images(&mut self) {
        let tar = self.dir.path().join("images.tar");
        let out = Command::new("docker")
            .args(["save", "-o"])
            .arg(&tar)
            .args(&self.opts.images)
            .output()
            .expect("docker");
        assert!(
            out.status.success(),
            "docker save {:?}: {}",
            self.opts.images,
            String::from_utf8_lossy(&out.stderr)
        );
        self.images_tar = Some(tar);
    }

    /// The environment every operator of host `i` gets: the NATS cluster,
    /// heartbeats, the host's private address, then the options' extra.
    fn operator_env(&self, i: usize) -> Vec<(String, String)> {
        let h = &self.hosts[i];
        let mut env = vec![
            ("INFRA_NATS__URL".to_owned(), self.nats_url()),
            ("INFRA_NATS__REPLICAS".into(), NATS_SERVERS.to_string()),
            ("INFRA_NATS__CA_FILE".into(), format!("{TLS_DIR}/ca.pem")),
            ("INFRA_NATS__CREDS_FILE".into(), format!("{TLS_DIR}/host.creds")),
            ("INFRA_HEARTBEAT_SECS".into(), HEARTBEAT_SECS.to_string()),
            ("INFRA_HEARTBEAT_TTL_SECS".into(), HEARTBEAT_TTL_SECS.to_string()),
            ("INFRA_LOG__FORMAT".into(), "json".into()),
            // The host's private address: where other hosts reach what it
            // publishes (cross-host reach).
            ("INFRA_LABELS__ADDR".into(), h.ip.clone()),
        ];
        env.extend(self.opts.operator_env.iter().cloned());
        env
    }

    /// Installs the operators of `tiers` on `host` the way a user does: the
    /// install image (`image`, loaded into the host's engine: name it in
    /// the options' images) run on the host's own engine as the container
    /// `infra-operators`, with the Docker socket, host networking, the
    /// state directory at the same path on both sides and restart policy
    /// `unless-stopped`, finding the host's private address itself
    /// (`labels.addr = "auto"`). Replaces an `infra-operators` container there
    /// (`docker stop`: its operators drain, what they run keeps running).
    /// Returns when `ListHosts` shows the tiers (with a coordinator).
    pub fn install_operators(&self, host: &str, tiers: &[&str], image: &str) {
        let i = self.host_index(host);
        let h = &self.hosts[i];
        let _ = self.docker(host, &["stop", "-t", "30", "infra-operators"]);
        let _ = self.docker(host, &["rm", "-f", "infra-operators"]);
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            "infra-operators",
            "--restart",
            "unless-stopped",
            "--stop-timeout",
            "30",
            "--network",
            "host",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            &format!("{STATE_DIR}:{STATE_DIR}"),
            "-v",
            &format!("{TLS_DIR}:{TLS_DIR}:ro"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut env = self.operator_env(i);
        // The image finds the host's private address itself.
        env.retain(|(k, _)| k != "INFRA_LABELS__ADDR");
        env.push(("INFRA_LABELS__ADDR".into(), "auto".into()));
        env.push(("INFRA_HOST".into(), h.name.clone()));
        env.push(("INFRA_STATE_DIR".into(), STATE_DIR.into()));
        env.push(("INFRA_TIERS".into(), tiers.join(",")));
        env.push(("INFRA_LABELS__OPERATOR_IMAGE".into(), image.into()));
        for (k, v) in &env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.push(image.into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.docker(host, &args);
        assert!(
            out.status.success(),
            "cannot install {image} on {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if self.coords.iter().any(|c| c.child.is_some()) {
            let want: BTreeSet<String> = tiers.iter().map(|t| (*t).to_owned()).collect();
            self.wait_hosts(
                &format!("the operators installed on {host} heartbeat"),
                Duration::from_secs(90),
                |l| l.get(host).is_some_and(|t| t.is_superset(&want)),
            );
        }
    }

    /// Starts `tier`'s operator in host `i` as a `docker exec -d` process
    /// that writes its pid (for [`Cluster::stop_operator`]) and appends to
    /// its log.
    fn spawn_operator(&self, i: usize, tier: &str) {
        let h = &self.hosts[i];
        let port = tier_port(tier);
        let script = format!(
            "mkdir -p {RUN_DIR} {STATE_DIR}; echo \"=== start $(date -u +%FT%TZ)\" >> {LOG_MOUNT}/{tier}-operator.log; \
             echo $$ > {RUN_DIR}/{tier}.pid; exec {BIN_MOUNT}/{tier}-operator --host {host} --state-dir {STATE_DIR} \
             --grpc-listen 0.0.0.0:{port} >> {LOG_MOUNT}/{tier}-operator.log 2>&1",
            host = h.name
        );
        let env = self.operator_env(i);
        let mut cmd = Command::new("docker");
        cmd.args(["exec", "-d"]);
        for (k, v) in &env {
            cmd.arg("-e").arg(format!("{k}={v}"));
        }
        let out = cmd.args([&h.container, "sh", "-c", &script]).output().expect("docker");
        assert!(
            out.status.success(),
            "cannot start {tier}-operator on {}: {}",
            h.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn wait_host_tiers(&self, host: &str, limit: Duration) {
        if !self.coords.iter().any(|c| c.child.is_some()) {
            return;
        }
        let want: BTreeSet<String> = self.host(host).tiers.iter().cloned().collect();
        self.wait_hosts(&format!("the operators of {host} heartbeat"), limit, |h| {
            h.get(host).is_some_and(|t| t.is_superset(&want))
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.coords {
            if let Some(mut child) = c.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if self.opts.fence_coordinators {
            self.unfence();
        }
        if std::env::var_os("E2E_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!(
                "E2E_KEEP: cluster {} kept (logs in {}); remove it with `just hosts-down {}`",
                self.id,
                dir.keep().display(),
                self.id
            );
            return;
        }
        remove_cluster(&self.id);
    }
}

/// `VmRSS` of a `/proc/<pid>/status`, in KiB.
fn rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Removes every container (with its anonymous volumes) and network
/// labelled [`CLUSTER_LABEL`]`=id`. Touches nothing else.
pub fn remove_cluster(id: &str) {
    let filter = format!("label={CLUSTER_LABEL}={id}");
    let ids = docker_stdout(&["ps", "-aq", "--filter", &filter]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids);
        docker_stdout(&args);
    }
    for n in docker_stdout(&["network", "ls", "-q", "--filter", &filter]).split_whitespace() {
        docker_stdout(&["network", "rm", n]);
    }
}

/// Ids of the clusters present on the outer engine (by their containers'
/// and networks' labels), only those of `origin` when given.
pub fn list_clusters(origin: Option<&str>) -> BTreeSet<String> {
    let mut filter = vec!["--filter".to_owned(), format!("label={CLUSTER_LABEL}")];
    if let Some(o) = origin {
        filter.extend(["--filter".to_owned(), format!("label={ORIGIN_LABEL}={o}")]);
    }
    let format = format!("{{{{index .Labels \"{CLUSTER_LABEL}\"}}}}");
    let f: Vec<&str> = filter.iter().map(String::as_str).collect();
    let mut ps = vec!["ps", "-a", "--format", &format];
    ps.extend(&f);
    let mut ids: BTreeSet<String> = docker_stdout(&ps).lines().map(str::to_owned).collect();
    // `docker network ls --format` has no .Labels index: inspect them.
    let mut ls = vec!["network", "ls", "-q"];
    ls.extend(&f);
    for n in docker_stdout(&ls).split_whitespace() {
        ids.insert(docker_inspect(n, &format));
    }
    ids.retain(|s| !s.is_empty());
    ids
}

/// The inspection port of a tier's operator in a host (50061 gateway ..
/// 50069 communication, as the operators' defaults on one machine).
pub fn tier_port(tier: &str) -> u16 {
    let i = TIERS
        .iter()
        .position(|t| *t == tier)
        .unwrap_or_else(|| panic!("unknown tier {tier:?}"));
    50061 + u16::try_from(i).expect("nine tiers")
}

fn preflight(opts: &ClusterOptions) {
    // Hosts get .101 and up of the cluster's /24.
    assert!(
        (1..=150).contains(&opts.hosts),
        "a cluster has 1 to 150 hosts, not {}",
        opts.hosts
    );
    for img in [HOST_IMAGE, NATS_IMAGE]
        .into_iter()
        .chain(opts.images.iter().map(String::as_str))
    {
        let ok = Command::new("docker")
            .args(["image", "inspect", img])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "image {img} is missing on the outer engine: run `bash e2e/images/build.sh` first"
        );
    }
    let mut bins: Vec<String> = opts
        .tiers
        .iter()
        .chain(opts.host_tiers.values().flatten())
        .map(|t| format!("{t}-operator"))
        .collect();
    if opts.coordinators > 0 {
        bins.push("coordinator".into());
    }
    for b in bins {
        let p = opts.bin_dir.join(&b);
        assert!(
            p.is_file(),
            "{} missing: run `cargo build --workspace --bins` first",
            p.display()
        );
    }
}

/// Whether the server at `ip` sees a JetStream meta leader in a cluster of
/// [`NATS_SERVERS`] (its monitoring endpoint `/jsz`).
fn jsz_ready(ip: &str) -> bool {
    let Some(body) = http_get(ip, 8222, "/jsz") else {
        return false;
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let meta = &v["meta_cluster"];
    meta["leader"].as_str().is_some_and(|l| !l.is_empty()) && meta["cluster_size"].as_u64() == Some(NATS_SERVERS as u64)
}

fn http_get(ip: &str, port: u16, path: &str) -> Option<String> {
    let addr = format!("{ip}:{port}").parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_owned())
}

fn stop_child(child: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn docker_ok(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker on PATH");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn docker_stdout(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn docker_inspect(name: &str, format: &str) -> String {
    docker_stdout(&["inspect", "-f", format, name]).trim().to_owned()
}

fn docker_logs(container: &str) -> String {
    let out = Command::new("docker")
        .args(["logs", "--tail", "30", container])
        .output()
        .expect("docker");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Path of a fixture catalog under `e2e/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// Writes a credential readable by its owner only.
fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("write credential");
}

/// 64 random bits from the kernel.
fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    u64::from_le_bytes(b)
}
