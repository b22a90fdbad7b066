//! The configuration every binary shares: how to reach NATS and how to log.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::app::{self, ConfigError, LogFormat};

/// How to reach NATS.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URLs, comma-separated.
    pub url: String,
    /// File holding a token credential (preferred over `token`).
    pub token_file: Option<PathBuf>,
    /// Token credential. Prefer `token_file`: environments leak.
    pub token: Option<String>,
    /// User name, with `password_file`.
    pub user: Option<String>,
    /// File holding the password for `user`.
    pub password_file: Option<PathBuf>,
    /// A NATS `.creds` file (a user JWT and its nkey seed) for servers in
    /// operator mode; a host's credential reaches only that host's keys
    /// (`infra_bus::auth`).
    pub creds_file: Option<PathBuf>,
    /// JetStream replicas for the buckets and stream (3 on a NATS cluster).
    pub replicas: usize,
    /// PEM file of the CA that signed the NATS servers' certificates
    /// (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients; with
    /// `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Refuse to connect without TLS (set it on every host that reaches
    /// NATS over a network).
    pub tls_required: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            token_file: None,
            token: None,
            user: None,
            password_file: None,
            creds_file: None,
            replicas: 1,
            ca_file: None,
            cert_file: None,
            key_file: None,
            tls_required: false,
        }
    }
}

impl NatsConfig {
    /// Builds the bus config, reading credential files.
    pub fn bus_config(&self, name: String, heartbeat_ttl: Duration) -> Result<infra_bus::BusConfig, ConfigError> {
        let token = match (&self.token_file, &self.token) {
            (Some(f), _) => Some(app::read_secret_file("nats.token_file", f)?),
            (None, t) => t.clone(),
        };
        let user = match (&self.user, &self.password_file) {
            (Some(u), Some(f)) => Some((u.clone(), app::read_secret_file("nats.password_file", f)?)),
            (Some(_), None) => return Err(ConfigError("nats.user is set but nats.password_file is not".into())),
            _ => None,
        };
        let creds = match &self.creds_file {
            Some(f) => Some(app::read_secret_file("nats.creds_file", f)?),
            None => None,
        };
        if self.url.trim().is_empty() {
            return Err(ConfigError("nats.url is empty".into()));
        }
        let file = |field: &str, f: &Option<PathBuf>| -> Result<Option<PathBuf>, ConfigError> {
            match f {
                Some(p) if !p.is_file() => Err(ConfigError(format!("{field}: {} does not exist", p.display()))),
                Some(p) => Ok(Some(app::absolute(p))),
                None => Ok(None),
            }
        };
        let ca_file = file("nats.ca_file", &self.ca_file)?;
        let client = match (
            file("nats.cert_file", &self.cert_file)?,
            file("nats.key_file", &self.key_file)?,
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError(
                    "nats.cert_file and nats.key_file go together: set both or neither".into(),
                ));
            }
        };
        Ok(infra_bus::BusConfig {
            url: self.url.clone(),
            name,
            token,
            user,
            creds,
            tls: infra_bus::BusTls {
                ca_file,
                client,
                required: self.tls_required,
            },
            heartbeat_ttl,
            replicas: self.replicas.max(1),
            ..Default::default()
        })
    }
}
/// Logging.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` or `text`.
    pub format: LogFormat,
    /// Filter directive (`info`, `operator_core=debug`).
    pub filter: String,
    /// OTLP/gRPC endpoint to send traces to (`http://tempo:4317`). Unset:
    /// the standard `OTEL_EXPORTER_OTLP_ENDPOINT` if that is set, else no
    /// traces.
    pub otlp_endpoint: Option<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            filter: "info".into(),
            otlp_endpoint: None,
        }
    }
}

impl LogConfig {
    /// Installs logging and, when an endpoint is configured, trace export
    /// as `service` on `host`. Must run inside the runtime's context.
    pub fn init(&self, service: &str, host: &str) -> Result<crate::trace::Telemetry, ConfigError> {
        let export = crate::trace::Exporting::wanted(self.otlp_endpoint.as_deref()).then(|| crate::trace::Exporting {
            endpoint: self.otlp_endpoint.clone(),
            service: service.to_owned(),
            host: host.to_owned(),
        });
        crate::trace::init(self.format, &self.filter, export)
    }
}
