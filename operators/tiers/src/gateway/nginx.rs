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

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::UploadToContainerOptionsBuilder;
use futures::StreamExt;
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
    let opts = UploadToContainerOptionsBuilder::default().path(ROUTES_DIR).build();
    let body = bollard::body_full(tar(ROUTES_FILE, conf.as_bytes()).into());
    tokio::time::timeout(
        EXEC_TIMEOUT,
        docker.raw().upload_to_container(container, Some(opts), body),
    )
    .await
    .map_err(|_| LoadError::Docker(format!("copying {ROUTES_FILE} into {container} timed out")))?
    .map_err(|e| LoadError::Docker(format!("copying {ROUTES_FILE} into {container}: {e}")))
}

/// Runs `cmd` in the container: exit code and output (stdout and stderr).
async fn exec(docker: &DockerClient, container: &str, cmd: &[&str]) -> Result<(i64, String), LoadError> {
    let d = docker.raw();
    let what = cmd.join(" ");
    let run = async {
        let exec = d
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await?;
        let mut out = String::new();
        if let StartExecResults::Attached { mut output, .. } =
            d.start_exec(&exec.id, Some(StartExecOptions::default())).await?
        {
            while let Some(chunk) = output.next().await {
                out.push_str(&chunk?.to_string());
            }
        }
        let info = d.inspect_exec(&exec.id).await?;
        Ok::<_, bollard::errors::Error>((info.exit_code.unwrap_or(-1), out))
    };
    tokio::time::timeout(EXEC_TIMEOUT, run)
        .await
        .map_err(|_| {
            LoadError::Docker(format!(
                "`{what}` in {container} did not finish within {EXEC_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| LoadError::Docker(format!("`{what}` in {container}: {e}")))
}

/// The last lines of a command's output, on one line.
fn tail(out: &str) -> String {
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

/// A tar archive holding `path` (with its parent directory) with `data`:
/// what Docker's archive endpoint takes. Plain ustar, one file.
pub fn tar(path: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2048 + data.len());
    if let Some((dir, _)) = path.rsplit_once('/') {
        out.extend(header(&format!("{dir}/"), 0o755, 0, b'5'));
    }
    out.extend(header(path, 0o644, data.len() as u64, b'0'));
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.resize(out.len() + 1024, 0);
    out
}

fn header(name: &str, mode: u32, size: u64, kind: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, s: &[u8]| h[at..at + s.len()].copy_from_slice(s);
    put(&mut h, 0, &name.as_bytes()[..name.len().min(100)]);
    put(&mut h, 100, format!("{mode:07o}\0").as_bytes());
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{size:011o}\0").as_bytes());
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    put(&mut h, 136, format!("{mtime:011o}\0").as_bytes());
    put(&mut h, 148, b"        ");
    h[156] = kind;
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_holds_the_directory_and_the_file_in_512_byte_blocks() {
        let t = tar("routes.d/routes.conf", b"hello\n");
        assert_eq!(t.len() % 512, 0);
        assert_eq!(&t[0..9], b"routes.d/");
        assert_eq!(t[156], b'5');
        assert_eq!(&t[512..532], b"routes.d/routes.conf");
        assert_eq!(&t[1024..1030], b"hello\n");
        // The checksum is the byte sum with the field read as spaces.
        let h = &t[512..1024];
        let mut sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        sum -= h[148..156].iter().map(|b| u32::from(*b)).sum::<u32>();
        sum += 8 * u32::from(b' ');
        let field = std::str::from_utf8(&h[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(field, 8).unwrap(), sum);
    }
}
