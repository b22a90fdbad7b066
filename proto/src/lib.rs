//! Protobuf contracts: the only thing that crosses process boundaries.
//!
//! - [`bus::v1`]: desired/observed state, events and heartbeats on NATS.
//! - [`operator::v1`]: the gRPC service each tier operator serves.
//! - [`coordinator::v1`]: the coordinator's gRPC API, driven with grpcurl.
//!
//! Convert to domain types at the edge; do not pass these deep into logic.

#![allow(clippy::doc_markdown, clippy::large_enum_variant)]

pub mod codec;

/// Bus messages (`infra.bus.v1`).
pub mod bus {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("infra.bus.v1");
    }
}

/// Operator gRPC service (`infra.operator.v1`).
pub mod operator {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("infra.operator.v1");
    }
}

/// Coordinator gRPC service (`infra.coordinator.v1`).
pub mod coordinator {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("infra.coordinator.v1");
    }
}

/// Encoded `FileDescriptorSet` of every `.proto` here (with imports), for
/// gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/infra_descriptor.bin"));

/// Converts a [`std::time::SystemTime`] into a protobuf timestamp.
pub fn timestamp(t: std::time::SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// The current time as a protobuf timestamp.
pub fn now() -> prost_types::Timestamp {
    timestamp(std::time::SystemTime::now())
}

/// Image references as Docker reads them.
pub mod image {
    use sha2::{Digest, Sha256};

    /// Docker Hub, as references without a registry host mean it.
    pub const DOCKER_HUB: &str = "docker.io";

    /// The registry host of `image`: its first path component when that
    /// looks like a host (has a `.` or a `:`, or is `localhost`), else
    /// Docker Hub.
    pub fn registry(image: &str) -> &str {
        match image.split_once('/') {
            Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => {
                if first == "index.docker.io" {
                    DOCKER_HUB
                } else {
                    first
                }
            }
            _ => DOCKER_HUB,
        }
    }

    /// `image` without its tag and digest: `reg:5000/team/app:1@sha256:x`
    /// is `reg:5000/team/app`.
    pub fn repository(image: &str) -> &str {
        let name = image.split_once('@').map_or(image, |(n, _)| n);
        match name.rfind(':') {
            Some(i) if !name[i..].contains('/') => &name[..i],
            _ => name,
        }
    }

    /// Whether `image` names a digest itself (`...@sha256:...`): nothing to
    /// resolve.
    pub fn is_pinned(image: &str) -> bool {
        image.contains('@')
    }

    /// The secrets-bucket key of the pull credentials for `registry`.
    pub fn auth_key(registry: &str) -> String {
        let digest = Sha256::digest(registry.as_bytes());
        format!("registry_{}", hex::encode(&digest[..8]))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn registry_and_repository_as_docker_reads_them() {
            for (image, reg, repo) in [
                ("nginx:1.28.0-alpine", "docker.io", "nginx"),
                ("prom/pushgateway:v1.11.2", "docker.io", "prom/pushgateway"),
                ("quay.io/coreos/etcd:v3.6.7", "quay.io", "quay.io/coreos/etcd"),
                (
                    "reg.internal:5000/mirror/app",
                    "reg.internal:5000",
                    "reg.internal:5000/mirror/app",
                ),
                ("localhost/app:2", "localhost", "localhost/app"),
                ("reg:5000/app:1@sha256:ab", "reg:5000", "reg:5000/app"),
                (
                    "index.docker.io/library/redis:7",
                    "docker.io",
                    "index.docker.io/library/redis",
                ),
            ] {
                assert_eq!(registry(image), reg, "{image}");
                assert_eq!(repository(image), repo, "{image}");
            }
            assert!(is_pinned("a/b@sha256:00"));
            assert_ne!(auth_key("a:5000"), auth_key("b:5000"));
        }
    }
}

/// The spec hash: what decides whether a container must be made again.
pub mod spec {
    use prost::Message;
    use sha2::{Digest, Sha256};

    use crate::bus::v1::ServiceSpec;

    /// Hash of everything in a spec that the container is made from. The
    /// replica count, the dependencies and the source location are left
    /// out: changing them must not recreate running containers. The
    /// coordinator writes specs and compares hashes; the operator labels
    /// containers with it (`io.infra.spec-hash`); both take it from here.
    pub fn spec_hash(spec: &ServiceSpec) -> String {
        let mut s = spec.clone();
        s.replicas = 0;
        s.depends_on.clear();
        s.source_file.clear();
        s.source_line = 0;
        s.pull_policy.clear();
        s.image_resolved_at = None;
        s.registry_auth_key.clear();
        let digest = Sha256::digest(s.encode_to_vec());
        hex::encode(&digest[..8])
    }

    /// Whether two specs make the same containers and carry the same
    /// pulling instructions (policy, credentials key, pin time): a desired
    /// state that differs in these only is written again, recreating
    /// nothing.
    pub fn same_desired(a: &ServiceSpec, b: &ServiceSpec) -> bool {
        spec_hash(a) == spec_hash(b)
            && a.pull_policy == b.pull_policy
            && a.registry_auth_key == b.registry_auth_key
            && a.image_resolved_at == b.image_resolved_at
    }

    /// The bucket key of a catalog file's content: `config_` and the first
    /// 32 hex digits of its SHA-256, so equal files share one entry and a
    /// changed file has a new key.
    pub fn config_key(sha256_hex: &str) -> String {
        format!("config_{}", &sha256_hex[..sha256_hex.len().min(32)])
    }

    /// Every key of the secrets bucket a spec needs on its host: its
    /// secrets', its catalog files' and its registry credentials'.
    pub fn content_keys(spec: &ServiceSpec) -> impl Iterator<Item = &str> {
        spec.secrets
            .iter()
            .map(|s| s.key.as_str())
            .chain(spec.configs.iter().flat_map(|c| c.files.iter().map(|f| f.key.as_str())))
            .chain((!spec.registry_auth_key.is_empty()).then_some(spec.registry_auth_key.as_str()))
    }

    /// The image reference a replica is made from: `<repository>@<digest>`
    /// when the coordinator pinned the spec to a digest, else `image`.
    pub fn image_ref(spec: &ServiceSpec) -> String {
        if spec.image_digest.is_empty() {
            spec.image.clone()
        } else {
            format!("{}@{}", crate::image::repository(&spec.image), spec.image_digest)
        }
    }

    /// A name for one config mount's content on a host, the same for the
    /// same target, files and owner: where the operator materialises it,
    /// so an old container keeps its files while a new one gets the new.
    pub fn config_mount_id(mount: &crate::bus::v1::ConfigMount) -> String {
        let mut m = mount.clone();
        m.source.clear();
        let digest = Sha256::digest(m.encode_to_vec());
        hex::encode(&digest[..8])
    }

    /// The part of a spec that other hosts may read (the bus's directory):
    /// what reaching the service needs (name, tier, image, ports, networks,
    /// labels, replicas, hostname, project) and nothing that may carry a
    /// credential (environment, command, entrypoint, health check, mounts,
    /// secrets, ...).
    pub fn public_part(spec: &ServiceSpec) -> ServiceSpec {
        ServiceSpec {
            name: spec.name.clone(),
            tier: spec.tier.clone(),
            image: spec.image.clone(),
            ports: spec.ports.clone(),
            networks: spec.networks.clone(),
            labels: spec.labels.clone(),
            replicas: spec.replicas,
            hostname: spec.hostname.clone(),
            project: spec.project.clone(),
            ..Default::default()
        }
    }
}

/// Cross-host placeholders in a spec. The coordinator writes them so that
/// every host of a service gets the same spec (and spec hash); the operator
/// on each host puts in its own values before it makes the container.
pub mod reach {
    /// A port's `host_ip`: publish it on this host's private address (the
    /// operator's `addr` fact).
    pub const PRIVATE_ADDR: &str = "@addr";

    /// The environment variable every container gets with the name of the
    /// host it runs on (as Nomad's `NOMAD_HOST_*`): what a member of a
    /// cluster announces when its peers are on other hosts.
    pub const HOST_NAME_ENV: &str = "INFRA_HOST_NAME";

    /// The environment variable a container gets with its host's private
    /// address (the operator's `addr` fact) when it publishes ports there
    /// ([`PRIVATE_ADDR`]), that is when other hosts reach it at that
    /// address: a Valkey node's `--cluster-announce-ip`, a Galera node's
    /// `wsrep_node_address`. Unset otherwise (one host: the container's
    /// own address is the one its peers reach). A service's own value of
    /// either wins.
    pub const HOST_ADDR_ENV: &str = "INFRA_HOST_ADDR";

    /// Whether a port's `host_ip` is [`PRIVATE_ADDR`].
    pub fn is_private_addr(host_ip: &str) -> bool {
        host_ip == PRIVATE_ADDR
    }

    /// An `extra_hosts` entry naming `name` at the private address of
    /// `host`, another host: written `name:@host:<host>`.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct HostRef {
        /// The name a container resolves.
        pub name: String,
        /// The host whose private address it resolves to.
        pub host: String,
    }

    const MARK: &str = ":@host:";

    impl HostRef {
        /// `name` at `host`'s private address.
        pub fn new(name: impl Into<String>, host: impl Into<String>) -> Self {
            Self {
                name: name.into(),
                host: host.into(),
            }
        }

        /// The `extra_hosts` entry.
        pub fn entry(&self) -> String {
            format!("{}{MARK}{}", self.name, self.host)
        }

        /// The reference in an `extra_hosts` entry, if it is one.
        pub fn parse(entry: &str) -> Option<Self> {
            entry.split_once(MARK).map(|(n, h)| Self::new(n, h))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_host_reference_round_trips_and_a_plain_entry_is_none() {
            let r = HostRef::new("etcd-1", "h1");
            assert_eq!(r.entry(), "etcd-1:@host:h1");
            assert_eq!(HostRef::parse(&r.entry()), Some(r));
            assert_eq!(HostRef::parse("db:10.0.0.5"), None);
            assert!(is_private_addr("@addr") && !is_private_addr("0.0.0.0"));
        }
    }
}

/// The nine tiers, in the order of their catalog folders (`01-gateway` ...
/// `10-communication`; the seeds' `03-security` is auth's), each with its
/// operator's default gRPC port. Every process takes the list from here.
pub mod tiers {
    /// One tier.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct TierInfo {
        /// The lowercase name used in folders, subjects and command lines.
        pub name: &'static str,
        /// The operator's default gRPC port (its metrics default to the
        /// port 9460 + the same offset).
        pub grpc_port: u16,
    }

    /// Every tier, in catalog folder order.
    pub const ALL: [TierInfo; 9] = [
        TierInfo {
            name: "gateway",
            grpc_port: 50061,
        },
        TierInfo {
            name: "auth",
            grpc_port: 50062,
        },
        TierInfo {
            name: "data",
            grpc_port: 50063,
        },
        TierInfo {
            name: "messaging",
            grpc_port: 50064,
        },
        TierInfo {
            name: "observability",
            grpc_port: 50065,
        },
        TierInfo {
            name: "workflow",
            grpc_port: 50067,
        },
        TierInfo {
            name: "ai",
            grpc_port: 50066,
        },
        TierInfo {
            name: "tooling",
            grpc_port: 50068,
        },
        TierInfo {
            name: "communication",
            grpc_port: 50069,
        },
    ];

    /// The names, in the same order.
    pub const NAMES: [&str; 9] = [
        ALL[0].name,
        ALL[1].name,
        ALL[2].name,
        ALL[3].name,
        ALL[4].name,
        ALL[5].name,
        ALL[6].name,
        ALL[7].name,
        ALL[8].name,
    ];

    /// The tier named `name`.
    pub fn by_name(name: &str) -> Option<TierInfo> {
        ALL.iter().copied().find(|t| t.name == name)
    }
}
