//! Loading a rendered configuration into the running gateway Nginx through
//! the Docker API: copy the file in, `nginx -t`, then `nginx -s reload`
//! (graceful: old workers finish their requests).
//!
//! Copied, not bind-mounted: a bind mount's source is a path on the host
//! the coordinator wrote the spec for, and the operator's state directory
//! is not the same path on every host (or in a container); the Docker API
//! reaches the container wherever it runs, and a recreated container is
//! given the file again as soon as it appears.

use std::time::{Duration, Instant};

use operator_core::docker::DockerClient;

/// Where the rendered file goes in the container: `nginx.conf` of the
/// upstream image (and of the local stand-in) includes `conf.d/*.conf` in
/// its `http` block, so no template has to name the file.
pub const ROUTES_DIR: &str = "/etc/nginx/conf.d";
/// The file's name in [`ROUTES_DIR`].
pub const ROUTES_FILE: &str = "infra-routes.conf";
/// Bound on each command in the container.
const EXEC_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a configuration was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `nginx -t` refused it (the previous file was put back).
    #[error("nginx -t refused it: {0}")]
    Refused(String),
    /// `nginx -s reload` failed after the test passed.
    #[error("nginx -s reload failed: {0}")]
    Reload(String),
    /// The Docker engine failed or did not answer in time.
    #[error("docker: {0}")]
    Docker(String),
}

impl LoadError {
    /// Whether the same content should be tried again on the next render
    /// (a Docker hiccup), as opposed to content Nginx refused.
    pub fn retry(&self) -> bool {
        !matches!(self, LoadError::Refused(_))
    }
}

/// Copies `conf` into `container`, tests it and reloads; on a failed test
/// copies `previous` back so that a later restart loads what runs now.
/// Returns how long the test and reload took.
pub async fn load(docker: &DockerClient, container: &str, conf: &str, previous: &str) -> Result<Duration, LoadError> {
    upload(docker, container, conf).await?;
    let t0 = Instant::now();
    let (code, out) = exec(docker, container, &["nginx", "-t"]).await?;
    if code != 0 {
        if let Err(e) = upload(docker, container, previous).await {
            tracing::warn!(error = %e, "gateway: could not put the previous routes back");
        }
        return Err(LoadError::Refused(tail(&out)));
    }
    let (code, out) = exec(docker, container, &["nginx", "-s", "reload"]).await?;
    if code != 0 {
        return Err(LoadError::Reload(tail(&out)));
    }
    Ok(t0.elapsed())
}

async fn upload(docker: &DockerClient, container: &str, conf: &str) -> Result<(), LoadError> {
    docker
        .write_file(container, ROUTES_DIR, ROUTES_FILE, conf.as_bytes(), EXEC_TIMEOUT)
        .await
        .map_err(|e| LoadError::Docker(e.to_string()))
}

/// Runs `cmd` in the container: exit code and output (stdout and stderr).
async fn exec(docker: &DockerClient, container: &str, cmd: &[&str]) -> Result<(i64, String), LoadError> {
    let what = cmd.join(" ");
    let out = docker
        .exec_output(container, cmd.iter().map(|s| (*s).to_owned()).collect(), EXEC_TIMEOUT)
        .await
        .map_err(|e| LoadError::Docker(format!("`{what}` in {container}: {e}")))?;
    match out.exit_code {
        Some(code) => Ok((code, out.output)),
        None => Err(LoadError::Docker(format!(
            "`{what}` in {container} did not finish within {EXEC_TIMEOUT:?}"
        ))),
    }
}

/// The last lines of a command's output, on one line.
fn tail(out: &str) -> String {
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}
