//! Running commands in containers and copying files into them: the
//! Docker client's exec and archive calls.

use std::time::Duration;

use futures::StreamExt;

use super::{DockerClient, DockerError, api, short_id};

/// The most output [`DockerClient::exec_output`] keeps (the end of it).
pub const EXEC_OUTPUT_LIMIT: usize = 1024 * 1024;

/// What a command run in a container said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit code; `None` when it had not finished in time.
    pub exit_code: Option<i64>,
    /// Its stdout and stderr together.
    pub output: String,
}

/// A tar archive of `name` (and its parent directory, when it has one)
/// holding `data`: what Docker's archive API takes.
fn tarball(name: &str, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::with_capacity(2048 + data.len()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Some((dir, _)) = name.rsplit_once('/') {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(now);
        b.append_data(&mut h, format!("{dir}/"), std::io::empty())?;
    }
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(now);
    b.append_data(&mut h, name, data)?;
    b.into_inner()
}

impl DockerClient {
    /// Runs `cmd` in a running container and returns its exit code, or
    /// `None` if it did not finish within `timeout`.
    pub async fn exec(&self, id: &str, cmd: Vec<String>, timeout: Duration) -> Result<Option<i64>, DockerError> {
        Ok(self.exec_output(id, cmd, timeout).await?.exit_code)
    }

    /// Runs `cmd` in container `id` and gathers what it writes (stdout and
    /// stderr together, the last [`EXEC_OUTPUT_LIMIT`] bytes). The exit
    /// code is `None` when it did not finish within `timeout`. `cmd` must
    /// hold no secret: Docker keeps it in the exec's inspect data.
    pub async fn exec_output(&self, id: &str, cmd: Vec<String>, timeout: Duration) -> Result<ExecOutput, DockerError> {
        use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
        let opts = CreateExecOptions {
            cmd: Some(cmd),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec = self.inner.create_exec(id, opts).await.map_err(api("exec in", id))?;
        let mut output = Vec::new();
        let run = async {
            let started = self
                .inner
                .start_exec(&exec.id, Some(StartExecOptions::default()))
                .await
                .map_err(api("exec in", id))?;
            if let StartExecResults::Attached { output: mut out, .. } = started {
                while let Some(chunk) = out.next().await {
                    let chunk = chunk.map_err(api("exec in", id))?;
                    output.extend_from_slice(&chunk.into_bytes());
                    if output.len() > EXEC_OUTPUT_LIMIT {
                        output.drain(..output.len() - EXEC_OUTPUT_LIMIT);
                    }
                }
            }
            Ok::<(), DockerError>(())
        };
        let finished = match tokio::time::timeout(timeout, run).await {
            Err(_) => false,
            Ok(r) => {
                r?;
                true
            }
        };
        let output = String::from_utf8_lossy(&output).into_owned();
        if !finished {
            return Ok(ExecOutput {
                exit_code: None,
                output,
            });
        }
        let info = self
            .inner
            .inspect_exec(&exec.id)
            .await
            .map_err(api("inspect exec in", id))?;
        Ok(ExecOutput {
            exit_code: if info.running == Some(true) {
                None
            } else {
                info.exit_code
            },
            output,
        })
    }

    /// Writes `data` as `dir/name` into container `id` (created or
    /// running) through Docker's archive API, mode 0644; `name` may hold one
    /// subdirectory (`routes.d/routes.conf`), made 0755.
    pub async fn write_file(
        &self,
        id: &str,
        dir: &str,
        name: &str,
        data: &[u8],
        timeout: Duration,
    ) -> Result<(), DockerError> {
        use bollard::query_parameters::UploadToContainerOptionsBuilder;
        let archive = tarball(name, data).map_err(|e| DockerError::Prepare(format!("archive of {name}: {e}")))?;
        let opts = UploadToContainerOptionsBuilder::default().path(dir).build();
        let target = format!("{}:{dir}/{name}", short_id(id));
        tokio::time::timeout(
            timeout,
            self.inner
                .upload_to_container(id, Some(opts), bollard::body_full(archive.into())),
        )
        .await
        .map_err(|_| DockerError::Prepare(format!("copying into {target}: no answer within {timeout:?}")))?
        .map_err(api("copy a file into", target))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_archive_holds_the_directory_then_the_file() {
        let t = super::tarball("routes.d/routes.conf", b"hello\n").unwrap();
        let mut a = tar::Archive::new(t.as_slice());
        let entries: Vec<(String, u64)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.size())
            })
            .collect();
        assert_eq!(
            entries,
            vec![("routes.d/".to_string(), 0), ("routes.d/routes.conf".to_string(), 6)]
        );
    }
}
