//! Process plumbing shared by every binary: layered config (file <
//! environment < command line, with figment) and shutdown on signals. Logs
//! and traces are set up by [`crate::trace::init`].

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// Exit code for bad configuration (`EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// A configuration that cannot be used. The message names the field and
/// the source (file, environment variable or flag).
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Loads `T`: its defaults, then the TOML `file` (if given, it must exist),
/// then `INFRA_*` environment variables (`__` separates nested keys:
/// `INFRA_NATS__URL`), then `cli` (only the flags that were set).
pub fn load_config<T, C>(file: Option<&Path>, cli: &C) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
    C: Serialize,
{
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError(format!("config file {} does not exist", path.display())));
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    fig = fig
        .merge(Env::prefixed("INFRA_").split("__").ignore(&["config"]))
        .merge(Serialized::defaults(cli));
    fig.extract::<T>().map_err(|e| ConfigError(e.to_string()))
}

/// Reads a secret from a file (`*_FILE` convention), trimming the final
/// newline. The error names the file, never the content.
pub fn read_secret_file(field: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|e| ConfigError(format!("{field}: cannot read {}: {e}", path.display())))
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable text.
    Text,
}

/// Cancels `token` on the first SIGTERM or SIGINT; a second one exits the
/// process at once.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        wait_signal().await;
        tracing::info!("shutdown requested; draining (a second signal forces exit)");
        token.cancel();
        wait_signal().await;
        tracing::warn!("second signal; exiting now");
        std::process::exit(130);
    });
}

async fn wait_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The host id to use when none is configured: the machine's hostname,
/// reduced to the characters a bus token allows.
pub fn default_host_id() -> String {
    let raw = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "localhost".into());
    let id: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() { "localhost".into() } else { id }
}

/// Resolves a path relative to the current directory into an absolute one.
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_owned())
    }
}

/// A configuration error at start-up: printed as `who: error` on stderr,
/// exit code [`EXIT_CONFIG`].
pub fn config_exit(who: &str, e: impl std::fmt::Display) -> std::process::ExitCode {
    eprintln!("{who}: {e}");
    std::process::ExitCode::from(EXIT_CONFIG as u8)
}

/// The runtime and the logging/tracing of a binary that has its
/// configuration: `service` and `instance` name it in logs and traces. On
/// error, what to exit with (after saying why on stderr).
pub fn start(
    who: &str,
    log: &crate::config::LogConfig,
    service: &str,
    instance: &str,
) -> Result<(tokio::runtime::Runtime, crate::trace::Telemetry), std::process::ExitCode> {
    let rt = runtime().map_err(|e| {
        eprintln!("{who}: cannot start the runtime: {e}");
        std::process::ExitCode::FAILURE
    })?;
    let telemetry = {
        let _in_runtime = rt.enter();
        log.init(service, instance).map_err(|e| config_exit(who, e))?
    };
    Ok((rt, telemetry))
}

/// The runtime every binary runs on: two worker threads are plenty for an
/// operator or the coordinator, and keep their idle memory small. Their
/// stacks are 8 MiB (as a main thread's), not tokio's 2 MiB: a rollout's
/// state machine nests deeply in a debug build, and a stack is only
/// memory once it is used.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(8 * 1024 * 1024)
        .enable_all()
        .build()
}
