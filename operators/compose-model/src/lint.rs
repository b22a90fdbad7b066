//! A lint for the practices the seeds ask for (seed 001, section 1): no
//! static IPs, no host ports but on the edge, secrets as Docker secrets,
//! health checks behind `service_healthy`, resource limits, pinned images,
//! no redundant init containers, state in volumes.
//!
//! Pure: it reads a loaded [`Catalog`] and nothing else (no Docker, no
//! network, no file). Findings are located by file and line: the exact
//! key's line where the loader found it ([`Catalog::key_line`]), else the
//! service's line.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::{Catalog, DependencyCondition, MountKind, RestartPolicy, Service, Tier};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// Breaks a practice the platform relies on; `infractl lint` exits 1.
    Error,
    /// Should be fixed.
    Warning,
    /// For information.
    Info,
}

impl Severity {
    /// `error`, `warning` or `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }

    fn rank(self) -> u8 {
        match self {
            Severity::Error => 2,
            Severity::Warning => 1,
            Severity::Info => 0,
        }
    }

    /// Whether this is `min` or worse (`Error` is at least `Warning`).
    pub fn is_at_least(self, min: Severity) -> bool {
        self.rank() >= min.rank()
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A severity name that is none of `error`, `warning`, `info`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown severity {0:?}; expected error, warning or info")]
pub struct ParseSeverityError(pub String);

impl FromStr for Severity {
    type Err = ParseSeverityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" | "errors" => Ok(Severity::Error),
            "warning" | "warnings" | "warn" => Ok(Severity::Warning),
            "info" => Ok(Severity::Info),
            _ => Err(ParseSeverityError(s.to_string())),
        }
    }
}

/// A lint rule. Its [`Rule::id`] is stable (kebab-case) and is what people
/// filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// A network attachment with `ipv4_address` / `ipv6_address`.
    StaticIp,
    /// `ports` on a service that is not an edge service.
    HostPort,
    /// A password, token, secret or key as a literal environment value.
    PlaintextSecret,
    /// `condition: service_healthy` on a service without a health check.
    HealthyWithoutHealthcheck,
    /// No `deploy.resources.limits`.
    NoResourceLimits,
    /// An image with the `latest` tag or no tag, and no digest.
    UnpinnedImage,
    /// A one-shot container that runs SQL the database image would run itself.
    RedundantInitContainer,
    /// A known stateful store with no named volume or writable bind mount.
    StatefulWithoutVolume,
    /// A bind mount of a host path outside the catalog: it does not travel
    /// with the catalog and must exist on every host the service runs on.
    HostPath,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 9] = [
        Rule::StaticIp,
        Rule::HostPort,
        Rule::PlaintextSecret,
        Rule::HealthyWithoutHealthcheck,
        Rule::NoResourceLimits,
        Rule::UnpinnedImage,
        Rule::RedundantInitContainer,
        Rule::StatefulWithoutVolume,
        Rule::HostPath,
    ];

    /// The stable id, e.g. `static-ip`.
    pub fn id(self) -> &'static str {
        match self {
            Rule::StaticIp => "static-ip",
            Rule::HostPort => "host-port",
            Rule::PlaintextSecret => "plaintext-secret",
            Rule::HealthyWithoutHealthcheck => "healthy-without-healthcheck",
            Rule::NoResourceLimits => "no-resource-limits",
            Rule::UnpinnedImage => "unpinned-image",
            Rule::RedundantInitContainer => "redundant-init-container",
            Rule::StatefulWithoutVolume => "stateful-without-volume",
            Rule::HostPath => "host-path",
        }
    }

    /// How bad breaking it is.
    pub fn severity(self) -> Severity {
        match self {
            Rule::NoResourceLimits | Rule::RedundantInitContainer => Severity::Warning,
            Rule::HostPath => Severity::Info,
            _ => Severity::Error,
        }
    }

    /// One line on why the rule exists.
    pub fn why(self) -> &'static str {
        match self {
            Rule::StaticIp => {
                "static IPs conflict, block scaling and test environments; rely on Docker DNS names (seed 001, 1.1)"
            }
            Rule::HostPort => {
                "only the edge (tier gateway, or x-infra-edge: true) publishes host ports; the rest is reached on the shared network"
            }
            Rule::PlaintextSecret => {
                "credentials belong in Docker secrets (*_FILE=/run/secrets/...), not in Compose files or the environment"
            }
            Rule::HealthyWithoutHealthcheck => {
                "service_healthy waits for a health check; without one bring-up waits forever"
            }
            Rule::NoResourceLimits => "without deploy.resources.limits one service can starve the host",
            Rule::UnpinnedImage => {
                "latest or no tag changes under you; pin a version (or a digest) to deploy reproducibly"
            }
            Rule::RedundantInitContainer => {
                "the database image runs /docker-entrypoint-initdb.d itself on first init; an init container adds a race (seed 001, 1.2)"
            }
            Rule::StatefulWithoutVolume => {
                "a stateful store without a volume loses its data when its container is recreated"
            }
            Rule::HostPath => {
                "files of the catalog reach every host through the bus; a host path is the host's own and must be there \
                 wherever the service is placed"
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// One finding, located by file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The rule broken.
    pub rule: Rule,
    /// The rule's severity.
    pub severity: Severity,
    /// The file that defines the service.
    pub file: PathBuf,
    /// 1-based line of the key at fault (the service's line when the loader
    /// could not place the key).
    pub line: usize,
    /// The service at fault.
    pub service: Option<String>,
    /// What is wrong, and how to fix it.
    pub message: String,
    /// The rule's one-line reason.
    pub why: &'static str,
}

/// `file:line: severity[rule] service: message (why)`.
impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}[{}] ",
            self.file.display(),
            self.line,
            self.severity,
            self.rule
        )?;
        if let Some(s) = &self.service {
            write!(f, "{s}: ")?;
        }
        write!(f, "{} ({})", self.message, self.why)
    }
}

/// Lints every service of the catalog (in every profile). Findings are
/// ordered by file, then line, then rule.
pub fn lint(catalog: &Catalog) -> Vec<Finding> {
    let mut out = Vec::new();
    for svc in catalog.services.values() {
        let mut cx = Cx {
            catalog,
            svc,
            out: &mut out,
        };
        cx.static_ip();
        cx.host_port();
        cx.plaintext_secret();
        cx.healthy_without_healthcheck();
        cx.no_resource_limits();
        cx.unpinned_image();
        cx.redundant_init_container();
        cx.stateful_without_volume();
        cx.host_path();
    }
    out.sort_by(|a, b| (&a.file, a.line, a.rule, &a.service).cmp(&(&b.file, b.line, b.rule, &b.service)));
    out
}

struct Cx<'a> {
    catalog: &'a Catalog,
    svc: &'a Service,
    out: &'a mut Vec<Finding>,
}

impl Cx<'_> {
    /// The line of the first of `keys` the loader found, else the service's.
    fn line(&self, keys: &[&str]) -> usize {
        keys.iter()
            .find_map(|k| self.catalog.key_line(&self.svc.name, k))
            .unwrap_or(self.svc.line)
    }

    fn push(&mut self, rule: Rule, line: usize, message: String) {
        self.out.push(Finding {
            rule,
            severity: rule.severity(),
            file: self.svc.file.clone(),
            line,
            service: Some(self.svc.name.clone()),
            message,
            why: rule.why(),
        });
    }

    fn static_ip(&mut self) {
        for n in &self.svc.networks {
            for (key, addr) in [("ipv4_address", &n.ipv4_address), ("ipv6_address", &n.ipv6_address)] {
                let Some(addr) = addr else { continue };
                let line = self.line(&[
                    &format!("networks.{}.{key}", n.name),
                    &format!("networks.{}", n.name),
                    "networks",
                ]);
                self.push(
                    Rule::StaticIp,
                    line,
                    format!(
                        "network {:?} sets {key} {addr}; remove it and reach the service as {:?}{}",
                        n.name,
                        self.svc.name,
                        if n.aliases.is_empty() {
                            String::new()
                        } else {
                            format!(" or by its aliases ({})", n.aliases.join(", "))
                        }
                    ),
                );
            }
        }
    }

    fn host_port(&mut self) {
        if self.svc.ports.is_empty() || is_edge(self.svc) {
            return;
        }
        let ports: Vec<String> = self
            .svc
            .ports
            .iter()
            .map(|p| {
                let host = p.published.map_or("(ephemeral)".to_string(), |h| h.to_string());
                let ip = p.host_ip.as_deref().map(|i| format!("{i}:")).unwrap_or_default();
                let proto = format!("{:?}", p.protocol).to_lowercase();
                format!("{ip}{host}->{}/{proto}", p.target)
            })
            .collect();
        let line = self.line(&["ports"]);
        self.push(
            Rule::HostPort,
            line,
            format!(
                "publishes host ports {} but is not an edge service; drop `ports` (use `expose`) and route through the gateway, or mark it `x-infra-edge: true`",
                ports.join(", ")
            ),
        );
    }

    fn plaintext_secret(&mut self) {
        for (key, value) in &self.svc.environment {
            if !looks_secret(key) || !literal_credential(value) {
                continue;
            }
            let line = self.line(&[&format!("environment.{key}"), "env_file", "environment"]);
            self.push(
                Rule::PlaintextSecret,
                line,
                format!(
                    "environment {key} has a literal value; grant a Docker secret and use {key}_FILE=/run/secrets/<name> (or read the file in the command)"
                ),
            );
        }
    }

    fn healthy_without_healthcheck(&mut self) {
        for dep in &self.svc.depends_on {
            if dep.condition != DependencyCondition::ServiceHealthy {
                continue;
            }
            let Some(target) = self.catalog.services.get(&dep.service) else {
                continue;
            };
            if target.has_healthcheck() {
                continue;
            }
            let line = self.line(&[
                &format!("depends_on.{}.condition", dep.service),
                &format!("depends_on.{}", dep.service),
                "depends_on",
            ]);
            self.push(
                Rule::HealthyWithoutHealthcheck,
                line,
                format!(
                    "waits for {:?} to be healthy, but {:?} has no health check (defined in {}:{}); add one there or use service_started",
                    dep.service,
                    dep.service,
                    target.file.display(),
                    target.line
                ),
            );
        }
    }

    fn no_resource_limits(&mut self) {
        let limited = self.svc.deploy.as_ref().is_some_and(|d| {
            let l = &d.resources.limits;
            l.cpus.is_some() || l.memory.is_some() || l.pids.is_some()
        });
        if limited {
            return;
        }
        let line = self.line(&["deploy.resources", "deploy"]);
        self.push(
            Rule::NoResourceLimits,
            line,
            "has no deploy.resources.limits; set cpus and memory".to_string(),
        );
    }

    fn unpinned_image(&mut self) {
        let Some(image) = &self.svc.image else { return };
        let problem = match image_tag(image) {
            ImageRef::Digest => return,
            ImageRef::Tag(t) if t != "latest" => return,
            ImageRef::Tag(_) => "uses the `latest` tag",
            ImageRef::NoTag => "has no tag (so `latest`)",
        };
        let line = self.line(&["image"]);
        self.push(
            Rule::UnpinnedImage,
            line,
            format!(
                "image {image:?} {problem}; pin a version such as {}:<version>",
                image_repo(image)
            ),
        );
    }

    /// The heuristic: the service is one-shot (`restart` unset or `"no"`);
    /// its `entrypoint` + `command` runs a database client (`psql`,
    /// `mysql`, `mariadb`, `mongo`, `mongosh`) with a script file (`.sql`,
    /// `.sql.gz`, or `.js` for Mongo) or mounts such files; and it depends
    /// on (or names) a service whose image is one whose entrypoint runs
    /// `/docker-entrypoint-initdb.d` (`postgres`, `postgis`, `mysql`,
    /// `mariadb`, `mongo`).
    fn redundant_init_container(&mut self) {
        if !is_one_shot(self.svc) {
            return;
        }
        let words = command_words(self.svc);
        let Some(client) = words.iter().find(|w| DB_CLIENTS.contains(&w.as_str())) else {
            return;
        };
        let script_ext = |w: &str| w.ends_with(".sql") || w.ends_with(".sql.gz") || w.ends_with(".js");
        let runs_files = words.iter().any(|w| script_ext(w))
            || self.svc.volumes.iter().any(|m| {
                m.kind != MountKind::Tmpfs
                    && (script_ext(&m.target)
                        || m.source.as_deref().is_some_and(script_ext)
                        || m.target.contains("init"))
            });
        if !runs_files {
            return;
        }
        let mut targets: Vec<&str> = self.svc.depends_on.iter().map(|d| d.service.as_str()).collect();
        for w in &words {
            if w != &self.svc.name && self.catalog.services.contains_key(w) && !targets.contains(&w.as_str()) {
                targets.push(w);
            }
        }
        let Some(db) = targets.iter().filter_map(|t| self.catalog.services.get(*t)).find(|t| {
            t.image
                .as_deref()
                .is_some_and(|i| INITDB_IMAGES.contains(&image_name(i)))
        }) else {
            return;
        };
        let already = db
            .volumes
            .iter()
            .any(|m| m.target.starts_with("/docker-entrypoint-initdb.d"));
        let line = self.line(&["command", "entrypoint"]);
        self.push(
            Rule::RedundantInitContainer,
            line,
            format!(
                "one-shot container runs {client} with script files against {:?}; {}, then remove this service",
                db.name,
                if already {
                    format!(
                        "{:?} already mounts /docker-entrypoint-initdb.d: put the files there",
                        db.name
                    )
                } else {
                    format!("mount the files into {:?} at /docker-entrypoint-initdb.d", db.name)
                }
            ),
        );
    }

    /// Known stateful images (by repository name, see [`STATEFUL_IMAGES`])
    /// need a named volume or a writable bind mount; one-shot jobs that only
    /// use the image for its client (another service waits for them to
    /// complete, or their command runs a client) are skipped.
    fn host_path(&mut self) {
        for (i, m) in self.svc.volumes.iter().enumerate() {
            let Some(source) = m.source.as_deref().filter(|_| m.kind == MountKind::Bind) else {
                continue;
            };
            if std::path::Path::new(source).starts_with(&self.catalog.root) {
                continue;
            }
            let line = self.line(&[&format!("volumes[{i}]"), "volumes"]);
            self.push(
                Rule::HostPath,
                line,
                format!(
                    "{source} is a path of the host, not of the catalog: it stays on each host (mounted at {})",
                    m.target
                ),
            );
        }
    }

    fn stateful_without_volume(&mut self) {
        let Some(image) = &self.svc.image else { return };
        let name = image_name(image);
        if !STATEFUL_IMAGES.contains(&name) {
            return;
        }
        if is_one_shot(self.svc) {
            let awaited = self.catalog.services.values().any(|s| {
                s.depends_on.iter().any(|d| {
                    d.service == self.svc.name && d.condition == DependencyCondition::ServiceCompletedSuccessfully
                })
            });
            let client = command_words(self.svc)
                .iter()
                .any(|w| DB_CLIENTS.contains(&w.as_str()) || OTHER_CLIENTS.contains(&w.as_str()));
            if awaited || client {
                return;
            }
        }
        let kept = self.svc.volumes.iter().any(|m| match m.kind {
            MountKind::Volume => m.source.is_some() && !m.read_only,
            MountKind::Bind => !m.read_only,
            MountKind::Tmpfs => false,
        });
        if kept {
            return;
        }
        let line = self.line(&["volumes", "image"]);
        self.push(
            Rule::StatefulWithoutVolume,
            line,
            format!("image {image:?} keeps state, but no named volume or writable bind mount holds its data directory"),
        );
    }
}

const DB_CLIENTS: &[&str] = &["psql", "mysql", "mariadb", "mongo", "mongosh"];
const OTHER_CLIENTS: &[&str] = &[
    "pg_dump",
    "pg_restore",
    "pg_isready",
    "mysqldump",
    "redis-cli",
    "valkey-cli",
    "rabbitmqadmin",
    "mc",
    "curl",
];

/// Images whose entrypoint runs `/docker-entrypoint-initdb.d`.
const INITDB_IMAGES: &[&str] = &["postgres", "postgis", "mysql", "mariadb", "mongo"];

/// Repository names (last path component, no tag) of stateful stores.
const STATEFUL_IMAGES: &[&str] = &[
    "postgres",
    "postgis",
    "timescaledb",
    "mysql",
    "mariadb",
    "mongo",
    "mongodb-community-server",
    "redis",
    "redis-stack",
    "redis-stack-server",
    "valkey",
    "keydb",
    "rabbitmq",
    "kafka",
    "cp-kafka",
    "cp-server",
    "zookeeper",
    "cp-zookeeper",
    "elasticsearch",
    "opensearch",
    "minio",
    "qdrant",
    "couchdb",
    "influxdb",
    "etcd",
    "prometheus",
    "loki",
    "tempo",
    "mimir",
    "grafana",
    "vault",
    "openbao",
    "clickhouse-server",
    "cassandra",
    "neo4j",
    "weaviate",
    "milvus",
    "chromadb",
    "chroma",
];

fn is_edge(svc: &Service) -> bool {
    if svc.tier == Tier::Gateway {
        return true;
    }
    let truthy = |s: &str| matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "yes" | "1");
    svc.labels.get("x-infra-edge").is_some_and(|v| truthy(v))
        || svc.extensions.get("x-infra-edge").is_some_and(|v| match v {
            serde_json::Value::Bool(b) => *b,
            serde_json::Value::String(s) => truthy(s),
            _ => false,
        })
}

/// Whether an environment key names a credential: its last word (words
/// are split on `_`) is PASSWORD, PASSWD, SECRET or TOKEN, or it ends with
/// API_KEY, APIKEY, PRIVATE_KEY or SECRET_KEY. Not credentials: `*_FILE`
/// pointers to a secret file, `*_CMD` / `*_COMMAND` commands that read one
/// (Airflow), keys where such a word is not the last (`TOKEN_SERVICE_URL`,
/// `PASSWORD_MIN_LENGTH`), and etcd's `*_CLUSTER_TOKEN`, a cluster
/// identifier.
fn looks_secret(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    let words: Vec<&str> = k.split('_').filter(|w| !w.is_empty()).collect();
    let Some(last) = words.last() else { return false };
    if ["FILE", "CMD", "COMMAND"].contains(last) || k.ends_with("CLUSTER_TOKEN") {
        return false;
    }
    ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "APIKEY"].contains(last)
        || ["API_KEY", "PRIVATE_KEY", "SECRET_KEY"].iter().any(|s| k.ends_with(s))
}

/// Whether an environment value is a credential rather than a flag or a
/// reference to a secret file.
fn literal_credential(value: &str) -> bool {
    let v = value.trim();
    !v.is_empty()
        && !v.contains("/run/secrets/")
        && !matches!(
            v.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off"
        )
}

fn is_one_shot(svc: &Service) -> bool {
    matches!(svc.restart, None | Some(RestartPolicy::No))
}

/// Words of `entrypoint` + `command`, split on blanks and shell
/// punctuation, program paths reduced to their file name.
fn command_words(svc: &Service) -> Vec<String> {
    let mut out = Vec::new();
    for part in svc.entrypoint.iter().chain(svc.command.iter()).flatten() {
        for w in part.split(|c: char| c.is_whitespace() || ";|&()<>`'\"$=,".contains(c)) {
            if w.is_empty() {
                continue;
            }
            out.push(w.to_string());
            if let Some((_, base)) = w.rsplit_once('/')
                && !base.is_empty()
                && !base.contains('.')
            {
                out.push(base.to_string());
            }
        }
    }
    out
}

enum ImageRef<'a> {
    Digest,
    Tag(&'a str),
    NoTag,
}

fn image_tag(image: &str) -> ImageRef<'_> {
    if image.contains('@') {
        return ImageRef::Digest;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if !tag.is_empty() => ImageRef::Tag(tag),
        _ => ImageRef::NoTag,
    }
}

/// The image without tag or digest (`docker.io/library/postgres`).
fn image_repo(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    match no_digest[slash..].find(':') {
        Some(i) => &no_digest[..slash + i],
        None => no_digest,
    }
}

/// The repository's last component (`postgres` for `docker.io/library/postgres:17`).
fn image_name(image: &str) -> &str {
    let repo = image_repo(image);
    repo.rsplit('/').next().unwrap_or(repo)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn image_names_drop_registry_path_tag_and_digest() {
        assert_eq!(image_name("docker.io/library/postgres:17.7"), "postgres");
        assert_eq!(image_name("localhost:5000/valkey/valkey"), "valkey");
        assert_eq!(image_name("bitnami/kafka@sha256:abc"), "kafka");
        assert_eq!(
            image_repo("localhost:5000/valkey/valkey:8"),
            "localhost:5000/valkey/valkey"
        );
    }

    #[test]
    fn a_registry_port_is_not_a_tag() {
        assert!(matches!(image_tag("localhost:5000/postgres"), ImageRef::NoTag));
        assert!(matches!(image_tag("localhost:5000/postgres:17"), ImageRef::Tag("17")));
        assert!(matches!(image_tag("postgres@sha256:0123"), ImageRef::Digest));
    }

    #[test]
    fn secret_looking_keys_are_recognised_and_file_pointers_are_not() {
        for k in [
            "POSTGRES_PASSWORD",
            "db_passwd",
            "CLIENT_SECRET",
            "GITHUB_TOKEN",
            "OPENAI_API_KEY",
            "SSH_PRIVATE_KEY",
        ] {
            assert!(looks_secret(k), "{k}");
        }
        for k in [
            "POSTGRES_PASSWORD_FILE",
            "POSTGRES_USER",
            "TZ",
            "KEYCLOAK_ADMIN",
            "AIRFLOW__API__SECRET_KEY_CMD",
            "TOKEN_SERVICE_URL",
            "PASSWORD_MIN_LENGTH",
            "ETCD_INITIAL_CLUSTER_TOKEN",
        ] {
            assert!(!looks_secret(k), "{k}");
        }
        assert!(looks_secret("AIRFLOW__API__SECRET_KEY"));
        assert!(!literal_credential("false"));
        assert!(!literal_credential("cat /run/secrets/airflow_secret_key"));
        assert!(literal_credential("hunter2"));
    }

    #[test]
    fn severities_parse_and_order() {
        assert_eq!("Warning".parse::<Severity>(), Ok(Severity::Warning));
        assert!("fatal".parse::<Severity>().is_err());
        assert!(Severity::Error.is_at_least(Severity::Warning));
        assert!(!Severity::Info.is_at_least(Severity::Warning));
    }

    #[test]
    fn every_rule_has_a_distinct_kebab_case_id_and_a_reason() {
        let ids: std::collections::BTreeSet<&str> = Rule::ALL.iter().map(|r| r.id()).collect();
        assert_eq!(ids.len(), Rule::ALL.len());
        for r in Rule::ALL {
            assert!(r.id().bytes().all(|b| b.is_ascii_lowercase() || b == b'-'), "{r}");
            assert!(!r.why().is_empty());
        }
    }
}
