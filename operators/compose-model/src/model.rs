//! Domain types: what a Compose file means, in plain Rust types.
//!
//! Operators and the coordinator work on these, never on raw YAML, so every
//! shorthand Compose allows (list or map, string or number, short or long
//! syntax) is normalised here once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Tier;

/// One service of the catalog, normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Unique across the whole catalog.
    pub name: String,
    /// From the folder of the file.
    pub tier: Tier,
    /// The file that defines it (as found under the catalog root).
    pub file: PathBuf,
    /// 1-based line of the service key in `file`, for messages.
    pub line: usize,
    /// `image`, after interpolation and overrides.
    pub image: Option<String>,
    /// `build`, kept for the plan; operators never build.
    pub build: Option<Build>,
    /// `command`; a string is split with shell rules.
    pub command: Option<Vec<String>>,
    /// `entrypoint`; a string is split with shell rules.
    pub entrypoint: Option<Vec<String>>,
    /// `env_file` entries first, then `environment`.
    pub environment: BTreeMap<String, String>,
    /// Published and exposed ports, ranges expanded.
    pub ports: Vec<Port>,
    /// Volumes, bind mounts and tmpfs mounts from `volumes`.
    pub volumes: Vec<Mount>,
    /// `tmpfs` (short form paths, with options if given).
    pub tmpfs: Vec<String>,
    /// Networks joined; empty means the project's default network.
    pub networks: Vec<NetworkAttachment>,
    /// `healthcheck`; `disable: true` gives a `HealthTest::None` test.
    pub healthcheck: Option<Healthcheck>,
    /// `depends_on`, both syntaxes.
    pub depends_on: Vec<Dependency>,
    /// `restart`.
    pub restart: Option<RestartPolicy>,
    /// `labels`, both syntaxes.
    pub labels: BTreeMap<String, String>,
    /// `profiles`; empty means active by default.
    pub profiles: Vec<String>,
    /// `secrets` granted to the service.
    pub secrets: Vec<SecretRef>,
    /// `configs` granted to the service (same shape as secrets).
    pub configs: Vec<SecretRef>,
    /// `user`.
    pub user: Option<String>,
    /// `read_only` root filesystem.
    pub read_only: bool,
    /// `security_opt`, e.g. `no-new-privileges:true`.
    pub security_opt: Vec<String>,
    /// `cap_add`.
    pub cap_add: Vec<String>,
    /// `cap_drop`.
    pub cap_drop: Vec<String>,
    /// `privileged`.
    pub privileged: bool,
    /// `hostname`.
    pub hostname: Option<String>,
    /// `working_dir`.
    pub working_dir: Option<String>,
    /// `stop_signal`.
    pub stop_signal: Option<String>,
    /// `stop_grace_period`.
    pub stop_grace_period: Option<Duration>,
    /// `init`.
    pub init: Option<bool>,
    /// `shm_size` in bytes.
    pub shm_size: Option<u64>,
    /// `ulimits`; a single number sets both soft and hard.
    pub ulimits: BTreeMap<String, Ulimit>,
    /// `sysctls`, both syntaxes.
    pub sysctls: BTreeMap<String, String>,
    /// `extra_hosts` normalised to `host:ip`.
    pub extra_hosts: Vec<String>,
    /// `expose` (container ports for other services, not published).
    pub expose: Vec<String>,
    /// `devices`, as written.
    pub devices: Vec<String>,
    /// `dns` servers.
    pub dns: Vec<String>,
    /// `network_mode`.
    pub network_mode: Option<String>,
    /// `pid`.
    pub pid: Option<String>,
    /// `ipc`.
    pub ipc: Option<String>,
    /// `platform`.
    pub platform: Option<String>,
    /// `pull_policy`.
    pub pull_policy: Option<String>,
    /// `logging`.
    pub logging: Option<Logging>,
    /// `gpus` (`all` gives one request with `count: All`).
    pub gpus: Vec<DeviceRequest>,
    /// `container_name`, kept; the operators name containers themselves.
    pub container_name: Option<String>,
    /// `deploy`, defaulted when absent is `None`.
    pub deploy: Option<Deploy>,
    /// Service-level `x-*` keys.
    pub extensions: BTreeMap<String, serde_json::Value>,
    /// Every key we do not model, by dotted path relative to the service,
    /// so the plan can report it instead of silently dropping it.
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

impl Service {
    /// Whether the service has a healthcheck that actually tests something,
    /// which `condition: service_healthy` needs.
    pub fn has_healthcheck(&self) -> bool {
        self.healthcheck
            .as_ref()
            .is_some_and(|h| !matches!(h.test, HealthTest::None))
    }

    /// Replicas wanted (`deploy.replicas`, default 1; global mode says 1 per host).
    pub fn replicas(&self) -> u32 {
        self.deploy.as_ref().map_or(1, |d| d.replicas)
    }
}

/// `build`, kept so a plan can say a service would need building.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Build {
    /// Absolute build context (or a URL, kept as written).
    pub context: String,
    /// `dockerfile`, relative to the context as in Compose.
    pub dockerfile: Option<String>,
    /// `args`.
    pub args: BTreeMap<String, String>,
    /// `target`.
    pub target: Option<String>,
    /// Every other build key, as written.
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `tcp` (the default).
    Tcp,
    /// `udp`.
    Udp,
    /// `sctp`.
    Sctp,
}

/// One container port, published on the host or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// Host address to bind (`127.0.0.1`), `None` for all.
    pub host_ip: Option<String>,
    /// Host port; `None` means not published or an ephemeral port.
    pub published: Option<u16>,
    /// Container port.
    pub target: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// Kind of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A named (or anonymous) volume.
    Volume,
    /// A host path.
    Bind,
    /// A memory filesystem.
    Tmpfs,
}

/// One entry of `volumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Volume, bind or tmpfs.
    pub kind: MountKind,
    /// Volume name, absolute host path, or `None` for anonymous volumes and tmpfs.
    pub source: Option<String>,
    /// Path in the container.
    pub target: String,
    /// `:ro` / `read_only: true`.
    pub read_only: bool,
    /// `tmpfs.size` in bytes (long syntax).
    pub tmpfs_size: Option<u64>,
}

/// A network the service joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// Network name as declared at top level.
    pub name: String,
    /// Extra DNS names on that network.
    pub aliases: Vec<String>,
    /// `ipv4_address`: a static address. Kept so the lint can report it
    /// (seed 001: rely on DNS names); the operators do not apply it, so it is
    /// also listed under the service's `unsupported` keys.
    #[serde(default)]
    pub ipv4_address: Option<String>,
    /// `ipv6_address`, as `ipv4_address`.
    #[serde(default)]
    pub ipv6_address: Option<String>,
}

/// The command a healthcheck runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthTest {
    /// Disabled (`disable: true` or `["NONE"]`).
    None,
    /// Use the image's own `HEALTHCHECK` (no `test` given, timings tuned).
    Inherit,
    /// Exec form (`["CMD", ...]`), without the `CMD` marker.
    Cmd(Vec<String>),
    /// Shell form (a string, or `["CMD-SHELL", "..."]`).
    Shell(String),
}

/// `healthcheck`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// What to run.
    pub test: HealthTest,
    /// `interval`.
    pub interval: Option<Duration>,
    /// `timeout`.
    pub timeout: Option<Duration>,
    /// `start_period`.
    pub start_period: Option<Duration>,
    /// `start_interval`.
    pub start_interval: Option<Duration>,
    /// `retries`.
    pub retries: Option<u32>,
}

/// What a dependency must reach before the dependent starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyCondition {
    /// Running (the default).
    ServiceStarted,
    /// Running and healthy.
    ServiceHealthy,
    /// Ran to completion with exit code 0 (init jobs).
    ServiceCompletedSuccessfully,
}

/// One `depends_on` edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// Target service name (any tier).
    pub service: String,
    /// Gate.
    pub condition: DependencyCondition,
    /// `required: false` lets the dependent start without the target.
    pub required: bool,
    /// `restart: true` restarts the dependent when the target is updated.
    pub restart: bool,
}

/// `restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// `no`.
    No,
    /// `always`.
    Always,
    /// `on-failure[:N]`.
    OnFailure(Option<u32>),
    /// `unless-stopped`.
    UnlessStopped,
}

/// A secret (or config) granted to a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    /// Top-level secret name.
    pub source: String,
    /// File name or path in the container (default `/run/secrets/<source>`).
    pub target: Option<String>,
    /// Owner uid.
    pub uid: Option<String>,
    /// Owner gid.
    pub gid: Option<String>,
    /// File mode.
    pub mode: Option<u32>,
}

/// `ulimits` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// Soft limit.
    pub soft: i64,
    /// Hard limit.
    pub hard: i64,
}

/// `logging`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logging {
    /// Driver (`json-file`, `local`, ...).
    pub driver: Option<String>,
    /// Driver options.
    pub options: BTreeMap<String, String>,
}

/// How many devices a request wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceCount {
    /// Every matching device.
    All,
    /// This many.
    Count(u32),
}

/// A GPU (or other device) request, from `gpus` or
/// `deploy.resources.reservations.devices`; the coordinator places services
/// with one only on hosts that reported such devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRequest {
    /// e.g. `["gpu"]`.
    pub capabilities: Vec<String>,
    /// `count`; `None` when `device_ids` is given instead.
    pub count: Option<DeviceCount>,
    /// Specific device ids.
    pub device_ids: Vec<String>,
    /// e.g. `nvidia`.
    pub driver: Option<String>,
    /// Driver options.
    pub options: BTreeMap<String, String>,
}

/// `deploy.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployMode {
    /// `replicas` copies placed by the coordinator (default).
    Replicated,
    /// One copy on every eligible host.
    Global,
}

/// `deploy`, with Swarm semantics (Compose ignores most of it; we do not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deploy {
    /// `mode`.
    pub mode: DeployMode,
    /// `replicas` (default 1).
    pub replicas: u32,
    /// `resources`.
    pub resources: Resources,
    /// `update_config`.
    pub update_config: Option<UpdateConfig>,
    /// `rollback_config`.
    pub rollback_config: Option<UpdateConfig>,
    /// `placement`.
    pub placement: Placement,
    /// `restart_policy`.
    pub restart_policy: Option<DeployRestartPolicy>,
    /// `labels` (service labels, not container labels).
    pub labels: BTreeMap<String, String>,
    /// `endpoint_mode`, kept.
    pub endpoint_mode: Option<String>,
}

/// `deploy.resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// `limits`.
    pub limits: ResourceLimits,
    /// `reservations`.
    pub reservations: ResourceReservations,
}

/// `deploy.resources.limits`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// CPUs (`"0.5"` or `0.5`).
    pub cpus: Option<f64>,
    /// Memory in bytes.
    pub memory: Option<u64>,
    /// Process limit.
    pub pids: Option<i64>,
}

/// `deploy.resources.reservations`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceReservations {
    /// CPUs.
    pub cpus: Option<f64>,
    /// Memory in bytes.
    pub memory: Option<u64>,
    /// Device requests (GPUs).
    pub devices: Vec<DeviceRequest>,
}

/// `failure_action` of an update or rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Stop the rollout and wait (Swarm's default).
    Pause,
    /// Keep going.
    Continue,
    /// Roll back to the previous revision.
    Rollback,
}

/// `order` of an update: stop the old task first or start the new one first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop, then start (the default; safe for volumes with one writer).
    StopFirst,
    /// Start, then stop (no gap, needs room for two).
    StartFirst,
}

/// `deploy.update_config` / `deploy.rollback_config`, with Swarm's defaults
/// for keys not given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks updated at once; 0 means all (default 1).
    pub parallelism: u32,
    /// Wait between batches (default 0).
    pub delay: Duration,
    /// What to do when a batch fails (default pause).
    pub failure_action: FailureAction,
    /// How long a new task is watched for failure (default 5s).
    pub monitor: Duration,
    /// Tolerated failure ratio, 0..=1 (default 0).
    pub max_failure_ratio: f64,
    /// Stop-first (default) or start-first.
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay: Duration::ZERO,
            failure_action: FailureAction::Pause,
            monitor: Duration::from_secs(5),
            max_failure_ratio: 0.0,
            order: UpdateOrder::StopFirst,
        }
    }
}

/// `deploy.placement`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// e.g. `node.labels.gpu == true`.
    pub constraints: Vec<String>,
    /// `max_replicas_per_node`.
    pub max_replicas_per_node: Option<u32>,
    /// `spread` preferences, e.g. `node.labels.zone`.
    pub preferences: Vec<String>,
}

/// `deploy.restart_policy.condition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Never.
    None,
    /// On non-zero exit.
    OnFailure,
    /// Always (default).
    Any,
}

/// `deploy.restart_policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRestartPolicy {
    /// `condition` (default any).
    pub condition: RestartCondition,
    /// `delay` between attempts.
    pub delay: Option<Duration>,
    /// `max_attempts`.
    pub max_attempts: Option<u32>,
    /// `window` to decide if a restart succeeded.
    pub window: Option<Duration>,
}

/// Top-level `networks` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDef {
    /// Actual Docker name (`name:`), if different from the key.
    pub name: Option<String>,
    /// Created outside the platform.
    pub external: bool,
    /// `driver`.
    pub driver: Option<String>,
    /// `internal` (no outbound access).
    pub internal: bool,
    /// `labels`.
    pub labels: BTreeMap<String, String>,
    /// The first file that declared it.
    pub file: PathBuf,
    /// Keys we do not model.
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// Top-level `volumes` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDef {
    /// Actual Docker name (`name:`), if different from the key.
    pub name: Option<String>,
    /// Created outside the platform.
    pub external: bool,
    /// `driver`.
    pub driver: Option<String>,
    /// `labels`.
    pub labels: BTreeMap<String, String>,
    /// The first file that declared it.
    pub file: PathBuf,
    /// Keys we do not model (e.g. `driver_opts`).
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// Where a top-level secret (or config) gets its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretSource {
    /// An absolute host file (checked to exist at load time).
    File(PathBuf),
    /// The value of this environment variable on the operator's host.
    Environment(String),
    /// Inline content (configs only).
    Content(String),
    /// Managed outside the platform.
    External,
}

/// Top-level `secrets` (or `configs`) entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretDef {
    /// Source of the content.
    pub source: SecretSource,
    /// `name`, if different from the key.
    pub name: Option<String>,
    /// The file that declared it.
    pub file: PathBuf,
    /// Line of the entry in that file.
    pub line: usize,
}
