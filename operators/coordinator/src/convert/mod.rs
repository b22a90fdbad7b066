//! From the Compose model to the bus contract: one [`ServiceSpec`] per
//! service, with Docker names for networks and volumes, and the secrets it
//! needs. Everything is checked here, before anything is applied, so a bad
//! catalog never leaves a half-applied deploy.

use std::collections::BTreeMap;
use std::time::Duration;

use infra_compose::{Catalog, HealthTest, MountKind, RestartPolicy, SecretSource, Service};
use infra_proto::bus::v1::{
    self as pb, Args, DependencySpec, HealthcheckSpec, MountSpec, NetworkSpec, PortSpec, Resources, SecretMount,
    ServiceSpec,
};
use sha2::{Digest, Sha256};

pub mod backup;
pub mod configs;
pub mod registry;

/// The service label naming its placement group: the services that
/// spread over the hosts as one (the members of one cluster).
pub const GROUP_LABEL: &str = "infra.placement.group";

/// Default project: the prefix of Docker names, as Compose uses the
/// project name.
pub const PROJECT: &str = "infra";

/// A secret's content, to be put in the secrets bucket before a deploy.
pub struct SecretContent {
    /// Bucket key.
    pub key: String,
    /// The bytes. Never logged.
    pub content: bytes::Bytes,
}

impl std::fmt::Debug for SecretContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretContent")
            .field("key", &self.key)
            .field("content", &"<redacted>")
            .finish()
    }
}

/// A service that cannot be turned into a spec. The message names the
/// file, line, service and field.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: service {service:?}: {field}: {message}")]
pub struct ConvertError {
    /// Compose file.
    pub file: String,
    /// Line of the service.
    pub line: usize,
    /// Service.
    pub service: String,
    /// Field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(svc: &Service, field: &str, message: impl Into<String>) -> ConvertError {
    ConvertError {
        file: svc.file.display().to_string(),
        line: svc.line,
        service: svc.name.clone(),
        field: field.into(),
        message: message.into(),
    }
}

fn dur(d: Option<Duration>) -> Option<prost_types::Duration> {
    d.map(|d| prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

/// Docker name of a Compose volume: `<project>_<key>` unless it has a
/// `name` or is external.
pub fn volume_name(catalog: &Catalog, project: &str, key: &str) -> String {
    match catalog.volumes.get(key) {
        Some(v) if v.name.is_some() => v.name.clone().unwrap_or_default(),
        Some(v) if v.external => key.to_owned(),
        _ => format!("{project}_{key}"),
    }
}

/// Docker name of a Compose network: `<project>_<key>` unless it has a
/// `name` or is external (`default` is `<project>_default`).
pub fn network_name(catalog: &Catalog, project: &str, key: &str) -> String {
    match catalog.networks.get(key) {
        Some(n) if n.name.is_some() => n.name.clone().unwrap_or_default(),
        Some(n) if n.external => key.to_owned(),
        _ => format!("{project}_{key}"),
    }
}

/// The spec of `svc`, and the contents it needs in the secrets bucket
/// (its secrets and its catalog files).
pub fn to_spec(
    catalog: &Catalog,
    project: &str,
    svc: &Service,
    env: &BTreeMap<String, String>,
) -> Result<(ServiceSpec, Vec<SecretContent>), ConvertError> {
    infra_bus::Token::new("service", &svc.name).map_err(|e| err(svc, "name", e.to_string()))?;
    let image = svc.image.clone().filter(|i| !i.is_empty()).ok_or_else(|| {
        err(
            svc,
            "image",
            "no image: services must name an image (build is not supported by the operators)",
        )
    })?;

    let (secrets, mut contents) = secrets(catalog, svc, env)?;
    let (configs, files) = configs::configs(catalog, svc, env)?;
    contents.extend(files);
    let pull_policy = registry::pull_policy(svc)?;
    let auth = registry::credentials(catalog, svc, &image, env)?;
    let registry_auth_key = auth.as_ref().map(|a| a.key.clone()).unwrap_or_default();
    contents.extend(auth);

    let mut spec = ServiceSpec {
        name: svc.name.clone(),
        tier: svc.tier.as_str().to_owned(),
        image,
        command: svc.command.clone().map(|args| Args { args }),
        entrypoint: svc.entrypoint.clone().map(|args| Args { args }),
        environment: svc.environment.clone(),
        ports: ports(svc),
        mounts: mounts(catalog, project, svc),
        networks: networks(catalog, project, svc),
        healthcheck: healthcheck(svc),
        depends_on: depends_on(catalog, svc),
        restart: restart(svc),
        labels: svc.labels.clone(),
        secrets,
        user: svc.user.clone().unwrap_or_default(),
        read_only: svc.read_only,
        security_opt: svc.security_opt.clone(),
        cap_add: svc.cap_add.clone(),
        cap_drop: svc.cap_drop.clone(),
        replicas: svc.replicas(),
        resources: Some(resources(svc)),
        hostname: svc.hostname.clone().unwrap_or_default(),
        working_dir: svc.working_dir.clone().unwrap_or_default(),
        stop_signal: svc.stop_signal.clone().unwrap_or_default(),
        stop_grace_period: dur(svc.stop_grace_period),
        init: svc.init.unwrap_or(false),
        shm_size: svc.shm_size.map_or(0, |s| s as i64),
        tmpfs: svc.tmpfs.clone(),
        sysctls: svc.sysctls.clone(),
        extra_hosts: svc.extra_hosts.clone(),
        source_file: svc.file.display().to_string(),
        source_line: svc.line as u32,
        project: project.to_owned(),
        devices: device_requests(svc),
        configs,
        logging: svc.logging.as_ref().map(|l| infra_proto::bus::v1::LoggingSpec {
            driver: l.driver.clone().unwrap_or_default(),
            options: l.options.clone().into_iter().collect(),
        }),
        pull_policy,
        registry_auth_key,
        ..Default::default()
    };
    if let Some(models) = svc.extensions.get(OLLAMA_MODELS_KEY) {
        spec.labels.insert(OLLAMA_MODELS_LABEL.into(), ollama_models(models));
    }
    Ok((spec, contents))
}

/// The mounts: named volumes under the project's names, binds and tmpfs.
fn mounts(catalog: &Catalog, project: &str, svc: &Service) -> Vec<MountSpec> {
    let mut mounts = Vec::new();
    for m in &svc.volumes {
        let (kind, source) = match m.kind {
            MountKind::Volume => {
                let key = m.source.clone().unwrap_or_default();
                if key.is_empty() {
                    // Anonymous volume: Docker names it; it goes with the container.
                    (pb::MountKind::Volume, String::new())
                } else {
                    (pb::MountKind::Volume, volume_name(catalog, project, &key))
                }
            }
            // A catalog file or folder travels as a config mount.
            MountKind::Bind if m.source.as_deref().is_some_and(|s| configs::in_catalog(catalog, s)) => continue,
            MountKind::Bind => (pb::MountKind::Bind, m.source.clone().unwrap_or_default()),
            MountKind::Tmpfs => (pb::MountKind::Tmpfs, String::new()),
        };
        mounts.push(MountSpec {
            kind: kind as i32,
            source,
            target: m.target.clone(),
            read_only: m.read_only,
        });
    }
    mounts
}

/// The networks, the project's `default` when the service names none.
fn networks(catalog: &Catalog, project: &str, svc: &Service) -> Vec<NetworkSpec> {
    if svc.networks.is_empty() {
        vec![NetworkSpec {
            name: network_name(catalog, project, "default"),
            aliases: vec![],
        }]
    } else {
        svc.networks
            .iter()
            .map(|n| NetworkSpec {
                name: network_name(catalog, project, &n.name),
                aliases: n.aliases.clone(),
            })
            .collect()
    }
}

/// The health check as Docker takes it; `None` inherits the image's.
fn healthcheck(svc: &Service) -> Option<HealthcheckSpec> {
    svc.healthcheck.as_ref().and_then(|h| {
        let test = match &h.test {
            HealthTest::None => vec!["NONE".to_string()],
            HealthTest::Inherit => return None,
            HealthTest::Cmd(args) => std::iter::once("CMD".to_string()).chain(args.iter().cloned()).collect(),
            HealthTest::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
        };
        Some(HealthcheckSpec {
            test,
            interval: dur(h.interval),
            timeout: dur(h.timeout),
            start_period: dur(h.start_period),
            start_interval: dur(h.start_interval),
            retries: h.retries.unwrap_or(0),
        })
    })
}

/// The secret mounts (each with its key and content hash) and their
/// contents, from files, the environment or inline content.
fn secrets(
    catalog: &Catalog,
    svc: &Service,
    env: &BTreeMap<String, String>,
) -> Result<(Vec<SecretMount>, Vec<SecretContent>), ConvertError> {
    let mut secrets = Vec::new();
    let mut contents = Vec::new();
    for s in &svc.secrets {
        let def = catalog.secrets.get(&s.source).ok_or_else(|| {
            err(
                svc,
                "secrets",
                format!("secret {:?} is not declared at top level", s.source),
            )
        })?;
        let content: Vec<u8> = match &def.source {
            SecretSource::File(path) => std::fs::read(path).map_err(|e| {
                err(
                    svc,
                    "secrets",
                    format!("secret {:?}: cannot read {}: {e}", s.source, path.display()),
                )
            })?,
            SecretSource::Environment(var) => env
                .get(var)
                .ok_or_else(|| {
                    err(
                        svc,
                        "secrets",
                        format!("secret {:?}: environment variable {var} is not set", s.source),
                    )
                })?
                .clone()
                .into_bytes(),
            SecretSource::Content(c) => c.clone().into_bytes(),
            SecretSource::External => {
                return Err(err(
                    svc,
                    "secrets",
                    format!("secret {:?} is external, which needs Swarm", s.source),
                ));
            }
        };
        let key = infra_bus::Token::new("secret", &s.source).map_err(|e| err(svc, "secrets", e.to_string()))?;
        let sha = hex::encode(Sha256::digest(&content));
        let parse_id = |v: &Option<String>, field: &str| -> Result<Option<u32>, ConvertError> {
            v.as_deref()
                .map(|x| x.parse().map_err(|_| err(svc, field, format!("{x:?} is not a number"))))
                .transpose()
        };
        secrets.push(SecretMount {
            name: s.source.clone(),
            target: s.target.clone().unwrap_or_default(),
            key: key.to_string(),
            sha256: sha,
            uid: parse_id(&s.uid, "secrets.uid")?,
            gid: parse_id(&s.gid, "secrets.gid")?,
            mode: s.mode.unwrap_or(0),
        });
        contents.push(SecretContent {
            key: key.to_string(),
            content: content.into(),
        });
    }
    Ok((secrets, contents))
}

/// `deploy.resources`: limits and reservations.
fn resources(svc: &Service) -> Resources {
    svc.deploy.as_ref().map_or_else(Resources::default, |d| {
        let r = &d.resources;
        Resources {
            nano_cpus_limit: r.limits.cpus.map_or(0, |c| (c * 1e9) as i64),
            memory_limit: r.limits.memory.map_or(0, |m| m as i64),
            pids_limit: r.limits.pids.unwrap_or(0),
            nano_cpus_reservation: r.reservations.cpus.map_or(0, |c| (c * 1e9) as i64),
            memory_reservation: r.reservations.memory.map_or(0, |m| m as i64),
        }
    })
}

/// The restart policy as Docker names it.
fn restart(svc: &Service) -> String {
    match svc.restart {
        None | Some(RestartPolicy::No) => "no".to_string(),
        Some(RestartPolicy::Always) => "always".into(),
        Some(RestartPolicy::UnlessStopped) => "unless-stopped".into(),
        Some(RestartPolicy::OnFailure(None)) => "on-failure".into(),
        Some(RestartPolicy::OnFailure(Some(n))) => format!("on-failure:{n}"),
    }
}

/// The dependencies, each with its tier.
fn depends_on(catalog: &Catalog, svc: &Service) -> Vec<DependencySpec> {
    svc.depends_on
        .iter()
        .map(|d| DependencySpec {
            service: d.service.clone(),
            tier: catalog
                .services
                .get(&d.service)
                .map(|s| s.tier.as_str().to_owned())
                .unwrap_or_default(),
            condition: condition(d.condition) as i32,
            required: d.required,
        })
        .collect()
}

/// The published ports.
fn ports(svc: &Service) -> Vec<PortSpec> {
    svc.ports
        .iter()
        .map(|p| PortSpec {
            host_ip: p.host_ip.clone().unwrap_or_default(),
            published: u32::from(p.published.unwrap_or(0)),
            target: u32::from(p.target),
            protocol: format!("{:?}", p.protocol).to_lowercase(),
        })
        .collect()
}

/// The bus form of a dependency condition.
pub fn condition(c: infra_compose::DependencyCondition) -> pb::Condition {
    match c {
        infra_compose::DependencyCondition::ServiceStarted => pb::Condition::ServiceStarted,
        infra_compose::DependencyCondition::ServiceHealthy => pb::Condition::ServiceHealthy,
        infra_compose::DependencyCondition::ServiceCompletedSuccessfully => pb::Condition::ServiceCompletedSuccessfully,
    }
}

/// The placement rules of a service (`deploy.mode`, `deploy.placement`,
/// GPU reservations), checked: a constraint that does not parse names the
/// file, line, service and entry.
pub fn placement_spec(svc: &Service) -> Result<pb::PlacementSpec, ConvertError> {
    let mut out = pb::PlacementSpec {
        // Named volumes hold state; an anonymous one is a replica's own
        // scratch space and goes with its container.
        stateful: svc
            .volumes
            .iter()
            .any(|m| m.kind == MountKind::Volume && m.source.is_some()),
        gpus: gpus_needed(svc),
        group: svc.labels.get(GROUP_LABEL).cloned().unwrap_or_default(),
        ..Default::default()
    };
    if let Some(d) = &svc.deploy {
        out.global = d.mode == infra_compose::DeployMode::Global;
        for (i, c) in d.placement.constraints.iter().enumerate() {
            crate::placement::Constraint::parse(c)
                .map_err(|e| err(svc, &format!("deploy.placement.constraints[{i}]"), e.to_string()))?;
            out.constraints.push(c.trim().to_owned());
        }
        for (i, pref) in d.placement.preferences.iter().enumerate() {
            let label = pref
                .trim()
                .strip_prefix("node.labels.")
                .filter(|l| !l.is_empty())
                .ok_or_else(|| {
                    err(
                        svc,
                        &format!("deploy.placement.preferences[{i}].spread"),
                        format!("{pref:?}: spread over a host label, written node.labels.<name>"),
                    )
                })?;
            out.spread.push(label.to_owned());
        }
        if let Some(m) = d.placement.max_replicas_per_node {
            if m == 0 {
                return Err(err(
                    svc,
                    "deploy.placement.max_replicas_per_node",
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
            out.max_replicas_per_node = m;
        }
    }
    Ok(out)
}

/// How a spec change rolls over the service (`rollback: false`:
/// `deploy.update_config`) or back (`true`: `deploy.rollback_config`), with
/// Swarm's defaults for what is not given.
pub fn update_policy(svc: &Service, rollback: bool) -> pb::UpdatePolicy {
    let cfg = svc
        .deploy
        .as_ref()
        .and_then(|d| {
            if rollback {
                d.rollback_config.clone()
            } else {
                d.update_config.clone()
            }
        })
        .unwrap_or_default();
    pb::UpdatePolicy {
        parallelism: cfg.parallelism,
        delay: dur(Some(cfg.delay)),
        failure_action: match cfg.failure_action {
            infra_compose::FailureAction::Pause => "pause",
            infra_compose::FailureAction::Continue => "continue",
            infra_compose::FailureAction::Rollback => "rollback",
        }
        .into(),
        monitor: dur(Some(cfg.monitor)),
        max_failure_ratio: cfg.max_failure_ratio,
        start_first: cfg.order == infra_compose::UpdateOrder::StartFirst,
    }
}

/// The ports a service listens on for others: `expose` and the targets
/// of `ports`, as (port, protocol). Ranges in `expose` are left out.
pub fn service_ports(svc: &Service) -> Vec<(u16, String)> {
    let mut out: Vec<(u16, String)> = Vec::new();
    for e in &svc.expose {
        let (port, proto) = e.split_once('/').unwrap_or((e.as_str(), "tcp"));
        if let Ok(p) = port.trim().parse::<u16>() {
            out.push((p, proto.trim().to_lowercase()));
        }
    }
    for p in &svc.ports {
        let proto = format!("{:?}", p.protocol).to_lowercase();
        out.push((p.target, proto));
    }
    out.sort();
    out.dedup();
    out
}

/// GPUs one replica reserves: `gpus:` and `deploy.resources.reservations
/// .devices` entries with the `gpu` capability (`count: all` counts as 1,
/// the least a host must have).
pub fn gpus_needed(svc: &Service) -> u32 {
    let reservations = svc
        .deploy
        .as_ref()
        .map(|d| d.resources.reservations.devices.as_slice())
        .unwrap_or_default();
    svc.gpus
        .iter()
        .chain(reservations)
        .filter(|r| r.capabilities.iter().any(|c| c == "gpu"))
        .map(|r| match r.count {
            Some(infra_compose::DeviceCount::Count(n)) => n,
            Some(infra_compose::DeviceCount::All) => 1,
            None => (r.device_ids.len() as u32).max(1),
        })
        .sum()
}

/// The Compose extension listing the models the ai operator pulls into an
/// Ollama service.
pub const OLLAMA_MODELS_KEY: &str = "x-ollama-models";
/// The container label that carries them to the operator, comma-separated
/// (the operator reads only the spec, not the catalog).
pub const OLLAMA_MODELS_LABEL: &str = "io.infra.ollama.models";

/// `x-ollama-models` (a list, or one comma-separated string) as the
/// label's value.
fn ollama_models(v: &serde_json::Value) -> String {
    let items: Vec<String> = match v {
        serde_json::Value::Array(a) => a.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect(),
        serde_json::Value::String(s) => s.split(',').map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    items
        .iter()
        .map(|m| m.trim())
        .filter(|m| !m.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

/// The device requests of `svc` (`gpus:` and `deploy.resources.reservations
/// .devices`) for the engine: `count: all` is -1, as Docker has it.
fn device_requests(svc: &Service) -> Vec<pb::DeviceRequestSpec> {
    let reservations = svc
        .deploy
        .as_ref()
        .map(|d| d.resources.reservations.devices.as_slice())
        .unwrap_or_default();
    svc.gpus
        .iter()
        .chain(reservations)
        .map(|r| pb::DeviceRequestSpec {
            driver: r.driver.clone().unwrap_or_default(),
            count: match r.count {
                Some(infra_compose::DeviceCount::All) => -1,
                Some(infra_compose::DeviceCount::Count(n)) => i64::from(n),
                None => 0,
            },
            device_ids: r.device_ids.clone(),
            capabilities: r.capabilities.clone(),
            options: r.options.clone().into_iter().collect(),
        })
        .collect()
}

/// Compose keys of `svc` that are kept but not acted on yet, for the plan.
pub fn unsupported_keys(svc: &Service) -> Vec<String> {
    let mut keys: Vec<String> = svc.unsupported.keys().cloned().collect();
    let mut flag = |cond: bool, key: &str| {
        if cond {
            keys.push(key.to_owned());
        }
    };
    flag(svc.build.is_some(), "build");
    flag(!svc.ulimits.is_empty(), "ulimits");
    flag(!svc.devices.is_empty(), "devices");
    flag(!svc.dns.is_empty(), "dns");
    flag(svc.network_mode.is_some(), "network_mode");
    flag(svc.pid.is_some(), "pid");
    flag(svc.ipc.is_some(), "ipc");
    flag(svc.privileged, "privileged");
    flag(!svc.configs.is_empty(), "configs");
    flag(
        svc.container_name.is_some(),
        "container_name (the operators name containers infra-<service>-<n>)",
    );
    flag(svc.platform.is_some(), "platform");
    if let Some(d) = &svc.deploy {
        flag(d.restart_policy.is_some(), "deploy.restart_policy");
    }
    keys.extend(
        svc.extensions
            .keys()
            .filter(|k| *k != OLLAMA_MODELS_KEY && *k != backup::BACKUP_KEY)
            .map(|k| format!("{k} (extension)")),
    );
    keys.sort();
    keys
}

/// A cluster member's status from its operator's heartbeat fact
/// (`member.<service>` = `patroni: replica streaming timeline 2 lag 0`,
/// see `infra_bus::facts::MEMBER_PREFIX`), for
/// `DescribeService`. A line that is not `<role> <state> ...` (the member
/// could not be asked: `unreachable: ...`) keeps the role empty and says
/// so in the state; the line itself is always in `text`.
pub fn member_status(host: &str, fact: &str) -> infra_proto::coordinator::v1::MemberStatus {
    let (kind, line) = fact.split_once(": ").unwrap_or(("", fact));
    let mut out = infra_proto::coordinator::v1::MemberStatus {
        host: host.to_owned(),
        kind: kind.to_owned(),
        text: line.to_owned(),
        ..Default::default()
    };
    if line.starts_with("unreachable") {
        out.state = "unreachable".into();
        return out;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let [role, state, rest @ ..] = words.as_slice() else {
        out.state = line.to_owned();
        return out;
    };
    if rest.chunks(2).any(|kv| !matches!(kv, ["timeline" | "lag", _])) {
        // Not the operator's `<role> <state> [timeline t] [lag l]`.
        out.state = line.to_owned();
        return out;
    }
    out.role = (*role).to_owned();
    out.state = (*state).to_owned();
    for kv in rest.chunks(2) {
        match kv {
            ["timeline", t] => out.timeline = t.parse().unwrap_or(0),
            ["lag", l] => out.lag_bytes = l.parse().ok(),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
