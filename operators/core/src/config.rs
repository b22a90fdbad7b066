//! Operator configuration. See `operators/operator.example.toml` for the
//! commented reference.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::decide::RestartPolicy;
use infra_runtime::app::{self, ConfigError};
pub use infra_runtime::config::{LogConfig, NatsConfig};

/// Restart budget for unhealthy or exited containers.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartConfig {
    /// Restarts of one replica allowed within `window_secs`.
    pub budget: u32,
    /// The sliding window, seconds.
    pub window_secs: u64,
    /// First backoff between restarts, milliseconds; it doubles each time.
    pub backoff_initial_ms: u64,
    /// Backoff ceiling, seconds.
    pub backoff_max_secs: u64,
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            budget: 5,
            window_secs: 600,
            backoff_initial_ms: 1000,
            backoff_max_secs: 60,
        }
    }
}

impl RestartConfig {
    /// As the decision module wants it.
    pub fn policy(&self) -> RestartPolicy {
        RestartPolicy {
            budget: self.budget,
            window: Duration::from_secs(self.window_secs),
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_secs(self.backoff_max_secs),
        }
    }
}

/// Everything an operator reads at start.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorConfig {
    /// This host's id on the bus (letters, digits, `-`, `_`). Default: the
    /// hostname.
    pub host: String,
    /// NATS connection.
    pub nats: NatsConfig,
    /// Address of the local gRPC inspection service. Empty: the tier's
    /// default port on 127.0.0.1.
    pub grpc_listen: String,
    /// Where the operator keeps files it mounts into containers (secrets).
    /// Must be a path the Docker engine sees.
    pub state_dir: PathBuf,
    /// Host labels, published in heartbeats (used for placement). Values
    /// are strings; a number or boolean (`INFRA_LABELS__GPUS=1`, `ssd =
    /// true` in TOML) is taken as its text.
    #[serde(deserialize_with = "label_values")]
    pub labels: BTreeMap<String, String>,
    /// Accept a public address as the `addr` label (configured, or found by
    /// `labels.addr = "auto"`): data ports published for other hosts are
    /// published on it. See [`crate::addr`].
    pub allow_public_addr: bool,
    /// Full resync interval, seconds. Events make the operator fast; this
    /// makes it correct even when an event is missed.
    pub resync_secs: u64,
    /// Heartbeat interval, seconds.
    pub heartbeat_secs: u64,
    /// An operator silent for this long drops out of the hosts bucket.
    pub heartbeat_ttl_secs: u64,
    /// Restart budget and backoff.
    pub restart: RestartConfig,
    /// How long an image pull may take before the service is failed.
    pub image_pull_timeout_secs: u64,
    /// Grace given to containers to stop, seconds, when the spec has none.
    pub stop_grace_secs: u64,
    /// A container of a routed service (Traefik labels) leaves the
    /// observed state this long before it stops, so the gateway drops it
    /// from its routes first. Milliseconds; 0 turns it off.
    pub route_drain_ms: u64,
    /// Bounded drain on shutdown, seconds.
    pub shutdown_grace_secs: u64,
    /// Where Prometheus scrapes the operator's metrics (`GET /metrics`).
    /// Unset: 127.0.0.1 and the tier's port (gateway 9461 ... communication
    /// 9469, see [`crate::metrics::FIRST_OPERATOR_PORT`]). `""` turns the
    /// server off. Port 0 picks a free port; the address actually bound is
    /// published in heartbeats (label `metrics`, with the `addr` label in
    /// place of 0.0.0.0) for the observability operator to find.
    pub metrics_listen: Option<String>,
    /// Logging.
    pub log: LogConfig,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            host: app::default_host_id(),
            nats: NatsConfig::default(),
            grpc_listen: String::new(),
            state_dir: PathBuf::from("/var/lib/infra-operator"),
            labels: BTreeMap::new(),
            allow_public_addr: false,
            resync_secs: 30,
            heartbeat_secs: 5,
            heartbeat_ttl_secs: 20,
            restart: RestartConfig::default(),
            image_pull_timeout_secs: 120,
            stop_grace_secs: 10,
            route_drain_ms: 1000,
            shutdown_grace_secs: 10,
            metrics_listen: None,
            log: LogConfig::default(),
        }
    }
}

impl OperatorConfig {
    /// The metrics address for a tier whose default gRPC port is
    /// `default_grpc_port`; `None` when turned off (`metrics_listen = ""`).
    pub fn metrics_addr(&self, default_grpc_port: u16) -> Result<Option<SocketAddr>, ConfigError> {
        match &self.metrics_listen {
            None => Ok(Some(SocketAddr::from((
                [127, 0, 0, 1],
                crate::metrics::default_operator_port(default_grpc_port),
            )))),
            Some(v) => crate::metrics::parse_listen("metrics_listen", v),
        }
    }

    /// Checks what serde cannot, naming the field.
    pub fn validate(&self, default_port: u16) -> Result<SocketAddr, ConfigError> {
        infra_bus::Token::new("host", &self.host).map_err(|e| ConfigError(format!("host: {e}")))?;
        for (k, v) in &self.labels {
            if k.is_empty() || v.contains('\n') {
                return Err(ConfigError(format!(
                    "labels.{k}: label keys must be non-empty and values one line"
                )));
            }
        }
        if self.restart.budget == 0 {
            return Err(ConfigError("restart.budget must be at least 1".into()));
        }
        if self.heartbeat_secs == 0 || self.heartbeat_ttl_secs <= self.heartbeat_secs {
            return Err(ConfigError(format!(
                "heartbeat_ttl_secs ({}) must be greater than heartbeat_secs ({}) and both above 0",
                self.heartbeat_ttl_secs, self.heartbeat_secs
            )));
        }
        if self.resync_secs == 0 {
            return Err(ConfigError("resync_secs must be at least 1".into()));
        }
        self.metrics_addr(default_port)?;
        let listen = if self.grpc_listen.is_empty() {
            format!("127.0.0.1:{default_port}")
        } else {
            self.grpc_listen.clone()
        };
        listen
            .parse()
            .map_err(|e| ConfigError(format!("grpc_listen: {listen:?} is not a socket address ({e})")))
    }
}

/// Label values as text, whether the source gave a string, a number or a
/// boolean (environment variables and TOML both make `1` a number).
fn label_values<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    let raw: BTreeMap<String, Scalar> = BTreeMap::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::Text(s) => s,
                Scalar::Int(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use figment::Figment;
    use figment::providers::{Format, Serialized, Toml};

    use super::*;

    #[test]
    fn label_values_may_be_numbers_or_booleans_and_are_kept_as_text() {
        let cfg: OperatorConfig = Figment::from(Serialized::defaults(OperatorConfig::default()))
            .merge(Toml::string("[labels]\ngpus = 1\nssd = true\nzone = \"eu-1\"\n"))
            .extract()
            .unwrap();
        assert_eq!(cfg.labels["gpus"], "1");
        assert_eq!(cfg.labels["ssd"], "true");
        assert_eq!(cfg.labels["zone"], "eu-1");
    }
}
