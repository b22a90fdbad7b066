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

/// What [`DockerClient::exec_streams`] ran.
#[derive(Clone, Debug, Default)]
pub struct StreamedExec {
    /// Exit code; `None` when it had not finished in time.
    pub exit_code: Option<i64>,
    /// Bytes it wrote to stdout.
    pub written: u64,
    /// Bytes fed to its stdin.
    pub read: u64,
    /// The last 8 KiB it wrote to stderr.
    pub stderr: Vec<u8>,
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

    /// Runs `cmd` in container `id` with its stdout written to `stdout`
    /// and, when given, `stdin` fed from a file (then closed): a dump or a
    /// restore of any size, streamed. Gives the exit code (`None`: not
    /// finished within `timeout`), the bytes written and read, and the end
    /// of what it wrote to stderr (for an error message).
    pub async fn exec_streams(
        &self,
        id: &str,
        cmd: Vec<String>,
        stdin: Option<tokio::fs::File>,
        stdout: &mut tokio::fs::File,
        timeout: Duration,
    ) -> Result<StreamedExec, DockerError> {
        use bollard::container::LogOutput;
        use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
        use tokio::io::AsyncWriteExt;
        let opts = CreateExecOptions {
            cmd: Some(cmd),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(stdin.is_some()),
            ..Default::default()
        };
        let exec = self.inner.create_exec(id, opts).await.map_err(api("exec in", id))?;
        let mut done = StreamedExec::default();
        let io = |e: std::io::Error| DockerError::Prepare(format!("exec in {}: {e}", short_id(id)));
        let run = async {
            let started = self
                .inner
                .start_exec(&exec.id, Some(StartExecOptions::default()))
                .await
                .map_err(api("exec in", id))?;
            let StartExecResults::Attached { mut output, mut input } = started else {
                return Ok::<(), DockerError>(());
            };
            let feed = async {
                if let Some(mut file) = stdin {
                    let n = tokio::io::copy(&mut file, &mut input).await?;
                    input.shutdown().await?;
                    Ok::<u64, std::io::Error>(n)
                } else {
                    Ok(0)
                }
            };
            let drain = async {
                while let Some(chunk) = output.next().await {
                    match chunk.map_err(api("exec in", id))? {
                        LogOutput::StdOut { message } => {
                            done.written += message.len() as u64;
                            stdout.write_all(&message).await.map_err(io)?;
                        }
                        LogOutput::StdErr { message } | LogOutput::Console { message } => {
                            done.stderr.extend_from_slice(&message);
                            if done.stderr.len() > 8192 {
                                done.stderr.drain(..done.stderr.len() - 8192);
                            }
                        }
                        LogOutput::StdIn { .. } => {}
                    }
                }
                stdout.flush().await.map_err(io)?;
                Ok::<(), DockerError>(())
            };
            let (fed, drained) = tokio::join!(feed, drain);
            done.read = fed.map_err(io)?;
            drained
        };
        match tokio::time::timeout(timeout, run).await {
            Err(_) => return Ok(done),
            Ok(r) => r?,
        }
        let info = self
            .inner
            .inspect_exec(&exec.id)
            .await
            .map_err(api("inspect exec in", id))?;
        done.exit_code = if info.running == Some(true) {
            None
        } else {
            info.exit_code
        };
        Ok(done)
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
