//! From a [`ServiceSpec`] to a Docker container config, and the spec hash
//! that tells whether a running container still matches.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::models::{
    ContainerCreateBody, DeviceRequest, EndpointSettings, HealthConfig, HostConfig, HostConfigLogConfig, Mount,
    MountType, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use infra_proto::bus::v1::{ConfigMount, DeviceRequestSpec, MountKind, ServiceSpec};

use crate::labels;

/// Container name of one replica: `<project>-<service>-<replica>`, as
/// Compose names them (project `infra` when the spec names none).
pub fn container_name(spec: &ServiceSpec, replica: u32) -> String {
    let project = if spec.project.is_empty() {
        "infra"
    } else {
        spec.project.as_str()
    };
    format!("{project}-{}-{replica}", spec.name)
}

/// Where the operator writes the secret files of a service.
pub fn secret_path(state_dir: &Path, service: &str, secret: &str) -> PathBuf {
    state_dir.join("secrets").join(service).join(secret)
}

/// Where the operator writes one config mount of a service: a file, or a
/// folder for a mounted catalog folder. Named by the mount's content, so a
/// rollout's old and new containers each keep their own.
pub fn config_path(state_dir: &Path, service: &str, mount: &ConfigMount) -> PathBuf {
    state_dir
        .join("configs")
        .join(service)
        .join(infra_proto::spec::config_mount_id(mount))
}

fn nanos(d: Option<&prost_types::Duration>) -> Option<i64> {
    d.map(|d| {
        d.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(d.nanos))
    })
    .filter(|n| *n > 0)
}

/// The log driver: the service's `logging:` as written, else `json-file`
/// kept to [`DEFAULT_LOG_FILES`] files of [`DEFAULT_LOG_SIZE`] (Docker's own
/// default keeps every line forever, so one chatty service fills a disk).
fn log_config(logging: Option<&infra_proto::bus::v1::LoggingSpec>) -> HostConfigLogConfig {
    match logging {
        Some(l) => HostConfigLogConfig {
            typ: Some(if l.driver.is_empty() {
                "json-file".into()
            } else {
                l.driver.clone()
            }),
            config: (!l.options.is_empty()).then(|| l.options.clone().into_iter().collect()),
        },
        None => HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_owned(), DEFAULT_LOG_SIZE.to_owned()),
                ("max-file".to_owned(), DEFAULT_LOG_FILES.to_owned()),
            ])),
        },
    }
}

/// The default log file size, Docker's `max-size`.
pub const DEFAULT_LOG_SIZE: &str = "10m";
/// The default number of log files kept, Docker's `max-file`.
pub const DEFAULT_LOG_FILES: &str = "3";

fn restart_policy(restart: &str) -> RestartPolicy {
    let (name, count) = match restart.split_once(':') {
        Some((n, c)) => (n, c.trim().parse::<i64>().ok()),
        None => (restart, None),
    };
    let name = match name.trim() {
        "always" => RestartPolicyNameEnum::ALWAYS,
        "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
        "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
        _ => RestartPolicyNameEnum::NO,
    };
    RestartPolicy {
        name: Some(name),
        maximum_retry_count: count,
    }
}

/// Whether a container of this spec that exited with `exit_code` is done,
/// rather than something to start again.
pub fn exited_for_good(spec: &ServiceSpec, exit_code: i64) -> bool {
    let policy = spec.restart.split(':').next().unwrap_or("").trim();
    match policy {
        "always" | "unless-stopped" => false,
        "on-failure" => exit_code == 0,
        // "no" or unset: never started again, as Docker would not.
        _ => true,
    }
}

/// Docker's form of the spec's device requests (GPUs). Empty fields stay
/// unset so the engine applies its own defaults; `count` 0 with no
/// `device_ids` would ask for nothing, so it is left out too.
fn device_requests(devices: &[DeviceRequestSpec]) -> Option<Vec<DeviceRequest>> {
    let out: Vec<DeviceRequest> = devices
        .iter()
        .map(|d| DeviceRequest {
            driver: (!d.driver.is_empty()).then(|| d.driver.clone()),
            count: (d.count != 0).then_some(d.count),
            device_ids: (!d.device_ids.is_empty()).then(|| d.device_ids.clone()),
            capabilities: (!d.capabilities.is_empty()).then(|| vec![d.capabilities.clone()]),
            options: (!d.options.is_empty()).then(|| d.options.clone().into_iter().collect()),
        })
        .collect();
    (!out.is_empty()).then_some(out)
}

/// The Docker create body for one replica of `spec`. Networks beyond the
/// first are connected after create (API 1.41 takes one at create time).
pub fn container_config(spec: &ServiceSpec, host: &str, replica: u32, state_dir: &Path) -> ContainerCreateBody {
    let hash = infra_proto::spec::spec_hash(spec);
    let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    labels.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
    labels.insert(labels::TIER.into(), spec.tier.clone());
    labels.insert(labels::SERVICE.into(), spec.name.clone());
    labels.insert(labels::REPLICA.into(), replica.to_string());
    labels.insert(labels::SPEC_HASH.into(), hash);
    labels.insert(labels::HOST.into(), host.to_owned());
    if !spec.project.is_empty() {
        labels.insert(labels::PROJECT.into(), spec.project.clone());
    }

    let env: Vec<String> = spec.environment.iter().map(|(k, v)| format!("{k}={v}")).collect();

    let mut exposed: Vec<String> = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        let proto = if p.protocol.is_empty() { "tcp" } else { &p.protocol };
        let key = format!("{}/{proto}", p.target);
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        if p.published != 0 {
            bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: (!p.host_ip.is_empty()).then(|| p.host_ip.clone()),
                    host_port: Some(p.published.to_string()),
                });
        }
    }

    let mut mounts: Vec<Mount> = spec
        .mounts
        .iter()
        .map(|m| {
            let typ = match m.kind() {
                MountKind::Bind => MountType::BIND,
                MountKind::Tmpfs => MountType::TMPFS,
                _ => MountType::VOLUME,
            };
            Mount {
                target: Some(m.target.clone()),
                source: (typ != MountType::TMPFS).then(|| m.source.clone()),
                typ: Some(typ),
                read_only: Some(m.read_only),
                ..Default::default()
            }
        })
        .collect();
    for s in &spec.secrets {
        let target = if s.target.is_empty() {
            format!("/run/secrets/{}", s.name)
        } else if s.target.starts_with('/') {
            s.target.clone()
        } else {
            format!("/run/secrets/{}", s.target)
        };
        mounts.push(Mount {
            target: Some(target),
            source: Some(
                secret_path(state_dir, &spec.name, &s.name)
                    .to_string_lossy()
                    .into_owned(),
            ),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        });
    }

    for c in &spec.configs {
        mounts.push(Mount {
            target: Some(c.target.clone()),
            source: Some(config_path(state_dir, &spec.name, c).to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(c.read_only),
            ..Default::default()
        });
    }

    let tmpfs: HashMap<String, String> = spec
        .tmpfs
        .iter()
        .map(|t| match t.split_once(':') {
            Some((path, opts)) => (path.to_owned(), opts.to_owned()),
            None => (t.clone(), String::new()),
        })
        .collect();

    let res = spec.resources.unwrap_or_default();
    let host_config = HostConfig {
        mounts: (!mounts.is_empty()).then_some(mounts),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        restart_policy: Some(restart_policy(&spec.restart)),
        readonly_rootfs: spec.read_only.then_some(true),
        security_opt: (!spec.security_opt.is_empty()).then(|| spec.security_opt.clone()),
        cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
        cap_drop: (!spec.cap_drop.is_empty()).then(|| spec.cap_drop.clone()),
        nano_cpus: (res.nano_cpus_limit > 0).then_some(res.nano_cpus_limit),
        memory: (res.memory_limit > 0).then_some(res.memory_limit),
        memory_reservation: (res.memory_reservation > 0).then_some(res.memory_reservation),
        pids_limit: (res.pids_limit > 0).then_some(res.pids_limit),
        init: spec.init.then_some(true),
        shm_size: (spec.shm_size > 0).then_some(spec.shm_size),
        tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
        sysctls: (!spec.sysctls.is_empty()).then(|| spec.sysctls.clone().into_iter().collect()),
        extra_hosts: (!spec.extra_hosts.is_empty()).then(|| spec.extra_hosts.clone()),
        network_mode: spec.networks.first().map(|n| n.name.clone()),
        device_requests: device_requests(&spec.devices),
        log_config: Some(log_config(spec.logging.as_ref())),
        ..Default::default()
    };

    let networking_config = spec.networks.first().map(|n| {
        let mut aliases = vec![spec.name.clone()];
        aliases.extend(n.aliases.iter().cloned());
        NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                n.name.clone(),
                EndpointSettings {
                    aliases: Some(aliases),
                    ..Default::default()
                },
            )])),
        }
    });

    let healthcheck = spec
        .healthcheck
        .as_ref()
        .filter(|h| !h.test.is_empty())
        .map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: nanos(h.interval.as_ref()),
            timeout: nanos(h.timeout.as_ref()),
            start_period: nanos(h.start_period.as_ref()),
            start_interval: nanos(h.start_interval.as_ref()),
            retries: (h.retries > 0).then_some(i64::from(h.retries)),
        });

    ContainerCreateBody {
        image: Some(infra_proto::spec::image_ref(spec)),
        cmd: spec.command.as_ref().map(|a| a.args.clone()),
        entrypoint: spec.entrypoint.as_ref().map(|a| a.args.clone()),
        env: (!env.is_empty()).then_some(env),
        labels: Some(labels),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        healthcheck,
        user: (!spec.user.is_empty()).then(|| spec.user.clone()),
        working_dir: (!spec.working_dir.is_empty()).then(|| spec.working_dir.clone()),
        stop_signal: (!spec.stop_signal.is_empty()).then(|| spec.stop_signal.clone()),
        stop_timeout: spec.stop_grace_period.as_ref().map(|d| d.seconds).filter(|s| *s > 0),
        hostname: (!spec.hostname.is_empty()).then(|| spec.hostname.clone()),
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use infra_proto::bus::v1::{HealthcheckSpec, MountSpec, NetworkSpec, PortSpec, SecretMount};

    use infra_proto::spec::spec_hash;

    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "mng-pg".into(),
            tier: "data".into(),
            image: "postgres:17".into(),
            environment: [("B".to_string(), "2".to_string()), ("A".to_string(), "1".to_string())].into(),
            replicas: 1,
            restart: "unless-stopped".into(),
            ..Default::default()
        }
    }

    #[test]
    fn spec_hash_ignores_replicas_dependencies_and_source() {
        let a = spec();
        let mut b = a.clone();
        b.replicas = 3;
        b.source_line = 42;
        b.depends_on.push(Default::default());
        assert_eq!(spec_hash(&a), spec_hash(&b));
        b.image = "postgres:18".into();
        assert_ne!(spec_hash(&a), spec_hash(&b));
    }

    #[test]
    fn spec_hash_is_stable_whatever_the_map_insertion_order() {
        let a = spec();
        let mut b = spec();
        b.environment = [("A".to_string(), "1".to_string()), ("B".to_string(), "2".to_string())].into();
        assert_eq!(spec_hash(&a), spec_hash(&b));
    }

    #[test]
    fn container_config_carries_ownership_labels_ports_mounts_secrets_and_health() {
        let mut s = spec();
        s.ports.push(PortSpec {
            host_ip: "127.0.0.1".into(),
            published: 8080,
            target: 80,
            protocol: String::new(),
        });
        s.mounts.push(MountSpec {
            kind: MountKind::Volume as i32,
            source: "infra_pg".into(),
            target: "/data".into(),
            read_only: false,
        });
        s.networks.push(NetworkSpec {
            name: "infra_net".into(),
            aliases: vec!["db".into()],
        });
        s.secrets.push(SecretMount {
            name: "pg_password".into(),
            ..Default::default()
        });
        s.healthcheck = Some(HealthcheckSpec {
            test: vec!["CMD-SHELL".into(), "pg_isready".into()],
            interval: Some(prost_types::Duration { seconds: 2, nanos: 0 }),
            retries: 3,
            ..Default::default()
        });
        let c = container_config(&s, "h1", 2, Path::new("/state"));
        let labels = c.labels.unwrap();
        assert_eq!(labels[labels::SERVICE], "mng-pg");
        assert_eq!(labels[labels::REPLICA], "2");
        assert_eq!(labels[labels::SPEC_HASH], spec_hash(&s));
        assert_eq!(c.env.unwrap(), vec!["A=1", "B=2"]);
        let hc = c.host_config.unwrap();
        let b = hc.port_bindings.unwrap();
        assert_eq!(b["80/tcp"].as_ref().unwrap()[0].host_port.as_deref(), Some("8080"));
        let mounts = hc.mounts.unwrap();
        assert_eq!(mounts[1].target.as_deref(), Some("/run/secrets/pg_password"));
        assert_eq!(mounts[1].source.as_deref(), Some("/state/secrets/mng-pg/pg_password"));
        assert_eq!(mounts[1].read_only, Some(true));
        assert_eq!(hc.network_mode.as_deref(), Some("infra_net"));
        let aliases = c.networking_config.unwrap().endpoints_config.unwrap()["infra_net"]
            .aliases
            .clone()
            .unwrap();
        assert_eq!(aliases, vec!["mng-pg", "db"]);
        assert_eq!(c.healthcheck.unwrap().interval, Some(2_000_000_000));
    }

    #[test]
    fn a_gpu_request_becomes_a_docker_device_request_and_none_leaves_it_unset() {
        let mut s = spec();
        let hc = container_config(&s, "h1", 1, Path::new("/state")).host_config.unwrap();
        assert_eq!(hc.device_requests, None);

        s.devices.push(DeviceRequestSpec {
            driver: "nvidia".into(),
            count: -1,
            capabilities: vec!["gpu".into()],
            ..Default::default()
        });
        s.devices.push(DeviceRequestSpec {
            device_ids: vec!["GPU-1".into()],
            capabilities: vec!["gpu".into(), "utility".into()],
            ..Default::default()
        });
        let hc = container_config(&s, "h1", 1, Path::new("/state")).host_config.unwrap();
        let reqs = hc.device_requests.unwrap();
        assert_eq!(
            reqs[0],
            DeviceRequest {
                driver: Some("nvidia".into()),
                count: Some(-1),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..Default::default()
            }
        );
        assert_eq!(reqs[1].driver, None);
        assert_eq!(reqs[1].count, None);
        assert_eq!(reqs[1].device_ids, Some(vec!["GPU-1".to_string()]));
        // One AND-set of capabilities, as Compose sends it.
        assert_eq!(
            reqs[1].capabilities,
            Some(vec![vec!["gpu".to_string(), "utility".to_string()]])
        );
    }

    #[test]
    fn exited_containers_are_started_again_only_where_the_restart_policy_says_so() {
        let mut s = spec();
        s.restart = "no".into();
        assert!(exited_for_good(&s, 0));
        assert!(exited_for_good(&s, 1));
        s.restart = "on-failure:3".into();
        assert!(exited_for_good(&s, 0));
        assert!(!exited_for_good(&s, 1));
        s.restart = "unless-stopped".into();
        assert!(!exited_for_good(&s, 0));
    }
}
